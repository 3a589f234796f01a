"""``monkey``: SliME's compress-everything baseline — every view through one resampler, then the MLP."""

from __future__ import annotations

import pytest
import torch

from hires_vlm.connectors import tiles_to_map
from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, grids
from hires_vlm.methods import Dims, build_method, resolve_method_config

DIMS = Dims(vision_dim=64, text_dim=128, tile_size=112, grid=8)


def make(**over):
    torch.manual_seed(0)
    cfg = resolve_method_config({"preset": "monkey", "queries": 16, "resampler_heads": 4, **over})
    return build_method(cfg, DIMS).eval()


def test_preset_defaults():
    cfg = resolve_method_config("monkey")
    assert (cfg.name, cfg.grid_rule, cfg.global_view, cfg.queries, cfg.projector) == (
        "monkey", "uhd", "squash", 144, "mlp2x_gelu")


@pytest.mark.parametrize("size", [(112, 112), (300, 200), (700, 150)])
def test_every_view_compressed_and_laid_out(size):
    m = make()
    rec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD).record_for(size)
    assert rec.grid == grids.uhd_grid(size, 112)
    feats = torch.randn(rec.num_views, 64, 64)
    out = m(feats, [rec]).tokens[0]
    cols, rows = rec.grid
    assert out.shape == (16 * (1 + cols * rows), 128) == (m.max_visual_tokens(rec), 128)
    toks = m.projector(m.resampler(feats))
    ref = torch.cat([toks[0], tiles_to_map(toks[1:], cols, rows).reshape(-1, 128)])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("rule,view", [("uhd", "squash"), ("slime_paper", "pad")])
def test_slicing_fields(rule, view):
    spec = make(grid_rule=rule, global_view=view).cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    assert spec.grid_rule.value == rule and spec.global_view.value == view
    expect = grids.uhd_grid((500, 300), 112) if rule == "uhd" else grids.slime_paper_grid((500, 300), 112)
    assert spec.record_for((500, 300)).grid == expect


def test_shared_resampler_and_projector_get_gradients():
    m = make().train()
    rec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD).record_for((300, 200))
    m(torch.randn(rec.num_views, 64, 64), [rec]).tokens[0].square().mean().backward()
    assert {n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None} == {"resampler", "projector"}


def test_fewer_tokens_than_llava_hd_and_non_square_queries_refused():
    from hires_vlm.methods import LlavaHDConfig

    cfg = resolve_method_config("monkey")
    spec = cfg.imaging_spec(336, CLIP_MEAN, CLIP_STD)
    hd = LlavaHDConfig()
    hd_spec = hd.imaging_spec(336, CLIP_MEAN, CLIP_STD)
    for size in [(672, 672), (1008, 1008), (1920, 1080)]:
        assert cfg.max_visual_tokens(spec.record_for(size), 24) < hd.max_visual_tokens(hd_spec.record_for(size), 24)
    with pytest.raises(ValueError, match="square"):
        resolve_method_config({"preset": "monkey", "queries": 10})


def test_in_a_tiny_model_generates():
    from PIL import Image

    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny({"preset": "monkey", "queries": 16, "resampler_heads": 4}, text_layers=1,
                             vision_layers=1, vocab_size=300)
    inp = proc(["What is it?"], [Image.new("RGB", (300, 200), "red")])
    out = model.eval().generate(**inp, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1
