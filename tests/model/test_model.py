"""HiResVLM: forward with loss, placeholder expansion, batched generation, save/load, towers."""

import pytest
import torch
from PIL import Image
from transformers import SiglipVisionConfig

from hires_vlm.model import HiResVLM, HiResVLMConfig, HiResVLMProcessor
from hires_vlm.text import IGNORE_INDEX
from hires_vlm.tiny import build_tiny


def _noisy(model, seed=0, scale=0.08):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def hd():
    model, proc = build_tiny("llava_hd", seed=0)
    return _noisy(model), proc


IMAGES = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (120, 500), (10, 100, 30)),
          Image.new("RGB", (224, 224), (0, 0, 255))]
PROMPTS = ["What colour is it?", "How many dots are there in the picture?", "Describe."]


def _train_batch(proc, convs, images):
    from hires_vlm.data.llava_json import LlavaCollator

    rows = []
    for conv, im in zip(convs, images):
        b = proc.image_processor([im])
        counts = [proc.max_visual_tokens(im.size)]
        enc = proc.encoder.encode(conv, counts)
        rows.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                     "pixel_values": b.pixel_values, "image_sizes": torch.tensor([im.size])})
    return LlavaCollator(proc.tokenizer.pad_token_id)(rows)


def test_forward_loss_and_label_masking(hd):
    model, proc = hd
    convs = [[{"from": "human", "value": "<image>\n" + p}, {"from": "gpt", "value": "red"}] for p in PROMPTS]
    batch = _train_batch(proc, convs, IMAGES)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert out.visual_tokens.tolist() == [proc.max_visual_tokens(im.size) for im in IMAGES]
    # Labels after expansion: the same learned tokens, in the same order; none on visual tokens.
    for b in range(len(IMAGES)):
        before = batch["labels"][b][batch["labels"][b] != IGNORE_INDEX]
        after = out.labels[b][out.labels[b] != IGNORE_INDEX]
        assert torch.equal(before, after)
    assert out.logits.shape[:2] == out.labels.shape


def test_placeholder_count_must_match_images(hd):
    model, proc = hd
    inp = proc(PROMPTS[:1], IMAGES[:1])
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
              pixel_values=torch.cat([inp["pixel_values"]] * 2), image_sizes=torch.cat([inp["image_sizes"]] * 2))


def test_sequence_longer_than_max_length_is_an_error():
    model, proc = build_tiny("llava_hd", max_length=64)
    inp = proc(PROMPTS[:1], None)  # text only fits
    model(**inp)
    with pytest.raises(ValueError, match="max_length"):
        proc(PROMPTS[:1], IMAGES[:1])


def test_batched_left_padded_generation_equals_one_by_one(hd):
    model, proc = hd
    batch = model.generate(**proc(PROMPTS, IMAGES), max_new_tokens=6, do_sample=False)
    for i, (p, im) in enumerate(zip(PROMPTS, IMAGES)):
        single = model.generate(**proc([p], [im]), max_new_tokens=6, do_sample=False)
        n = single.shape[1]
        assert torch.equal(batch[i, :n], single[0]), i


def test_kv_cache_matches_full_recomputation(hd):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)
    cached = model.generate(**inp, max_new_tokens=6, do_sample=False, eos_token_id=None)
    merged = model.merge_inputs(inp["input_ids"], inp["attention_mask"], inp["pixel_values"], inp["image_sizes"],
                                padding_side="left")
    emb, mask = merged.inputs_embeds, merged.attention_mask
    steps = []
    with torch.no_grad():
        for _ in range(6):  # no cache: the whole sequence again at every step
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model.language_model(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                                          use_cache=False).logits[:, -1]
            nxt = logits.argmax(-1)
            steps.append(nxt)
            emb = torch.cat([emb, model.get_input_embeddings()(nxt)[:, None]], 1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    assert torch.equal(cached, torch.stack(steps, 1))
    with pytest.raises(ValueError, match="use_cache"):
        model.generate(**inp, max_new_tokens=2, use_cache=False)


def test_tower_stops_at_the_feature_layer_with_the_same_features():
    from transformers import AutoModel, CLIPVisionConfig

    from hires_vlm.vision import VisionTower

    for cfg in (CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=4, num_attention_heads=2),
                SiglipVisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=4, num_attention_heads=2)):
        tower_model = AutoModel.from_config(cfg).eval()
        x = torch.randn(2, 3, 28, 28)
        full = tower_model(pixel_values=x, output_hidden_states=True).hidden_states
        layers = tower_model.encoder.layers
        for layer in (-2, -1, 0, 1, 3):
            ref = full[layer]
            ref = ref[:, 1:] if ref.shape[1] == 5 else ref
            assert torch.allclose(VisionTower(tower_model, layer)(x), ref, atol=1e-6), (cfg.model_type, layer)
        assert tower_model.encoder.layers is layers and len(layers) == 4


def test_save_and_load_round_trip_is_identical(hd, tmp_path):
    model, proc = hd
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    m2 = HiResVLM.from_pretrained(tmp_path).eval()
    p2 = HiResVLMProcessor.from_pretrained(tmp_path)
    a, b = proc(PROMPTS, IMAGES), p2(PROMPTS, IMAGES)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert torch.equal(model(**a).logits, m2(**b).logits)
    assert torch.equal(model.generate(**a, max_new_tokens=5), m2.generate(**b, max_new_tokens=5))
    assert m2.language_model.generation_config.eos_token_id == model.language_model.generation_config.eos_token_id


def test_all_views_go_through_the_tower_in_one_forward(hd):
    model, proc = hd
    inp = proc(PROMPTS, IMAGES)
    before = model.vision_tower.calls
    model(**inp)
    assert model.vision_tower.calls - before == 1
    feats = model.vision_tower(inp["pixel_values"])
    model.vision_tower.chunk_size = 2
    try:
        assert torch.allclose(model.vision_tower(inp["pixel_values"]), feats, atol=1e-6)
    finally:
        model.vision_tower.chunk_size = None


def test_tower_is_frozen_by_default_and_gets_no_gradient():
    model, proc = build_tiny("llava")
    model.train()
    convs = [[{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "red"}]]
    out = model(**_train_batch(proc, convs, IMAGES[:1]))
    out.loss.backward()
    assert all(p.grad is None for p in model.vision_tower.parameters())
    assert all(p.grad is not None for p in model.connector.parameters())


def test_text_only_training_batch_still_runs_the_vision_path():
    model, proc = build_tiny("llava_hd")
    model.train()
    enc = proc.encoder.encode([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "hello"}], [])
    ids = torch.tensor([enc.input_ids])
    calls = model.vision_tower.calls
    out = model(input_ids=ids, labels=torch.tensor([enc.labels]))
    out.loss.backward()
    assert model.vision_tower.calls == calls + 1
    assert all(p.grad is not None for p in model.connector.parameters())


def test_siglip_tower_without_cls_token():
    from hires_vlm.text import add_image_token, build_bpe_tokenizer
    from hires_vlm.tiny import tiny_text_config

    tok = build_bpe_tokenizer()
    img_id = add_image_token(tok)
    vc = SiglipVisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2)
    cfg = HiResVLMConfig(vision_config=vc.to_dict(), text_config=tiny_text_config(len(tok), 64, 1).to_dict(),
                         method={"preset": "llava_hd"}, image_token_id=img_id, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3, template="chatml")
    model = HiResVLM(cfg).eval()
    proc = HiResVLMProcessor(tok, cfg)
    feats = model.vision_tower(torch.zeros(2, 3, 56, 56))
    assert feats.shape == (2, 16, 32)  # 4x4 patches, no CLS to drop
    out = model(**proc(["What?"], [IMAGES[0]]))
    assert out.visual_tokens.item() == proc.max_visual_tokens(IMAGES[0].size)


def test_bad_feature_layer_is_refused():
    from hires_vlm.tiny import tiny_vision_config
    from transformers import AutoModel

    from hires_vlm.vision import VisionTower

    with pytest.raises(ValueError, match="out of range"):
        VisionTower(AutoModel.from_config(tiny_vision_config()), feature_layer=-9)
