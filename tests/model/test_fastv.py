"""FastV (``model/fastv.py``): pruning after layer K in forward and generate, against independent references.

The references here do not use the hooks: the selection is recomputed from an eager-attention run's
attention maps, and the pruned forward is run layer by layer by hand (layers < K on the whole
sequence, layers ≥ K on the kept tokens with their original positions and an explicit causal mask).
"""

import copy

import pytest
import torch
from PIL import Image

from hires_vlm.model.fastv import query_positions
from hires_vlm.model.reduction import kept_count
from hires_vlm.text import IGNORE_INDEX
from hires_vlm.tiny import build_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = dict(vision_hidden=32, vision_layers=2, text_hidden=64, text_layers=3, vocab_size=300)
IMAGES = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (120, 300), (10, 100, 30))]
PROMPTS = ["What colour is it?", "How many dots are there in the picture?"]


def _noisy(model, seed=0, scale=0.3):
    """Random weights made less uniform, so attention has clear winners (no near-ties in the top-k)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.language_model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def hd():
    model, proc = build_tiny("llava_hd", seed=0, **SIZES)
    return _noisy(model), proc


def _eager(lm):
    ref = copy.deepcopy(lm)
    ref.set_attn_implementation("eager")
    return ref


def _reference_logits(lm, embeds, kept, K):
    """Logits of one unpadded row ``embeds [1 x L x d]``: layers < K on every token, layers ≥ K on the
    positions ``kept`` (ascending) with their original positions; by hand, eager attention."""
    ref = _eager(lm)
    with torch.no_grad():
        hs = ref(inputs_embeds=embeds, output_hidden_states=True, use_cache=False).hidden_states
        h = hs[K][:, kept]
        pos = kept[None]
        cos_sin = ref.model.rotary_emb(h, position_ids=pos)
        n = kept.numel()
        mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None]
        for layer in ref.model.layers[K:]:
            h = layer(h, attention_mask=mask, position_embeddings=cos_sin, position_ids=pos)
        return ref.lm_head(ref.model.norm(h))


def _merged(model, proc, prompts, images, side="left"):
    inp = proc(prompts, images)
    return model.merge_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"], inp["image_sizes"],
                              padding_side=side), inp


def test_keep_one_is_exactly_the_unreduced_model(hd):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)
    with torch.no_grad():
        base = model(**inp)
        same = model(**inp, token_reduction={"fastv_keep": 1.0, "fastv_layer": 1})
    assert torch.equal(base.logits, same.logits)
    assert "fastv_kept" not in same.visual_aux
    a = model.generate(**inp, max_new_tokens=6, do_sample=False, eos_token_id=None)
    b = model.generate(**inp, max_new_tokens=6, do_sample=False, eos_token_id=None, token_reduction={"fastv_keep": 1.0})
    assert torch.equal(a, b)


def test_the_hooks_keeping_every_token_give_the_unreduced_logits(hd):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)  # two rows of different lengths: padding, rebuilt masks, re-padding
    with torch.no_grad():
        base = model(**inp)
        every = model(**inp, token_reduction={"fastv_keep": 0.99999, "fastv_layer": 1})  # ceil(0.99999·n) = n
    assert "fastv_kept" in every.visual_aux and torch.equal(every.attention_mask, base.attention_mask)
    keep = base.attention_mask.bool()
    assert torch.allclose(every.logits[keep], base.logits[keep], atol=1e-5)


@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_forward_keeps_the_stated_count_of_each_image(hd, keep):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)
    with torch.no_grad():
        base = model(**inp)
        out = model(**inp, token_reduction={"fastv_keep": keep, "fastv_layer": 1})
    n_vis = base.visual_tokens.tolist()
    kept = [kept_count(n, keep) for n in n_vis]
    assert out.visual_aux["fastv_visual_tokens"].tolist() == kept
    real = base.attention_mask.sum(1)
    assert out.attention_mask.sum(1).tolist() == [int(r) - n + k for r, n, k in zip(real, n_vis, kept)]
    assert out.logits.shape[1] == int(out.attention_mask.sum(1).max()) < base.logits.shape[1]
    assert out.visual_tokens.tolist() == n_vis  # what layers < K see


def test_selection_is_the_top_k_of_layer_k_minus_1_last_row_attention_of_an_eager_run(hd):
    model, proc = hd
    K, keep = 2, 0.3
    merged, _ = _merged(model, proc, PROMPTS, IMAGES, side="left")
    assert model.language_model.config._attn_implementation == "sdpa"  # FastV itself runs with SDPA
    model.generate_merged(merged, max_new_tokens=1, do_sample=False,
                          token_reduction={"fastv_keep": keep, "fastv_layer": K})
    eager = _eager(model.language_model)
    with torch.no_grad():
        att = eager(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                    output_attentions=True, use_cache=False).attentions[K - 1]  # [b x H x L x L]
    row = att[:, :, -1, :].mean(1)  # the last prompt token (left padding), averaged over heads
    for m, (got, scores) in enumerate(zip(merged.visual_aux["fastv_kept"], merged.visual_aux["fastv_scores"])):
        b, cols = torch.nonzero(merged.image_index == m, as_tuple=True)
        ref = row[b[0], cols]
        assert torch.allclose(scores, ref, atol=1e-5)
        top = cols[ref.topk(kept_count(cols.numel(), keep)).indices].sort().values
        assert torch.equal(got, top), m


def test_pruned_forward_equals_a_layer_by_layer_reference(hd):
    model, proc = hd
    K, keep = 1, 0.4
    merged, inp = _merged(model, proc, PROMPTS[:1], IMAGES[:1], side="right")
    with torch.no_grad():
        out = model(**proc(PROMPTS[:1], IMAGES[:1]), token_reduction={"fastv_keep": keep, "fastv_layer": K})
    kept_vis = out.visual_aux["fastv_kept"][0]
    text = torch.nonzero(merged.image_index[0] < 0).flatten()
    kept = torch.cat([text, kept_vis]).sort().values
    assert torch.equal(out.visual_aux["fastv_positions"][0], kept)
    ref = _reference_logits(model.language_model, merged.inputs_embeds, kept, K)
    assert out.logits.shape == ref.shape
    assert torch.allclose(out.logits, ref, atol=1e-4), (out.logits - ref).abs().max()


def test_generate_prefill_and_decoding_equal_the_reference_on_the_pruned_sequence(hd):
    model, proc = hd
    K, keep = 2, 0.25
    merged, _ = _merged(model, proc, PROMPTS[:1], IMAGES[:1])
    gen = model.generate_merged(merged, max_new_tokens=3, do_sample=False, eos_token_id=None, output_logits=True,
                                return_dict_in_generate=True, token_reduction={"fastv_keep": keep, "fastv_layer": K})
    emb = merged.inputs_embeds
    kept_vis = merged.visual_aux["fastv_kept"][0]
    kept = torch.cat([torch.nonzero(merged.image_index[0] < 0).flatten(), kept_vis]).sort().values
    # first token: the prefill on the pruned sequence; later tokens: decoding on the pruned cache (the new
    # tokens at their full-sequence positions, seen by every layer, the pruned visual tokens by layers < K only)
    for step, logits in enumerate(gen.logits):
        ref = _reference_logits(model.language_model, emb, kept, K)[:, -1]
        assert torch.allclose(logits, ref, atol=1e-4), (step, (logits - ref).abs().max())
        nxt = gen.sequences[:, step]
        emb = torch.cat([emb, model.get_input_embeddings()(nxt)[:, None]], 1)
        kept = torch.cat([kept, torch.tensor([emb.shape[1] - 1])])
    # the forward with FastV gives the same first-token logits as generate's prefill
    with torch.no_grad():
        fwd = model(**proc(PROMPTS[:1], IMAGES[:1]), token_reduction={"fastv_keep": keep, "fastv_layer": K})
    assert torch.allclose(fwd.logits[:, -1], gen.logits[0], atol=1e-5)


def test_batched_left_padded_fastv_generation_equals_one_by_one(hd):
    model, proc = hd
    red = {"fastv_keep": 0.3, "fastv_layer": 1}
    batch = model.generate(**proc(PROMPTS, IMAGES), max_new_tokens=5, do_sample=False, eos_token_id=None,
                           token_reduction=red)
    for i, (p, im) in enumerate(zip(PROMPTS, IMAGES)):
        single = model.generate(**proc([p], [im]), max_new_tokens=5, do_sample=False, eos_token_id=None,
                                token_reduction=red)
        assert torch.equal(batch[i], single[0]), i


def test_forward_with_labels_ranks_by_the_last_prompt_token_and_scores_the_answer(hd):
    model, proc = hd
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.full_like(mask, IGNORE_INDEX)
    labels[0, 3:5] = 7
    assert query_positions(mask, labels, IGNORE_INDEX).tolist() == [2, 5]
    assert query_positions(mask, None, IGNORE_INDEX).tolist() == [4, 5]
    # the answer's loss is computed on the pruned sequence, from the labels of the kept tokens
    conv = [{"from": "human", "value": "<image>\n" + PROMPTS[0]}, {"from": "gpt", "value": "red"}]
    enc = proc.encoder.encode(conv, [proc.max_visual_tokens(IMAGES[0].size)])
    b = proc.image_processor([IMAGES[0]])
    batch = {"input_ids": torch.tensor([enc.input_ids]), "labels": torch.tensor([enc.labels]),
             "pixel_values": b.pixel_values, "image_sizes": torch.tensor([IMAGES[0].size])}
    with torch.no_grad():
        base = model(**batch)
        out = model(**batch, token_reduction={"fastv_keep": 0.5, "fastv_layer": 1})
    assert torch.isfinite(out.loss)
    assert torch.equal(base.labels[base.labels != IGNORE_INDEX], out.labels[out.labels != IGNORE_INDEX])
    assert out.labels.shape == out.logits.shape[:2]


def test_eager_and_sdpa_models_prune_alike(hd):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)
    red = {"fastv_keep": 0.5, "fastv_layer": 2}
    with torch.no_grad():
        sdpa = model(**inp, token_reduction=red)
        model.language_model.set_attn_implementation("eager")
        try:
            eager = model(**inp, token_reduction=red)
        finally:
            model.language_model.set_attn_implementation("sdpa")
    assert torch.equal(sdpa.attention_mask, eager.attention_mask)
    keep = sdpa.attention_mask.bool()
    assert torch.allclose(sdpa.logits[keep], eager.logits[keep], atol=1e-4)


def test_beam_search_runs_on_the_pruned_cache(hd):
    model, proc = hd
    out = model.generate(**proc(PROMPTS, IMAGES), max_new_tokens=4, num_beams=2, do_sample=False,
                         eos_token_id=None, token_reduction={"fastv_keep": 0.5, "fastv_layer": 1})
    assert out.shape == (2, 4)


@pytest.mark.parametrize("keep", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_bad_fractions_are_clear_errors(hd, keep):
    model, proc = hd
    with pytest.raises(ValueError, match=r"fastv_keep must be a fraction in \(0, 1\]"):
        model.set_token_reduction(fastv_keep=keep)
    with pytest.raises(ValueError, match="fastv_keep must be a fraction"):
        model(**proc(PROMPTS[:1], IMAGES[:1]), token_reduction={"fastv_keep": keep})
    from hires_vlm.model import HiResVLMConfig

    with pytest.raises(ValueError, match="fastv_keep must be a fraction"):
        HiResVLMConfig(token_reduction={"fastv_keep": keep})


def test_layer_and_setting_errors(hd):
    model, proc = hd
    inp = proc(PROMPTS[:1], IMAGES[:1])
    with pytest.raises(ValueError, match="more than 3 layers"):
        model(**inp, token_reduction={"fastv_keep": 0.5, "fastv_layer": 3})
    with pytest.raises(ValueError, match="fastv_layer must be an integer ≥ 1"):
        model(**inp, token_reduction={"fastv_keep": 0.5, "fastv_layer": 0})
    with pytest.raises(ValueError, match="unknown token_reduction field"):
        model.set_token_reduction(keep=0.5)
    from hires_vlm.model import PackingError

    with pytest.raises(PackingError, match="FastV"):
        model(**inp, packing=True, use_cache=False, token_reduction={"fastv_keep": 0.5, "fastv_layer": 1})


def test_the_setting_is_saved_with_the_model_and_set_at_load_time(hd, tmp_path):
    from hires_vlm.model import HiResVLM

    model, proc = hd
    inp = proc(PROMPTS[:1], IMAGES[:1])
    with torch.no_grad():
        ref = model(**inp, token_reduction={"fastv_keep": 0.5, "fastv_layer": 1}).logits
    model.save_pretrained(tmp_path / "m")
    loaded = HiResVLM.from_pretrained(tmp_path / "m", token_reduction={"fastv_keep": 0.5, "fastv_layer": 1}).eval()
    assert loaded.token_reduction.fastv_keep == 0.5
    with torch.no_grad():
        assert torch.allclose(loaded(**inp).logits, ref, atol=1e-6)
    loaded.set_token_reduction(fastv_keep=1.0)
    assert loaded.config.token_reduction["fastv_keep"] == 1.0


def test_fastv_after_visionzip_prunes_the_zipped_tokens():
    model, proc = build_tiny("llava", seed=0, **SIZES)
    model.eval()
    with torch.no_grad():
        out = model(**proc(PROMPTS, IMAGES), token_reduction={"visionzip_keep": 0.5, "fastv_keep": 0.5,
                                                              "fastv_layer": 1})
    assert out.visual_tokens.tolist() == [32, 32]  # 8×8 tokens per view, VisionZip keeps half
    assert out.visual_aux["fastv_visual_tokens"].tolist() == [16, 16]


def test_cli_generate_takes_the_keep_fraction(tmp_path, capsys):
    from hires_vlm.cli import main

    model, proc = build_tiny("llava", seed=0, **SIZES)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    IMAGES[0].save(tmp_path / "a.png")
    args = ["generate", "--model", str(tmp_path / "m"), "--image", str(tmp_path / "a.png"), "--prompt", "colour?",
            "--max-new-tokens", "3", "--device", "cpu"]
    assert main(args + ["--fastv-keep", "0.5", "--fastv-layer", "1", "--visionzip-keep", "0.5"]) == 0
    assert main(args + ["--fastv-keep", "1.5"]) == 2
    assert "fastv_keep must be a fraction" in capsys.readouterr().err
