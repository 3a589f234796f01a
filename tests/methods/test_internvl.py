"""``internvl``: InternVL's dynamic tiling, pixel shuffle and ``mlp1`` against the official rules.

Official (OpenGVLab/InternVL, ``internvl_chat``): ``internvl/train/dataset.py`` ``dynamic_preprocess`` /
``find_closest_aspect_ratio`` (tiles; re-implemented in ``tests/official_rules.py``), and
``internvl/model/internvl_chat/modeling_internvl_chat.py`` ``InternVLChatModel.extract_feature``:
CLS dropped, each view's g×g map through ``pixel_shuffle(scale_factor=0.5)`` — every 2×2 block of
neighbouring tokens concatenated channel-wise (``ps_version="v2"`` keeps the merged map row-major,
``"v1"`` leaves it transposed) — then ``mlp1`` = LayerNorm(4·dv) → Linear(4·dv, dl) → GELU →
Linear(dl, dl); ``num_image_token = (g/2)²`` per view; the views of an image are its tiles in
row-major order, then the thumbnail (``use_thumbnail`` and more than one tile).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hires_vlm.connectors import pixel_shuffle
from hires_vlm.imaging import CLIP_MEAN, CLIP_STD
from hires_vlm.methods import Dims, LlavaHDConfig, build_method, resolve_method_config

from official_rules import SIZES, official_internvl_tokens
from tiny_parts import check_trains_generates_reloads, conversation_batch

DIMS = Dims(vision_dim=32, text_dim=48, tile_size=112, grid=8)


def make(**over):
    torch.manual_seed(0)
    return build_method(resolve_method_config({"preset": "internvl-dynamic", **over}), DIMS).eval()


def reference_shuffle(x, g, version="v2"):
    """Per view, output token (i, j) = [x(2i, 2j), x(2i, 2j+1), x(2i+1, 2j), x(2i+1, 2j+1)]; v1 visits (j, i)."""
    v, _, d = x.shape
    grid = x.reshape(v, g, g, d)
    side = g // 2
    out = torch.empty(v, side * side, 4 * d)
    for i in range(side):
        for j in range(side):
            k = i * side + j if version == "v2" else j * side + i
            out[:, k] = torch.cat([grid[:, 2 * i, 2 * j], grid[:, 2 * i, 2 * j + 1],
                                   grid[:, 2 * i + 1, 2 * j], grid[:, 2 * i + 1, 2 * j + 1]], -1)
    return out


def test_presets_and_defaults():
    for name in ("internvl", "internvl-dynamic"):
        cfg = resolve_method_config(name)
        assert (cfg.name, cfg.max_tiles, cfg.use_thumbnail, cfg.shuffle_factor, cfg.ps_version, cfg.projector) == (
            "internvl", 12, True, 2, "v2", "ln_mlp2x_gelu")
    spec = cfg.imaging_spec(448, CLIP_MEAN, CLIP_STD)
    assert (spec.grid_rule.value, spec.canvas.value, spec.global_view.value, spec.max_tiles, spec.local_tiles) == (
        "internvl", "stretch", "squash_if_tiled", 12, True)


@pytest.mark.parametrize("tile,g", [(448, 32), (336, 24), (112, 8)])
@pytest.mark.parametrize("max_tiles", [6, 12])
def test_grid_and_max_visual_tokens_match_the_official_rule(tile, g, max_tiles):
    cfg = resolve_method_config({"preset": "internvl", "max_tiles": max_tiles})
    spec = cfg.imaging_spec(tile, CLIP_MEAN, CLIP_STD)
    for size in SIZES:
        rec = spec.record_for(size)
        assert (rec.grid, cfg.max_visual_tokens(rec, g)) == official_internvl_tokens(size, tile, g, max_tiles), size
    # 448-px InternViT: 256 tokens per view, as num_image_token of the official model
    assert cfg.max_visual_tokens(spec.record_for((tile, tile)), 32) == 256


def test_without_thumbnail():
    cfg = resolve_method_config({"preset": "internvl", "use_thumbnail": False})
    spec = cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    for size in SIZES:
        rec = spec.record_for(size)
        assert rec.index("global") == []
        assert cfg.max_visual_tokens(rec, 8) == official_internvl_tokens(size, 112, 8, use_thumbnail=False)[1]


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_pixel_shuffle_is_the_official_channel_concatenation(version):
    x = torch.randn(3, 64, 5)
    assert torch.equal(pixel_shuffle(x, 2, version), reference_shuffle(x, 8, version))
    assert pixel_shuffle(x, 1) is x
    y = pixel_shuffle(torch.randn(2, 81, 4), 3)
    assert y.shape == (2, 9, 36)


def test_projector_is_mlp1():
    m = make()
    proj = m.projector
    assert [type(p) for p in proj] == [nn.LayerNorm, nn.Linear, nn.GELU, nn.Linear]
    assert proj[0].normalized_shape == (128,) and (proj[1].in_features, proj[1].out_features) == (128, 48)
    assert (proj[3].in_features, proj[3].out_features) == (48, 48)
    assert sorted(n for n, _ in m.named_parameters()) == [
        "projector.0.bias", "projector.0.weight", "projector.1.bias", "projector.1.weight", "projector.3.bias",
        "projector.3.weight"]


@pytest.mark.parametrize("size", [(300, 200), (112, 112), (50, 40), (1, 900), (1920, 1080)])
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_forward_is_tiles_then_thumbnail_and_its_length_is_max_visual_tokens(size, version):
    m = make(ps_version=version)
    rec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD).record_for(size)
    feats = torch.randn(rec.num_views, 64, 32)
    out = m(feats, [rec]).tokens[0]
    assert out.shape == (m.max_visual_tokens(rec), 48)
    toks = m.projector(reference_shuffle(feats, 8, version))  # [views x 16 x dl], our view order: [thumbnail] + tiles
    order = list(range(1, rec.num_views)) + [0] if rec.index("global") else list(range(rec.num_views))
    torch.testing.assert_close(out, toks[order].reshape(-1, 48))


def test_a_batch_of_images_is_split_per_image():
    m = make()
    spec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    recs = [spec.record_for(s) for s in [(300, 200), (100, 100), (1, 900)]]
    feats = torch.randn(sum(r.num_views for r in recs), 64, 32)
    outs = m(feats, recs).tokens
    assert [o.shape[0] for o in outs] == [m.max_visual_tokens(r) for r in recs] == [7 * 16, 16, 13 * 16]


def test_an_odd_token_grid_is_refused_with_what_to_do():
    cfg = resolve_method_config("internvl")
    with pytest.raises(ValueError, match=r"multiple of 2 per side; this tower gives 27x27 tokens"):
        build_method(cfg, Dims(vision_dim=32, text_dim=48, tile_size=378, grid=27))
    rec = cfg.imaging_spec(378, CLIP_MEAN, CLIP_STD).record_for((800, 600))
    with pytest.raises(ValueError, match="shuffle factor that divides 27"):
        cfg.max_visual_tokens(rec, 27)
    three = cfg.replace(shuffle_factor=3)  # a factor that divides g works: 9x9 tokens of 9·dv per view
    m = build_method(three, Dims(vision_dim=32, text_dim=48, tile_size=378, grid=27))
    assert m.projector[1].in_features == 9 * 32 and three.max_visual_tokens(rec, 27) == 81 * rec.num_views


@pytest.mark.parametrize("over,match", [({"max_tiles": 0}, "max_tiles"), ({"shuffle_factor": 0}, "shuffle_factor"),
                                        ({"ps_version": "v3"}, "ps_version"),
                                        ({"use_thumbnail": "yes"}, "use_thumbnail"),
                                        ({"projector": "resampler"}, "projector"), ({"min_tiles": 2}, "unknown")])
def test_config_validation(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_method_config({"preset": "internvl", **over})


def test_against_llava_hd_at_clip_336():
    iv, hd = resolve_method_config("internvl"), LlavaHDConfig()
    iv_spec, hd_spec = iv.imaging_spec(336, CLIP_MEAN, CLIP_STD), hd.imaging_spec(336, CLIP_MEAN, CLIP_STD)
    expect = {(672, 672): (720, 2928), (1008, 1008): (1440, 2928), (1920, 1080): (1296, 1948),
              (4000, 1000): (720, 1890), (300, 200): (1008, 976), (1, 9000): (1872, 624)}
    for size, pair in expect.items():
        got = (iv.max_visual_tokens(iv_spec.record_for(size), 24), hd.max_visual_tokens(hd_spec.record_for(size), 24))
        assert got == pair, size


def test_tiny_model_trains_one_step_and_generates(tmp_path):
    from PIL import Image

    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny("internvl-dynamic", text_layers=1, vision_layers=1, vocab_size=300)
    assert model.vision_tower.grid == 8
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (100, 100), (10, 100, 30))]
    assert conversation_batch(proc, images)["pixel_values"].shape[0] == 7 + 1  # 6 tiles + thumbnail, then 1 tile (no thumbnail)
    assert check_trains_generates_reloads(model, proc, images, tmp_path) == [112, 16]


def test_cli_inspect_json(tmp_path, capsys):
    from PIL import Image

    from hires_vlm.cli import main

    path = tmp_path / "wide.png"
    Image.new("RGB", (1920, 1080), "white").save(path)
    for method in ("internvl", "internvl-dynamic"):
        assert main(["inspect", str(path), "--method", method, "--json", "--tile-size", "448"]) == 0
        info = json.loads(capsys.readouterr().out)
        grid, tokens = official_internvl_tokens((1920, 1080), 448, 32)
        assert (info["method"], info["grid"], info["visual_tokens"]) == ("internvl", list(grid), tokens) == (
            "internvl", [4, 2], 9 * 256)
        assert info["views"] == {"global": 1, "tile": 8}
        assert info["token_layout"]["tokens_per_view"] == 256 and info["token_layout"]["thumbnail"] is True
    # a tower with an odd grid: the error says what is required
    assert main(["inspect", str(path), "--method", "internvl", "--json", "--tile-size", "378"]) == 2
    assert "must be a multiple of 2 per side; this tower gives 27x27" in capsys.readouterr().err
