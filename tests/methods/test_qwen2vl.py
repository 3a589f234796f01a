"""``qwen2vl``: Qwen2-VL's native dynamic resolution on transformers' own Qwen2-VL vision model.

Official behaviour (transformers ``models/qwen2_vl/``): ``smart_resize`` (tested in
``tests/imaging/test_native.py``), ``pixel_values [Σ t·h·w x 3·2·14·14]`` with ``image_grid_thw``,
the vision model's attention kept within each image (``cu_seqlens``), and ``PatchMerger``
(LayerNorm, 2×2 neighbours concatenated, MLP): ``grid_thw.prod() // 4`` visual tokens per image.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, native_size
from hires_vlm.methods import Dims, build_method, resolve_method_config
from tiny_parts import conversation_batch, save_tiny_parts


def official_tokens(size, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    """``image_grid_thw.prod() // merge²`` of Qwen2-VL's processor, from the resized size."""
    w, h = native_size(size, factor // 2, 2, min_pixels, max_pixels)
    grid_thw = (1, h // 14, w // 14)
    return grid_thw[0] * grid_thw[1] * grid_thw[2] // 4


@pytest.fixture(scope="module")
def tiny():
    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny("qwen2vl-native", text_layers=1, vision_layers=2, vocab_size=300, seed=0)
    return model, proc


def test_presets_and_geometry():
    for name in ("qwen2vl", "qwen2vl-native"):
        cfg = resolve_method_config(name)
        assert (cfg.name, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size, cfg.min_pixels, cfg.max_pixels,
                cfg.projector) == ("qwen2vl", 14, 2, 2, 56 * 56, 28 * 28 * 1280, "patch_merger")
    spec = cfg.imaging_spec(28, CLIP_MEAN, CLIP_STD)
    assert spec.is_native and spec.grid_rule.value == "native"
    for size in ((1920, 1080), (640, 480), (1, 1), (8192, 64), (100, 3000)):
        rec = spec.record_for(size)
        assert cfg.max_visual_tokens(rec, 2) == official_tokens(size)
    # 1920x1080 rounds to 1932x1092 (> max_pixels), so it is scaled down: 1316x728 px, 47x26 tokens
    assert spec.record_for((1920, 1080)).canvas_size == (1316, 728)
    assert cfg.max_visual_tokens(spec.record_for((1920, 1080)), 2) == 47 * 26
    # the cap: a huge image never exceeds max_pixels / 28² tokens
    assert cfg.max_visual_tokens(spec.record_for((8000, 6000)), 2) <= 1280


@pytest.mark.parametrize("bad,msg", [
    ({"min_pixels": 10_000, "max_pixels": 5_000}, "must not exceed max_pixels"),
    ({"patch_size": 0}, "patch_size must be a positive integer"),
    ({"merge_size": -1}, "merge_size must be a positive integer"),
    ({"min_pixels": 100, "max_pixels": 500}, "below one visual token"),
    ({"projector": "mlp2x_gelu"}, "projector"),
    ({"temporal_patch_size": 1.5}, "temporal_patch_size"),
])
def test_bad_configs_say_what_is_wrong(bad, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        resolve_method_config({"preset": "qwen2vl", **bad})


def test_method_refuses_a_fixed_view_tower():
    cfg = resolve_method_config("qwen2vl")
    with pytest.raises(ValueError, match="needs a native-resolution tower"):
        build_method(cfg, Dims(vision_dim=32, text_dim=48, tile_size=112, grid=8))  # CLIP-like 112-px tiles
    method = build_method(cfg, Dims(vision_dim=32, text_dim=48, tile_size=28, grid=2))
    assert {k for k, _ in method.named_parameters()} == {
        "merger.ln_q.weight", "merger.ln_q.bias", "merger.mlp.0.weight", "merger.mlp.0.bias",
        "merger.mlp.2.weight", "merger.mlp.2.bias"}


def test_merger_concatenates_each_window():
    """Token k = MLP(LN(patches 4k..4k+3) concatenated): Qwen2-VL's PatchMerger on our patch order."""
    torch.manual_seed(0)
    method = build_method(resolve_method_config("qwen2vl"), Dims(vision_dim=8, text_dim=6, tile_size=28, grid=2))
    spec = method.cfg.imaging_spec(28, CLIP_MEAN, CLIP_STD)
    recs = [spec.record_for((56, 56)), spec.record_for((112, 56))]
    feats = torch.randn(sum(r.num_views for r in recs), 8)
    out = method(feats, recs).tokens
    assert [t.shape for t in out] == [(4, 6), (8, 6)]
    m = method.merger
    ref = m.mlp(m.ln_q(feats).reshape(-1, 32))
    assert torch.allclose(torch.cat(out), ref)
    with pytest.raises(ValueError, match="patches"):
        method(feats[:-4], recs)


def test_foundation_is_refused_with_the_reason():
    from hires_vlm.tiny import build_tiny

    with pytest.raises(ValueError, match="CLIP ViT pretrained on fixed 112-px tiles.*foundation builder"):
        build_tiny("qwen2vl", foundation="shipped")


def test_other_methods_refuse_the_native_tower_and_clip_refuses_qwen2vl():
    from hires_vlm.model import HiResVLM, HiResVLMConfig
    from hires_vlm.tiny import tiny_native_vision_config, tiny_text_config, tiny_vision_config

    text = tiny_text_config(100, 32, 1).to_dict()
    with pytest.raises(ValueError, match="cuts S×S views, which a native-resolution tower does not take"):
        HiResVLM(HiResVLMConfig(vision_config=tiny_native_vision_config(hidden_size=32, layers=1).to_dict(),
                                text_config=text, method="llava", image_token_id=5, vision_feature_layer=-1))
    with pytest.raises(ValueError, match="needs a native-resolution vision tower"):
        HiResVLM(HiResVLMConfig(vision_config=tiny_vision_config(hidden_size=32, layers=1).to_dict(),
                                text_config=text, method="qwen2vl", image_token_id=5))


IMAGES = [((100, 60), (200, 30, 30)), ((300, 90), (10, 100, 30)), ((57, 250), (20, 20, 220))]


def _images():
    return [Image.new("RGB", size, colour) for size, colour in IMAGES]


def test_processor_output_and_token_counts(tiny):
    model, proc = tiny
    images = _images()
    batch = proc(["What is it?"] * 3, images)
    counts = [proc.max_visual_tokens(im.size) for im in images]
    assert counts == [official_tokens(im.size) for im in images] == [8, 33, 18]
    assert batch["pixel_values"].shape == (4 * sum(counts), 3 * 2 * 14 * 14)
    assert batch["image_sizes"].tolist() == [list(im.size) for im in images]
    assert model.vision_tower.grid_thw(proc.image_processor(images).records).tolist() == [
        [1, 4, 8], [1, 6, 22], [1, 18, 4]]
    with torch.no_grad():
        out = model.eval()(**batch)
    assert out.visual_tokens.tolist() == counts
    assert model.max_visual_tokens((300, 90)) == 33


def test_batched_images_of_different_sizes_match_one_at_a_time(tiny):
    """Attention stays within each image: an image's tokens do not depend on the others in the batch."""
    model, proc = tiny
    images = _images()
    model.eval()
    with torch.no_grad():
        batch = proc.image_processor(images)
        together = model.encode_images(batch.pixel_values, batch.records).tokens
        for im, tokens in zip(images, together):
            alone = proc.image_processor([im])
            single = model.encode_images(alone.pixel_values, alone.records).tokens[0]
            assert torch.allclose(single, tokens, atol=1e-5)


def test_tiny_model_trains_one_step_generates_saves_and_reloads(tmp_path):
    from hires_vlm.data.llava_json import LlavaCollator
    from hires_vlm.model import HiResVLM, HiResVLMProcessor
    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny("qwen2vl", text_layers=1, vision_layers=2, vocab_size=300)
    assert type(model.vision_tower.model).__name__ == "Qwen2VisionTransformerPretrainedModel"
    assert (model.vision_tower.tile_size, model.vision_tower.grid, model.vision_tower.hidden_size) == (28, 2, 64)
    images = _images()[:2]
    batch = conversation_batch(proc, images)
    assert batch["pixel_values"].shape[0] == 4 * (8 + 33)
    model.train()
    model.vision_tower.requires_grad_(True)  # the tower learns too here (it is random): both get gradients
    params = list(model.connector.parameters()) + list(model.vision_tower.parameters())
    before = [p.detach().clone() for p in params]
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.visual_tokens.tolist() == [8, 33]
    out.loss.backward()
    assert all(p.grad is not None for p in params)
    torch.optim.SGD(params, lr=0.1).step()
    changed = [not torch.equal(a, b) for a, b in zip(before, params)]
    assert all(changed[:len(list(model.connector.parameters()))]) and sum(changed) > len(changed) // 2
    model.vision_tower.requires_grad_(False)
    # text-only training batch: the dummy image goes through the native tower too
    ids = torch.tensor(proc.tokenizer("a red one", add_special_tokens=False)["input_ids"])
    assert proc.image_token_id not in ids.tolist()
    text_only = LlavaCollator(proc.tokenizer.pad_token_id)([{"input_ids": ids, "labels": ids.clone()}])
    assert torch.isfinite(model(**text_only).loss)

    inp = proc(["What is it?", "Describe."], images)
    model.eval()
    new = model.generate(**inp, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert new.shape == (2, 3)
    with torch.no_grad():
        logits = model(**inp).logits
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded, loaded_proc = HiResVLM.from_pretrained(tmp_path).eval(), HiResVLMProcessor.from_pretrained(tmp_path)
    assert loaded.connector.cfg == model.connector.cfg and loaded_proc.imaging_spec == proc.imaging_spec
    assert not any(k.startswith("vision_tower.model.merger") for k in loaded.state_dict())
    again = loaded_proc(["What is it?", "Describe."], images)
    assert torch.equal(again["pixel_values"], inp["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(loaded(**again).logits, logits, atol=1e-5)
    assert torch.equal(loaded.generate(**again, max_new_tokens=3, min_new_tokens=3, do_sample=False), new)


def test_aspect_error_reaches_the_user(tiny):
    _, proc = tiny
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        proc(["What?"], [Image.new("RGB", (2010, 10))])


def test_visionzip_is_refused(tiny):
    model, proc = tiny
    batch = proc.image_processor(_images()[:1])
    with pytest.raises(ValueError, match="native-resolution tower has none"):
        model.encode_images(batch.pixel_values, batch.records, token_reduction={"visionzip_keep": 0.5})


def test_build_from_local_parts(tmp_path):
    """``hires-vlm build`` with a saved Qwen2-VL vision model; a CLIP tower is refused for qwen2vl."""
    from hires_vlm.build import build_from_parts
    from hires_vlm.tiny import tiny_native_vision_config
    from hires_vlm.vision.native import native_tower_class

    torch.manual_seed(0)
    native_tower_class()(tiny_native_vision_config(hidden_size=32, layers=1)).save_pretrained(tmp_path / "qv")
    save_tiny_parts(tmp_path)
    with pytest.raises(ValueError, match="needs a native-resolution tower"):
        build_from_parts(str(tmp_path / "clip"), str(tmp_path / "lm"), "qwen2vl")
    with pytest.raises(ValueError, match="needs a CLIP/SigLIP-style tower"):
        build_from_parts(str(tmp_path / "qv"), str(tmp_path / "lm"), "llava")
    model, proc = build_from_parts(str(tmp_path / "qv"), str(tmp_path / "lm"), "qwen2vl", vision_feature_layer=-1)
    src = native_tower_class().from_pretrained(tmp_path / "qv").state_dict()
    ours = model.vision_tower.model.state_dict()
    assert all(torch.equal(src[k], ours[k]) for k in ours) and set(src) - set(ours) == {
        k for k in src if k.startswith("merger.")}
    inp = proc(["What is it?"], [Image.new("RGB", (120, 60), "red")])
    with torch.no_grad():
        out = model.eval()(**inp)
    assert out.visual_tokens.tolist() == [official_tokens((120, 60))]


def test_cli_inspect_json(tmp_path, capsys):
    from hires_vlm.cli import main

    path = tmp_path / "wide.png"
    Image.new("RGB", (1920, 1080), "white").save(path)
    assert main(["inspect", str(path), "--method", "qwen2vl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    w, h = native_size((1920, 1080))
    assert info["method"] == "qwen2vl" and info["visual_tokens"] == official_tokens((1920, 1080))
    layout = info["token_layout"]
    assert layout["resized_size"] == [w, h] and layout["patch_grid"] == [w // 14, h // 14]
    assert layout["token_grid"] == [w // 28, h // 28] and layout["grid_thw"] == [1, h // 14, w // 14]
    assert info["views"] == {"native": 1}
