"""``onevision``: LLaVA-OneVision's ``anyres_max_9`` against its official rule, re-implemented here.

Official: LLaVA-NeXT ``llava/model/llava_arch.py``, ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal``
(``image_aspect_ratio="anyres_max_9"``, ``mm_patch_merge_type="spatial_unpad"``): the projected features of
the tiles are viewed as (rows, cols, g, g, C), permuted to one C × rows·g × cols·g map, un-padded with
``unpad_image`` (``new = int(orig · current / orig_other)``, ``pad = (current − new) // 2`` off both
sides), then ``times = sqrt(h·w / (9·g²))``; if ``times > 1.1`` the map is
``interpolate(·, [int(h // times), int(w // times)], mode="bilinear")``; a newline column is appended,
the map flattened row by row and put after the base view's g² features. transformers
``LlavaOnevisionProcessor._get_number_of_features`` / ``_get_unpadded_features`` counts the same tokens
with its own unpad rounding (``int(round(x, 7))``), which ``unpad_rounding="transformers"`` selects.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, ONEVISION_GRIDS
from hires_vlm.methods import Dims, LlavaHDConfig, build_method, resolve_method_config

from official_rules import (
    SIZES,
    official_onevision_pinpoints,
    official_select_best_resolution,
    official_unpadded,
)
from official_rules import official_onevision_tokens as official_tokens
from tiny_parts import check_trains_generates_reloads

DIMS = Dims(vision_dim=32, text_dim=48, tile_size=112, grid=8)


def make(**over):
    torch.manual_seed(0)
    return build_method(resolve_method_config({"preset": "onevision-anyres-max-9", **over}), DIMS).eval()


def test_presets_and_defaults():
    for name in ("onevision", "onevision-anyres-max-9"):
        cfg = resolve_method_config(name)
        assert (cfg.name, cfg.max_tiles, cfg.unpad_rounding, cfg.projector) == ("onevision", 9, "floor", "mlp2x_gelu")
        assert cfg.grid_candidates == ONEVISION_GRIDS
    spec = cfg.imaging_spec(384, CLIP_MEAN, CLIP_STD)
    assert (spec.grid_rule.value, spec.canvas.value, spec.global_view.value, spec.local_tiles) == (
        "anyres", "fit", "squash", True)


@pytest.mark.parametrize("tile,g", [(384, 27), (336, 24), (112, 8)])
def test_max_visual_tokens_match_the_official_rule(tile, g):
    cfg = resolve_method_config("onevision")
    spec = cfg.imaging_spec(tile, CLIP_MEAN, CLIP_STD)
    for size in SIZES:
        rec = spec.record_for(size)
        grid, tokens = official_tokens(size, tile, g)
        assert (rec.grid, cfg.max_visual_tokens(rec, g)) == (grid, tokens), size


def test_token_counts_match_transformers_llava_onevision_processor():
    """transformers' own count (``_get_number_of_features``, SigLIP-384: 729 = 27² per view) with its
    (height, width) pinpoints, against ``unpad_rounding="transformers"``."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor

    pins = LlavaOnevisionConfig().image_grid_pinpoints
    hf = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=pins), num_image_tokens=729,
                         vision_aspect_ratio="anyres_max_9")
    hf._get_unpadded_features = lambda *a: LlavaOnevisionProcessor._get_unpadded_features(hf, *a)
    cfg = resolve_method_config({"preset": "onevision", "unpad_rounding": "transformers"})
    spec = cfg.imaging_spec(384, CLIP_MEAN, CLIP_STD)
    for w, h in SIZES:
        if official_select_best_resolution((w, h), official_onevision_pinpoints(384)) is None:
            continue  # zero effective area everywhere (1 px x thousands): transformers' choice is undefined
        expect = LlavaOnevisionProcessor._get_number_of_features(hf, h, w, 384, 384)
        assert cfg.max_visual_tokens(spec.record_for((w, h)), 27) == expect, (w, h)


def test_the_two_unpad_roundings_differ_where_the_official_codes_do():
    spec = resolve_method_config("onevision").imaging_spec(384, CLIP_MEAN, CLIP_STD)
    floor = resolve_method_config("onevision")
    hf = floor.replace(unpad_rounding="transformers")
    rec = spec.record_for((1750, 1500))
    assert official_unpadded((1750, 1500), rec.grid[1] * 27, rec.grid[0] * 27, "floor") != official_unpadded(
        (1750, 1500), rec.grid[1] * 27, rec.grid[0] * 27, "transformers")
    assert floor.max_visual_tokens(rec, 27) == official_tokens((1750, 1500), 384, 27)[1]
    assert hf.max_visual_tokens(rec, 27) == official_tokens((1750, 1500), 384, 27, rounding="transformers")[1]
    assert floor.max_visual_tokens(rec, 27) != hf.max_visual_tokens(rec, 27)


def official_pack(projected, size, grid, newline, g, n=9, rounding="floor"):
    """The official tensor steps on projected features ``[1 + tiles, g², C]``."""
    cols, rows = grid
    base, tiles = projected[0], projected[1:]
    c = tiles.shape[-1]
    fmap = tiles.view(rows, cols, g, g, c).permute(4, 0, 2, 1, 3).reshape(c, rows * g, cols * g)
    h, w = official_unpadded(size, rows * g, cols * g, rounding)
    top, left = (rows * g - h) // 2, (cols * g - w) // 2
    fmap = fmap[:, top:top + h, left:left + w]
    times = math.sqrt(h * w / (n * g * g))
    if times > 1.1:
        fmap = F.interpolate(fmap[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    fmap = torch.cat([fmap, newline[:, None, None].expand(c, fmap.shape[1], 1)], dim=-1)
    return torch.cat([base, fmap.flatten(1, 2).transpose(0, 1)], 0)


@pytest.mark.parametrize("size", [(300, 200), (112, 112), (1000, 700), (4000, 1000), (448, 280), (1, 900), (700, 150)])
def test_forward_is_the_official_layout_and_its_length_is_max_visual_tokens(size):
    m = make()
    rec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD).record_for(size)
    feats = torch.randn(rec.num_views, 64, 32)
    out = m(feats, [rec]).tokens[0]
    assert out.shape == (m.max_visual_tokens(rec), 48)
    ref = official_pack(m.projector(feats), size, rec.grid, m.image_newline, 8)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_shrink_only_past_the_1_1_tolerance():
    cfg = resolve_method_config("onevision")
    spec = cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    kept = spec.record_for((448, 280))  # 4x3 grid, un-padded 20x32 = 640 tokens: t = 1.054 ≤ 1.1, kept
    assert kept.grid == (4, 3) and cfg.token_layout(kept, 8)["shrunk_map"] == [20, 32]
    assert cfg.max_visual_tokens(kept, 8) == 64 + 640 + 20 > 64 + 9 * 64
    shrunk = spec.record_for((448, 294))  # un-padded 22x32 = 704: t = 1.1055 > 1.1, shrunk to 19x28
    assert cfg.token_layout(shrunk, 8)["shrunk_map"] == [19, 28]
    assert cfg.max_visual_tokens(shrunk, 8) == 64 + 19 * 28 + 19
    # the bound: the map never keeps more than 1.21·N tiles' worth
    for size in SIZES:
        layout = cfg.token_layout(spec.record_for(size), 8)
        assert layout["shrunk_map"][0] * layout["shrunk_map"][1] <= 1.21 * 9 * 64


def test_anyres_max_size_is_the_official_formula_and_never_empties_a_side():
    from hires_vlm.connectors import anyres_max_size

    assert anyres_max_size((72, 72), 24, 9) == (72, 72)  # t = 1: kept
    assert anyres_max_size((82, 144), 24, 9) == (54, 95)  # t = 1.509: int(82 // t), int(144 // t)
    assert anyres_max_size((0, 48), 8, 9) == (0, 48)  # an image of one pixel row leaves no map rows
    for g in (2, 5, 8, 27):
        for n in (1, 4, 9, 16):
            for h in range(1, 6 * g + 1, max(1, g // 2)):
                for w in range(1, 6 * g + 1, max(1, g // 3)):
                    t = math.sqrt(h * w / (n * g * g))
                    expect = (h, w) if t <= 1.1 else (max(1, int(h // t)), max(1, int(w // t)))
                    assert anyres_max_size((h, w), g, n) == expect
    assert anyres_max_size((1, 6), 1, 1) == (1, 2)  # official: int(1 // 2.449) = 0 rows, an error; here 1
    with pytest.raises(ValueError, match="max_tiles"):
        anyres_max_size((4, 4), 2, 0)


def test_against_llava_hd_at_clip_336():
    """Same layout as LLaVA-NeXT; more grids and a budget instead of 5 grids of at most 4 tiles."""
    ov, hd = resolve_method_config("onevision"), LlavaHDConfig()
    ov_spec, hd_spec = ov.imaging_spec(336, CLIP_MEAN, CLIP_STD), hd.imaging_spec(336, CLIP_MEAN, CLIP_STD)
    expect = {(672, 672): (2928, 2928), (1008, 1008): (5832, 2928), (1920, 1080): (5760, 1948),
              (4000, 1000): (5796, 1890), (300, 200): (976, 976), (8192, 64): (866, 576)}
    for size, (n_ov, n_hd) in expect.items():
        got = (ov.max_visual_tokens(ov_spec.record_for(size), 24), hd.max_visual_tokens(hd_spec.record_for(size), 24))
        assert got == (n_ov, n_hd) == (official_tokens(size, 336, 24)[1], got[1]), size


@pytest.mark.parametrize("over,match", [({"max_tiles": 0}, "max_tiles"),
                                        ({"unpad_rounding": "round"}, "unpad_rounding"),
                                        ({"grid_candidates": []}, "grid_candidates"),
                                        ({"grid_candidates": [[0, 2]]}, "grid_candidates"),
                                        ({"projector": "ln_mlp2x_gelu"}, "projector")])
def test_config_validation(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_method_config({"preset": "onevision", **over})


def test_tiny_model_trains_one_step_and_generates(tmp_path):
    from PIL import Image

    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny("onevision-anyres-max-9", text_layers=1, vision_layers=1, vocab_size=300)
    images = [Image.new("RGB", (1000, 700), (200, 30, 30)), Image.new("RGB", (120, 500), (10, 100, 30))]
    assert check_trains_generates_reloads(model, proc, images, tmp_path) == [644, 504]


def test_cli_inspect_json(tmp_path, capsys):
    from PIL import Image

    from hires_vlm.cli import main

    path = tmp_path / "wide.png"
    Image.new("RGB", (1920, 1080), "white").save(path)
    for method in ("onevision", "onevision-anyres-max-9"):
        assert main(["inspect", str(path), "--method", method, "--json", "--tile-size", "384"]) == 0
        info = json.loads(capsys.readouterr().out)
        grid, tokens = official_tokens((1920, 1080), 384, 27)
        assert (info["method"], info["grid"], info["visual_tokens"]) == ("onevision", list(grid), tokens) == (
            "onevision", [5, 3], 7269)
        assert info["token_layout"]["unpadded_map"] == [75, 135] and info["token_layout"]["shrunk_map"] == [60, 108]
