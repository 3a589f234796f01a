"""Padding-free (packed) forwards: the same loss and gradients as padded for every method, samples kept apart,
the labelled-logits loss, and clear refusals of what packing cannot do.

Tolerances (float32): loss |Δ| ≤ 1e-5 · max(1, loss), gradients max |Δ| ≤ 1e-5 (measured: ≤ 5e-7 on
these models; a sample that sees another's tokens, a wrong position or a label crossing a sample
boundary moves the loss by 1e-2 or more).
"""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from hires_vlm.data.llava_json import LlavaCollator
from hires_vlm.model import PackingError, enable_packing
from hires_vlm.model.packing import VARLEN_SDPA, check_packable, pack_sequences, unpack
from hires_vlm.text import IGNORE_INDEX
from hires_vlm.tiny import build_tiny

SMALL_TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_TOL, GRAD_TOL = 1e-5, 1e-5
IMAGES = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (120, 250), (10, 100, 30)),
          Image.new("RGB", (224, 224), (0, 0, 255))]
CONVS = [[{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}],
         [{"from": "human", "value": "<image>\nHow many dots are in the picture, roughly?"},
          {"from": "gpt", "value": "about three dots"}],
         [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "blue square"}]]
METHODS = ["llava", "llava_hd", "monkey", {"preset": "slime", "local_queries": 4, "resampler_heads": 2},
           "inf_llava"]


def _noisy(model, seed=0, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _batch(proc, convs=CONVS, images=IMAGES):
    rows = []
    for conv, im in zip(convs, images):
        b = proc.image_processor([im])
        enc = proc.encoder.encode(conv, [proc.max_visual_tokens(im.size)])
        rows.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                     "pixel_values": b.pixel_values, "image_sizes": torch.tensor([im.size])})
    return LlavaCollator(proc.tokenizer.pad_token_id)(rows)


def _loss_and_grads(model, batch, **kwargs):
    torch.manual_seed(0)  # SliME's gate and router draw training noise: the same draw in every call
    out = model(**batch, use_cache=False, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def _assert_same(a, b):
    (out_a, ga), (out_b, gb) = a, b
    la, lb = out_a.loss.item(), out_b.loss.item()
    assert abs(la - lb) <= LOSS_TOL * max(1.0, abs(la)), (la, lb)
    assert ga.keys() == gb.keys() and ga
    worst = max(float((ga[n] - gb[n]).abs().max()) for n in ga)
    assert worst <= GRAD_TOL, worst


@pytest.fixture(scope="module", params=METHODS, ids=lambda m: m if isinstance(m, str) else m["preset"])
def trained(request):
    model, proc = build_tiny(request.param, **SMALL_TINY)
    _noisy(model).train()
    model.language_model.requires_grad_(True)
    return model, proc


@pytest.mark.parametrize("attention", ["sdpa", VARLEN_SDPA])
def test_packed_loss_and_gradients_equal_padded_for_every_method(trained, attention):
    model, proc = trained
    model.language_model.set_attn_implementation("sdpa")
    batch = _batch(proc)
    padded = _loss_and_grads(model, batch)
    if attention == VARLEN_SDPA:
        assert enable_packing(model) == VARLEN_SDPA
    packed = _loss_and_grads(model, batch, packing=True)
    _assert_same(padded, packed)
    out = packed[0]
    assert out.logits.shape[0] == 1 and out.logits.shape[1] == sum(out.sequence_lengths)
    assert out.sequence_lengths == padded[0].attention_mask.sum(1).tolist()
    model.language_model.set_attn_implementation("sdpa")


def test_each_packed_sample_sees_only_itself(trained):
    """Per-sample logits of the packed row equal the padded ones, and changing one sample's text leaves
    the others' logits untouched."""
    model, proc = trained
    model.eval()
    enable_packing(model)
    try:
        batch = _batch(proc)
        with torch.no_grad():
            padded = model(**batch, use_cache=False)
            packed = model(**batch, packing=True)
            rows = unpack(packed.logits, packed.sequence_lengths)
            for b, row in enumerate(rows):
                ref = padded.logits[b][padded.attention_mask[b].bool()]
                assert torch.allclose(row, ref, atol=1e-5), (b, float((row - ref).abs().max()))
            changed = dict(batch, input_ids=batch["input_ids"].clone())
            last = int(batch["attention_mask"][1].sum()) - 1
            changed["input_ids"][1, last - 1] = (changed["input_ids"][1, last - 1] + 1) % 250
            other = unpack(model(**changed, packing=True).logits, packed.sequence_lengths)
        assert torch.equal(other[0], rows[0]) and torch.equal(other[2], rows[2])
        assert not torch.equal(other[1], rows[1])
    finally:
        model.train()


def test_labelled_logits_only_gives_the_same_loss_without_the_other_logits(trained):
    model, proc = trained
    enable_packing(model)
    batch = _batch(proc)
    full = _loss_and_grads(model, batch)
    for packing in (False, True):
        sel = _loss_and_grads(model, batch, packing=packing, labelled_logits_only=True)
        _assert_same(full, sel)
        out = sel[0]
        targets = torch.nn.functional.pad(out.labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        expected = torch.nonzero((targets != IGNORE_INDEX).any(0)).flatten()
        assert torch.equal(out.logits_positions, expected)
        assert out.logits.shape[:2] == (out.labels.shape[0], len(expected)) and len(expected) < out.labels.shape[1]


def test_pack_sequences_restarts_positions_and_ignores_each_first_label():
    seqs = [torch.randn(n, 4) for n in (3, 1, 5)]
    labels = [torch.arange(n) + 10 for n in (3, 1, 5)]
    p = pack_sequences(seqs, labels)
    assert p.inputs_embeds.shape == (1, 9, 4) and torch.equal(p.inputs_embeds[0], torch.cat(seqs))
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3, 4]]
    assert p.labels.tolist() == [[IGNORE_INDEX, 11, 12, IGNORE_INDEX, IGNORE_INDEX, 11, 12, 13, 14]]
    assert p.cu_seq_lens.tolist() == [0, 3, 4, 9] and p.cu_seq_lens.dtype == torch.int32
    assert p.attention_kwargs()["max_length_q"] == 5
    assert labels[0][0] == 10  # the caller's labels are not modified
    with pytest.raises(PackingError, match="no sample"):
        pack_sequences([])
    with pytest.raises(PackingError, match="empty sample"):
        pack_sequences([torch.randn(0, 4)])


def _tiny_llama(**kw):
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager", VARLEN_SDPA])
def test_flattened_rows_with_restarting_positions_stay_apart_in_the_language_model(attention):
    """transformers' DataCollatorWithFlattening convention (no mask, restarting position_ids, no
    cu_seq_lens), on the implementations packing accepts, grouped-query heads included."""
    lm = _tiny_llama()
    lm.set_attn_implementation(attention)
    ids = [torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 2)]
    with torch.no_grad():
        alone = [lm(input_ids=x[None]).logits[0] for x in ids]
        flat = lm(input_ids=torch.cat(ids)[None], position_ids=torch.cat([torch.arange(len(x)) for x in ids])[None],
                  use_cache=False).logits[0]
    assert torch.allclose(flat, torch.cat(alone), atol=1e-5)


def test_the_varlen_implementation_is_sdpa_on_everything_else():
    """After enable_packing the LM computes what SDPA computes on padded batches and in generation."""
    lm_a, lm_b = _tiny_llama(), _tiny_llama()
    lm_b.set_attn_implementation(VARLEN_SDPA)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        a, b = (lm(input_ids=ids, attention_mask=mask).logits for lm in (lm_a, lm_b))
        assert torch.equal(a, b)
        gen = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(lm_a.generate(ids, **gen), lm_b.generate(ids, **gen))


def test_generation_is_unchanged_by_enable_packing():
    model, proc = build_tiny("llava_hd", **SMALL_TINY)
    _noisy(model).eval()
    inputs = proc(["What colour is it?", "Describe."], IMAGES[:2])
    before = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6)
    enable_packing(model)
    assert torch.equal(model.generate(**inputs, max_new_tokens=6, min_new_tokens=6), before)


def test_packing_refuses_what_it_cannot_do():
    model, proc = build_tiny("llava", **SMALL_TINY)
    batch = _batch(proc)
    with pytest.raises(PackingError, match="KV cache of a packed row mixes"):
        model(**batch, packing=True, use_cache=True)
    with pytest.raises(PackingError, match="cannot pack given inputs_embeds"):
        model(inputs_embeds=torch.randn(1, 4, 64), packing=True)
    with pytest.raises(PackingError, match="do not pass them"):
        model(**batch, position_ids=torch.zeros_like(batch["input_ids"]), packing=True)
    lm = model.language_model
    lm.config._attn_implementation_internal = "paged|eager"  # a kernel that cannot see the boundaries
    try:
        with pytest.raises(PackingError, match="attention implementation 'paged|eager'"):
            model(**batch, packing=True)
        with pytest.raises(PackingError, match="train padded"):
            enable_packing(model)
    finally:
        lm.config._attn_implementation_internal = "sdpa"
    legacy = SimpleNamespace(_supports_attention_backend=False, config=lm.config)
    with pytest.raises(PackingError, match="attention interface"):
        check_packable(legacy)
    bidirectional = SimpleNamespace(_supports_attention_backend=True, config=SimpleNamespace(is_causal=False))
    with pytest.raises(PackingError, match="not causal"):
        check_packable(bidirectional)


def test_sliding_window_language_models_keep_sdpa_and_its_block_mask():
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, sliding_window=8)
    holder = SimpleNamespace(language_model=MistralForCausalLM(cfg))
    assert enable_packing(holder) == "sdpa"  # the per-sample kernel would drop the window
    assert enable_packing(SimpleNamespace(language_model=_tiny_llama())) == VARLEN_SDPA
