"""VisionZip (``vision/visionzip.py``): dominant tokens by the tower's attention, contextual tokens merged
from the rest; against eager-attention runs of the tower and a loop-by-loop merge."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, CLIPVisionConfig, SiglipVisionConfig

from hires_vlm.model.reduction import (
    kept_count,
    resolve_token_reduction,
    visionzip_layout,
    visionzip_split,
    zipped_anyres_tokens,
)
from hires_vlm.tiny import build_tiny
from hires_vlm.vision import VisionTower
from hires_vlm.vision.visionzip import TowerProbe, probe_tower, zip_views

pytestmark = pytest.mark.usefixtures("one_thread")

TOWER = dict(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
             num_attention_heads=4)
SIZES = dict(vision_hidden=32, vision_layers=2, text_hidden=64, text_layers=2, vocab_size=300)
IMAGES = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (120, 300), (10, 100, 30))]
PROMPTS = ["What colour is it?", "How many dots are there in the picture?"]


def _tower(config_class, seed=0):
    torch.manual_seed(seed)
    model = AutoModel.from_config(config_class(**TOWER)).eval()
    with torch.no_grad():  # less uniform attention: clear top-k winners
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("config_class", [CLIPVisionConfig, SiglipVisionConfig])
def test_scores_and_keys_equal_an_eager_run_of_the_feature_layer(config_class):
    model = _tower(config_class)
    x = torch.randn(3, 3, 56, 56)
    tower = VisionTower(model, -2)  # the features come out of layer index 1 (of 0, 1, 2)
    with torch.no_grad():
        probe = probe_tower(tower, x)
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        out = eager(pixel_values=x, output_attentions=True, output_hidden_states=True)
    att = out.attentions[1]  # [v x H x N x N]
    if config_class is CLIPVisionConfig:
        ref = att[:, :, 0, 1:].mean(1)  # CLS → patches, averaged over heads
        assert probe.cls is not None and torch.allclose(probe.cls, out.hidden_states[2][:, 0], rtol=1e-4, atol=1e-4)
        assert torch.allclose(probe.features, out.hidden_states[2][:, 1:], rtol=1e-4, atol=1e-4)
    else:
        ref = att.mean((1, 2))  # no CLS: the mean attention each patch receives
        assert probe.cls is None
    assert torch.allclose(probe.scores, ref, atol=1e-5)
    layer = eager.encoder.layers[1]
    with torch.no_grad():
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[1]))
    keys = keys.view(3, keys.shape[1], 4, -1).mean(2)
    assert torch.allclose(probe.keys, keys[:, 1:] if probe.cls is not None else keys, rtol=1e-4, atol=1e-4)
    # dominant selection = top-k of the independently computed attention, in raster order
    zipped = zip_views(probe, 5, 0, use_cls=False)
    assert torch.equal(zipped.dominant, ref.topk(5, dim=1).indices.sort(1).values)
    assert torch.equal(zipped.tokens, probe.features[torch.arange(3)[:, None], zipped.dominant])


def _loop_merge(feats, keys, dominant, n_ctx):
    """The contextual merge of one view, written with loops: targets every step-th remaining patch."""
    rest = [i for i in range(feats.shape[0]) if i not in set(dominant.tolist())]
    step = max(1, len(rest) // n_ctx)
    targets = rest[::step][:n_ctx]
    groups = {t: [] for t in targets}
    for i in rest:
        if i in groups:
            continue
        sims = [F.cosine_similarity(keys[i], keys[t], dim=0) for t in targets]
        groups[targets[int(torch.stack(sims).argmax())]].append(i)
    out = []
    for t in targets:
        merged = torch.stack([feats[i] for i in groups[t]]).mean(0) if groups[t] else torch.zeros_like(feats[t])
        out.append(feats[t] + merged)
    return torch.stack(out)


def test_contextual_tokens_equal_a_loop_by_loop_merge():
    g = torch.Generator().manual_seed(1)
    v, t, d = 2, 36, 8
    probe = TowerProbe(torch.randn(v, t, d, generator=g), torch.rand(v, t, generator=g),
                       torch.randn(v, t, 5, generator=g), torch.randn(v, d, generator=g))
    zipped = zip_views(probe, 7, 4, use_cls=True)
    assert zipped.tokens.shape == (v, 1 + 7 + 4, d) and zipped.n_cls == 1
    for i in range(v):
        assert torch.equal(zipped.tokens[i, 0], probe.cls[i])
        assert torch.equal(zipped.tokens[i, 1:8], probe.features[i, zipped.dominant[i]])
        ref = _loop_merge(probe.features[i], probe.keys[i], zipped.dominant[i], 4)
        assert torch.allclose(zipped.tokens[i, 8:], ref, atol=1e-6)


def test_counts_split_as_the_official_settings():
    # 576 tokens (CLIP-L/336): 64 kept = 54 dominant (the CLS one of them) + 10 contextual; also 128, 192
    assert visionzip_split(576, 64 / 576, 10 / 64, True) == (53, 1, 10)
    assert visionzip_split(576, 128 / 576, 10 / 64, True) == (107, 1, 20)
    assert visionzip_split(576, 192 / 576, 10 / 64, True) == (161, 1, 30)
    assert visionzip_split(729, 64 / 729, 10 / 64, False) == (54, 0, 10)  # SigLIP: no CLS
    assert visionzip_split(64, 0.01, 10 / 64, True) == (0, 1, 0)  # at least one token
    assert kept_count(10, 0.3) == 3 and kept_count(64, 1.0) == 64 and kept_count(5, 0.01) == 1


@pytest.fixture(scope="module")
def models():
    return {name: tuple(x.eval() if i == 0 else x for i, x in enumerate(build_tiny(name, seed=0, **SIZES)))
            for name in ("llava", "llava_hd")}


@pytest.mark.parametrize("name", ["llava", "llava_hd"])
def test_keep_one_is_exactly_the_unreduced_model(models, name):
    model, proc = models[name]
    inp = proc(PROMPTS, IMAGES)
    with torch.no_grad():
        base = model(**inp)
        same = model(**inp, token_reduction={"visionzip_keep": 1.0})
    assert torch.equal(base.logits, same.logits)


@pytest.mark.parametrize("name,keep", [("llava", 0.25), ("llava", 0.1), ("llava_hd", 0.25)])
def test_each_view_keeps_the_stated_count_and_inspect_agrees(models, name, keep):
    from hires_vlm.inspect_cut import run_inspect

    model, proc = models[name]
    inp = proc(PROMPTS, IMAGES)
    with torch.no_grad():
        out = model(**inp, token_reduction={"visionzip_keep": keep})
    k = kept_count(64, keep)  # 8×8 tokens per view
    views = [model.imaging_spec.record_for(im.size).num_views for im in IMAGES]
    assert out.visual_tokens.tolist() == [n * k for n in views]
    for im, n in zip(IMAGES, out.visual_tokens.tolist()):
        _, info = run_inspect(None, method=name, size=im.size, tile_size=112, patch_size=14,
                              token_reduction={"visionzip_keep": keep})
        assert info["visionzip_visual_tokens"] == info["visual_tokens_after_reduction"] == n


def test_anyres_layout_is_the_official_visionzip_llava_next_order():
    from hires_vlm.imaging import ImagingSpec

    spec = ImagingSpec(tile_size=28, grid_rule="anyres", grid_candidates=((2, 1),), canvas="fit",
                       global_view="squash", local_tiles=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    rec = spec.record_for((56, 28))  # 2 columns x 1 row of 2×2-token tiles, after the global view
    assert rec.grid == (2, 1) and list(rec.views) == ["global", "tile", "tile"]
    # per view: [CLS] [2 dominant] [1 contextual]; the value names (view, slot)
    proj = torch.tensor([[[10 * v + s] for s in range(4)] for v in range(3)], dtype=torch.float32)
    dominant = torch.tensor([[0, 3], [1, 2], [0, 3]])  # patch indices on each 2×2 tile
    out = zipped_anyres_tokens(proj, dominant, 1, rec, grid=2).flatten().tolist()
    # the base view whole; the tiles' dominant tokens in raster order over the 2×4 map: (0,1) = left tile's
    # patch 1 (value 11), (0,2) = right tile's patch 0 (21), (1,0) = left p2 (12), (1,3) = right p3 (22);
    # then the tiles' CLS tokens, then their contextual tokens
    assert out == [0, 1, 2, 3] + [11, 21, 12, 22] + [10, 20] + [13, 23]


def test_methods_that_read_a_token_grid_are_refused_with_the_reason():
    for name in ("slime", "monkey", "inf_llava"):
        with pytest.raises(ValueError, match=f"cannot be combined with method '{name}'"):
            visionzip_layout(name)
    model, proc = build_tiny("monkey", seed=0, **SIZES)
    with pytest.raises(ValueError, match="monkey.*g×g token map"):
        model(**proc(PROMPTS[:1], IMAGES[:1]), token_reduction={"visionzip_keep": 0.5})
    assert visionzip_layout("llava") == "flat" and visionzip_layout("llava_hd") == "anyres"


@pytest.mark.parametrize("keep", [0, -1, 1.01, float("nan"), False])
def test_bad_fractions_are_clear_errors(keep):
    with pytest.raises(ValueError, match=r"visionzip_keep must be a fraction in \(0, 1\]"):
        resolve_token_reduction({"visionzip_keep": keep})
    with pytest.raises(ValueError, match="visionzip_contextual"):
        resolve_token_reduction({"visionzip_contextual": 1.0})


def test_cli_inspect_reports_the_reduced_counts(capsys):
    from hires_vlm.cli import main

    assert main(["inspect", "--size", "672x672", "--method", "llava", "--json", "--visionzip-keep", "0.1111111",
                 "--fastv-keep", "0.5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["visual_tokens"] == 576 and info["visionzip_visual_tokens"] == 64
    assert info["fastv_visual_tokens"] == info["visual_tokens_after_reduction"] == 32
    assert main(["inspect", "--size", "672x672", "--method", "slime", "--visionzip-keep", "0.5"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["inspect", "--size", "672x672", "--method", "llava", "--visionzip-keep", "0"]) == 2
    assert "visionzip_keep must be a fraction" in capsys.readouterr().err
