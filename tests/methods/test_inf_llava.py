"""INF-LLaVA as a method: presets, one test per value of every config field, the pipeline maps,
one batched tower forward, token counts, trainable prefixes, save/load."""

import dataclasses
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hires_vlm.connectors import pool_map, split_map
from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor, floor_grid
from hires_vlm.methods import Dims, build_method, resolve_method_config
from hires_vlm.methods.inf_llava import PAPER, InfLlavaConfig
from hires_vlm.tiny import build_tiny

G, DV, DL, S = 4, 16, 24, 28  # tokens per side, tower width, LM width, tile size (patch 7)
DIMS = Dims(vision_dim=DV, text_dim=DL, tile_size=S, grid=G)


def noise_image(size, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def cfg(**changes) -> InfLlavaConfig:
    return resolve_method_config({"preset": "inf_llava", **changes})


def spec_of(c):
    return c.imaging_spec(S, CLIP_MEAN, CLIP_STD)


def run(method, sizes, seed=0):
    """Random features for images of ``sizes``: (tokens per image, records, features)."""
    torch.manual_seed(seed)
    recs = [spec_of(method.cfg).record_for(s) for s in sizes]
    feats = torch.randn(sum(r.num_views for r in recs), G * G, DV)
    return method(feats, recs).tokens, recs, feats


def identity_method(**changes):
    """A method whose projector is the identity (and LM width = tower width): tokens = pre-projector features."""
    m = build_method(cfg(**changes), Dims(vision_dim=DV, text_dim=DV, tile_size=S, grid=G))
    m.projector = nn.Identity()
    return m.eval()


# ---------------------------------------------------------------------- presets
def test_presets_official_and_paper():
    off = resolve_method_config("inf_llava")
    assert (off.grid_rule, off.fixed_grid, off.canvas, off.heads, off.shared_attention) == ("fixed", (3, 3),
                                                                                           "pad_square", 8, True)
    assert (off.global_query_windows, off.local_query_windows) == ("contiguous", "strided")
    assert (off.attention_block, off.attention_bias, off.fusion, off.fusion_order, off.fusion_residual_norm) == (
        "residual_post_ln", True, "mlp_concat", "local_first", True)
    assert (off.pooling, off.dual_resolution, off.lowres, off.projector) == ("bilinear", "mean", "canvas_bicubic",
                                                                             "mlp2x_gelu")
    paper = resolve_method_config("inf_llava-paper")
    for k, v in PAPER.items():
        assert getattr(paper, k) == v and getattr(off, k) != v, k
    assert (paper.global_query_windows, paper.local_query_windows, paper.heads) == ("strided", "contiguous", 1)
    assert resolve_method_config(paper.to_dict()) == paper  # round trip through a dict (saved configs)


LITERAL_FIELDS = [(f.name, v) for f in dataclasses.fields(InfLlavaConfig)
                  for v in typing.get_args(typing.get_type_hints(InfLlavaConfig)[f.name])
                  if typing.get_origin(typing.get_type_hints(InfLlavaConfig)[f.name]) is typing.Literal]
BOOL_FIELDS = [(f.name, v) for f in dataclasses.fields(InfLlavaConfig)
               if typing.get_type_hints(InfLlavaConfig)[f.name] is bool for v in (False, True)]


@pytest.mark.parametrize("field,value", LITERAL_FIELDS + BOOL_FIELDS)
def test_every_value_of_every_field_builds_and_runs(field, value):
    """Smoke test per value (on both presets): square and non-square images, g² tokens each."""
    for preset in ("inf_llava", "inf_llava-paper"):
        c = resolve_method_config({"preset": preset, field: value})
        tokens, recs, _ = run(build_method(c, DIMS), [(84, 84), (90, 40), (30, 100)])
        assert [tuple(t.shape) for t in tokens] == [(G * G, DL)] * 3
        assert all(torch.isfinite(t).all() for t in tokens)


def test_invalid_values_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        cfg(fusion="concat")
    with pytest.raises(ValueError, match="at least 1"):
        cfg(fixed_grid=[0, 3])
    with pytest.raises(ValueError, match="does not divide"):
        build_method(cfg(heads=3), DIMS)
    with pytest.raises(ValueError, match="pool_grid"):
        build_method(cfg(pool_grid=2), DIMS)


# ---------------------------------------------------------------------- cropping
@pytest.mark.parametrize("size", [(50, 50), (400, 100), (100, 400), (1000, 700)])
def test_grid_rule_fixed_and_floor(size):
    assert spec_of(cfg(grid_rule="fixed")).record_for(size).grid == (3, 3)
    assert spec_of(cfg(grid_rule="fixed", fixed_grid=[2, 4])).record_for(size).grid == (2, 4)
    rec = spec_of(cfg(grid_rule="floor", max_grid=[4, 2])).record_for(size)
    assert rec.grid == floor_grid(size, S, 4, 2)
    assert rec.grid == (min(max(size[0] // S, 1), 4), min(max(size[1] // S, 1), 2))


@pytest.mark.parametrize("canvas", ["pad_square", "stretch", "fit", "center_crop"])
def test_canvas_reaches_the_processor(canvas):
    img = Image.new("RGB", (90, 30), (250, 0, 0))
    spec = spec_of(cfg(canvas=canvas))
    assert spec.canvas.value == canvas
    views, rec = HiResImageProcessor(spec).preprocess_one(img)
    top_left = views[0, :, 0, 0]  # first contiguous tile's corner: padding unless stretched
    red = (250 / 255 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert (abs(top_left[0].item() - red) < 0.05) == (canvas in ("stretch", "center_crop"))


@pytest.mark.parametrize("size", [(100, 60), (50, 130), (77, 77), (300, 41)])
def test_center_crop_canvas_is_the_clip_processors_resize_and_crop(size):
    """Official pre-training: CLIP's processor scaled to 3·S (shortest edge, then centre crop)."""
    import transformers

    from hires_vlm.imaging import ops

    clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    ref = clip(size={"shortest_edge": 3 * S}, crop_size={"height": 3 * S, "width": 3 * S},
               image_mean=CLIP_MEAN, image_std=CLIP_STD)
    img = noise_image(size, seed=size[0])
    want = ref(img, return_tensors="pt")["pixel_values"][0]
    views, rec = HiResImageProcessor(spec_of(cfg(canvas="center_crop"))).preprocess_one(img)
    got = ops.merge_tiles(views[rec.index("tile")], 3, 3)
    assert rec.content_box == (0, 0, 3 * S, 3 * S)
    assert torch.allclose(got, want, atol=1e-5)


def official_inference_views(img: Image.Image, s: int) -> torch.Tensor:
    """INF-LLaVA's official inference, transcribed (github WeihuangLin/INF-LLaVA at ea3e986):

    * ``INF_llava/mm_utils.py`` ``process_images`` (LLaVA's), ``image_aspect_ratio 'pad'``:
      ``expand2square(image, tuple(int(x * 255) for x in image_processor.image_mean))``;
    * ``INF_llava/model/builder.py`` L169-174 returns the hub's CLIP processor, 336 px (here s):
      resize of the shortest edge to s, bicubic, centre crop s, ``(x/255 - mean)/std``;
    * ``INF_llava/model/llava_arch.py`` ``encode_images`` L412-449:
      ``F.interpolate(images.float(), (3s, 3s), mode='bicubic', align_corners=False)``, then
      ``crop_pixels_N(x, 3)`` (block k = i·3 + j is ``x[..., s·i:s·(i+1), s·j:s·(j+1)]``),
      ``extract_pixels_N(x, 3)`` (sub-image k = h·3 + w is ``x[..., h::3, w::3]``) and the low-resolution
      view ``F.interpolate(x_3s, (s, s), mode='bicubic')``.
    """
    side = max(img.size)
    fill = tuple(int(x * 255) for x in CLIP_MEAN)
    square = Image.new("RGB", (side, side), fill)
    square.paste(img, ((side - img.size[0]) // 2, (side - img.size[1]) // 2))
    view = np.asarray(square.resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    x = ((torch.from_numpy(view) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).permute(2, 0, 1)[None]
    big = F.interpolate(x.float(), (3 * s, 3 * s), mode="bicubic", align_corners=False)
    local = [big[..., s * i:s * (i + 1), s * j:s * (j + 1)] for i in range(3) for j in range(3)]
    strided = [big[..., h::3, w::3] for h in range(3) for w in range(3)]
    low = F.interpolate(big, (s, s), mode="bicubic")
    return torch.cat(local + strided + [low], 0)


@pytest.mark.parametrize("size", [(50, 30), (30, 50), (28, 28), (300, 90), (7, 200)])
def test_canvas_source_view_is_the_official_inference_path(size):
    img = noise_image(size, seed=size[0] + size[1])
    views, rec = HiResImageProcessor(spec_of(cfg(canvas_source="view"))).preprocess_one(img)
    want = official_inference_views(img, S)
    assert views.shape == want.shape
    torch.testing.assert_close(views, want, atol=2e-5, rtol=0)
    full, _ = HiResImageProcessor(spec_of(cfg())).preprocess_one(img)
    assert not torch.allclose(full, views, atol=1e-3)  # the training path cuts the image itself


def test_canvas_and_canvas_source_are_the_run_time_fields():
    m = build_method(cfg(), DIMS)
    m.set_runtime(canvas="center_crop")
    assert m.cfg.canvas == "center_crop" and spec_of(m.cfg).canvas.value == "center_crop"
    m.set_runtime(canvas_source="view")
    assert spec_of(m.cfg).canvas_from_view
    with pytest.raises(ValueError, match="cannot change at run time"):
        m.set_runtime(heads=1)


@pytest.mark.parametrize("cropping,kinds", [("dual", ("tile", "strided", "lowres")), ("local", ("tile", "lowres")),
                                            ("global", ("strided", "lowres"))])
def test_cropping_decides_the_views(cropping, kinds):
    rec = spec_of(cfg(cropping=cropping)).record_for((200, 100))
    assert set(rec.views) == set(kinds)
    assert rec.views.count("tile") == (9 if "tile" in kinds else 0)
    assert rec.views.count("strided") == (9 if "strided" in kinds else 0)
    assert rec.num_views == 9 * (len(kinds) - 1) + 1


@pytest.mark.parametrize("lowres", ["canvas_bicubic", "antialias"])
def test_lowres_view_kind_and_dual_resolution_none_drops_it(lowres):
    spec = spec_of(cfg(lowres=lowres))
    assert spec.lowres.value == lowres
    img = noise_image((84, 84))
    views, rec = HiResImageProcessor(spec).preprocess_one(img)
    other = spec_of(cfg(lowres="antialias" if lowres == "canvas_bicubic" else "canvas_bicubic"))
    views2, _ = HiResImageProcessor(other).preprocess_one(img)
    low = rec.index("lowres")[0]
    assert torch.equal(views[:low], views2[:low]) and not torch.allclose(views[low], views2[low], atol=1e-3)
    assert "lowres" not in spec_of(cfg(dual_resolution="none")).record_for((84, 84)).views


def test_maps_are_the_tiles_put_back_by_position():
    """Features cut from a known local map (contiguous) and global map (strided) come back as those maps."""
    m = build_method(cfg(grid_rule="floor", max_grid=[3, 3]), DIMS)
    rec = spec_of(m.cfg).record_for((90, 60))  # 3 x 2 tiles
    cols, rows = rec.grid
    assert (cols, rows) == (3, 2)
    local, glob = torch.randn(1, rows * G, cols * G, DV), torch.randn(1, rows * G, cols * G, DV)
    feats = torch.zeros(rec.num_views, G * G, DV)
    feats[rec.index("tile")] = split_map(local, cols, rows, "contiguous")[0]
    feats[rec.index("strided")] = split_map(glob, cols, rows, "strided")[0]
    lm, gm = m.maps([feats], [rec], cols, rows)
    assert torch.equal(lm, local) and torch.equal(gm, glob)


# ---------------------------------------------------------------------- enhancement, fusion, pooling
@pytest.mark.parametrize("cropping", ["local", "global"])
def test_one_cropping_without_enhancement_pools_its_map(cropping):
    m = identity_method(cropping=cropping, enhancement="none", dual_resolution="none", pooling="avg")
    assert not hasattr(m, "fusion") and not hasattr(m, "dem")
    tokens, recs, feats = run(m, [(84, 84)])
    kind = "tile" if cropping == "local" else "strided"
    lm, gm = m.maps([feats], recs, 3, 3)
    fmap = lm if cropping == "local" else gm
    assert torch.equal(lm, gm)  # one cropping: its map plays both roles
    assert torch.allclose(tokens[0], pool_map(fmap, (G, G), "avg").reshape(G * G, DV), atol=1e-6)
    assert len(recs[0].index(kind)) == 9


@pytest.mark.parametrize("cropping", ["local", "global"])
def test_one_cropping_with_dem_attends_the_map_to_itself(cropping):
    """Table 6 "w/ DCM local/global": the DEM runs with the one map as queries and as keys (both directions)."""
    m = identity_method(cropping=cropping, dual_resolution="none")
    seen = []
    real = m.dem.attention.forward_windowed

    def spy(query_map, context_map, *args):
        seen.append(torch.equal(query_map, context_map))
        return real(query_map, context_map, *args)

    m.dem.attention.forward_windowed = spy
    run(m, [(84, 84)])
    assert seen == [True, True]  # both directions ran, each window attending to the same window of the same map
    rec = spec_of(m.cfg).record_for((84, 84))
    lm, gm = m.maps([torch.randn(rec.num_views, G * G, DV)], [rec], 3, 3)
    assert lm is gm


def test_enhancement_none_with_add_is_the_sum_of_the_maps():
    m = identity_method(enhancement="none", fusion="add", fusion_residual_norm=False, dual_resolution="none",
                        pooling="avg")
    tokens, recs, feats = run(m, [(84, 84)])
    lm, gm = m.maps([feats], recs, 3, 3)
    assert torch.allclose(tokens[0], pool_map(lm + gm, (G, G), "avg").reshape(-1, DV), atol=1e-5)


@pytest.mark.parametrize("enhancement", ["dem", "none"])
def test_enhancement_field(enhancement):
    m = build_method(cfg(enhancement=enhancement), DIMS)
    assert hasattr(m, "dem") == (enhancement == "dem")
    assert hasattr(m, "fusion")  # two croppings are always fused


@pytest.mark.parametrize("directions", ["both", "global_query", "local_query"])
def test_directions_field(directions):
    m = build_method(cfg(directions=directions, shared_attention=False), DIMS)
    names = {n.split(".")[1] for n, _ in m.named_parameters() if n.startswith("dem.")}
    want = {"both": {"global_attention", "local_attention"}, "global_query": {"global_attention"},
            "local_query": {"local_attention"}}[directions]
    assert names == want


@pytest.mark.parametrize("field,value", [("global_query_windows", "contiguous"), ("global_query_windows", "strided"),
                                         ("local_query_windows", "contiguous"), ("local_query_windows", "strided")])
def test_window_fields_reach_the_dem(field, value):
    m = build_method(cfg(**{field: value}), DIMS)
    assert getattr(m.dem, field) == value


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("heads", [1, 2, 8])
@pytest.mark.parametrize("block", ["residual_post_ln", "plain"])
@pytest.mark.parametrize("bias", [False, True])
def test_attention_fields(shared, heads, block, bias):
    m = build_method(cfg(shared_attention=shared, heads=heads, attention_block=block, attention_bias=bias), DIMS)
    attns = [m.dem.attention] if shared else [m.dem.global_attention, m.dem.local_attention]
    for a in attns:
        assert a.heads == heads and a.block == block
        assert hasattr(a, "out_proj") == hasattr(a, "norm") == (block == "residual_post_ln")
        assert (a.q_proj.bias is not None) == bias


@pytest.mark.parametrize("fusion", ["mlp_concat", "linear_concat", "conv3x3", "multiply", "weighted_add", "max",
                                    "add"])
@pytest.mark.parametrize("order", ["local_first", "global_first"])
@pytest.mark.parametrize("residual_norm", [False, True])
def test_fusion_fields(fusion, order, residual_norm):
    m = build_method(cfg(fusion=fusion, fusion_order=order, fusion_residual_norm=residual_norm,
                         fusion_bottleneck=4), DIMS)
    assert (m.fusion.kind, m.fusion.order, m.fusion.residual_norm) == (fusion, order, residual_norm)
    if fusion == "mlp_concat":
        assert m.fusion.local_mlp[0].out_features == DV // 4


@pytest.mark.parametrize("pooling", ["bilinear", "avg"])
def test_pooling_field(pooling):
    m = identity_method(pooling=pooling, dual_resolution="none")
    tokens, recs, feats = run(m, [(84, 84)])
    lm, gm = m.maps([feats], recs, 3, 3)
    fused = m.fuse_maps(lm, gm, 3, 3)
    want = fused[:, 1::3, 1::3] if pooling == "bilinear" else pool_map(fused, (G, G), "avg")
    assert torch.allclose(tokens[0], want.reshape(-1, DV), atol=1e-5)


def test_pool_grid_sets_the_token_count():
    c = cfg(pool_grid=2, dual_resolution="none")
    m = build_method(c, DIMS)
    tokens, recs, _ = run(m, [(84, 84), (40, 90)])
    assert [t.shape[0] for t in tokens] == [4, 4] == [m.max_visual_tokens(r) for r in recs]
    assert c.max_visual_tokens(recs[0], 24) == 4 and cfg().max_visual_tokens(recs[0], 24) == 576


@pytest.mark.parametrize("mode", ["mean", "add", "none"])
def test_dual_resolution_combines_before_the_projector(mode):
    m = identity_method(dual_resolution=mode)
    tokens, recs, feats = run(m, [(84, 84)])
    lm, gm = m.maps([feats], recs, 3, 3)
    pooled = pool_map(m.fuse_maps(lm, gm, 3, 3), (G, G), "bilinear").reshape(-1, DV)
    if mode == "none":
        assert torch.allclose(tokens[0], pooled, atol=1e-6)
        return
    low = feats[recs[0].index("lowres")[0]]
    want = low + pooled if mode == "add" else torch.stack([low, pooled], -1).mean(-1)
    assert torch.allclose(tokens[0], want, atol=1e-6)


# ---------------------------------------------------------------------- batching
def test_a_batch_equals_each_image_alone():
    """Images are grouped by grid and batched; that must not mix them up."""
    m = build_method(cfg(grid_rule="floor", max_grid=[3, 3]), DIMS).eval()
    sizes = [(84, 84), (60, 30), (84, 84), (30, 90)]
    tokens, recs, feats = run(m, sizes)
    per = m.split(feats, recs)
    for t, f, r in zip(tokens, per, recs):
        assert torch.allclose(t, m(f, [r]).tokens[0], atol=1e-5)


@pytest.mark.parametrize("preset,views", [("inf_llava", [19, 19]), ("inf_llava-paper", [5, 7])])
def test_all_views_go_through_the_tower_in_one_forward(preset, views):
    model, proc = build_tiny(preset)
    model.eval()
    imgs = [Image.new("RGB", (300, 200), (200, 10, 10)), Image.new("RGB", (100, 350), (0, 90, 0))]
    batch = proc(["<image>\nWhat colour?", "<image>\nWhat colour?"], imgs)
    assert batch["pixel_values"].shape[0] == sum(views)
    assert [r.num_views for r in model.records_for(batch["image_sizes"])] == views
    model.vision_tower.calls = 0
    with torch.no_grad():
        out = model(**batch)
    assert model.vision_tower.calls == 1
    assert out.visual_tokens.tolist() == [64, 64] == [model.max_visual_tokens(s) for s in ((300, 200), (100, 350))]


# ---------------------------------------------------------------------- training / persistence
def test_stage_prefixes_train_exactly_the_connector_parts():
    from hires_vlm.train.runner import set_trainable

    model, proc = build_tiny("inf_llava")
    prefixes = {"connector.dem": 1e-3, "connector.fusion": 1e-3, "connector.projector": 1e-3}
    lrs = set_trainable(model, prefixes)
    assert {n.split(".")[1] for n in lrs} == {"dem", "fusion", "projector"}
    batch = proc(["<image>\nWhat colour?"], [noise_image((200, 150))])
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model.train()
    model(**batch).loss.backward()
    for n, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == any(n.startswith(k + ".") for k in prefixes), n


@pytest.mark.parametrize("preset", ["inf_llava", "inf_llava-paper"])
def test_save_and_load_give_identical_outputs(tmp_path, preset):
    from hires_vlm.model import HiResVLM, HiResVLMProcessor

    model, proc = build_tiny(preset, seed=3)
    model.eval()
    batch = proc(["<image>\nWhat is it?"], [noise_image((250, 180))])
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = HiResVLM.from_pretrained(tmp_path).eval()
    batch2 = HiResVLMProcessor.from_pretrained(tmp_path)(["<image>\nWhat is it?"],
                                                        [noise_image((250, 180))])
    with torch.no_grad():
        after = loaded(**batch2).logits
    assert loaded.config.method == model.config.method
    assert torch.equal(before, after)
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0 if k.startswith("connector."))


# ---------------------------------------------------------------------- official code, step by step
def _reference_official(sd, views, g, heads):
    """The official ``encode_images`` + ``SpatialEmbed`` for N = 3, written as plain loops from the
    facts in shared/reference/inf-llava-official-code.md (official parameter names in ``sd``)."""
    n = 3
    b, _, d = views[0].shape
    lin = lambda x, name: x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]  # noqa: E731
    att = "model.spatial_embed.attention"

    def mha(q, kv):  # Annotated-Transformer block: shared by both directions
        dh = d // heads
        split = lambda x: x.view(b, -1, heads, dh).transpose(1, 2)  # noqa: E731
        Q = split(lin(q, f"{att}.linears.0"))
        K, V = split(lin(kv, f"{att}.linears.1")), split(lin(kv, f"{att}.linears.2"))
        x = torch.softmax(Q @ K.transpose(-1, -2) / dh ** 0.5, -1) @ V
        x = lin(x.transpose(1, 2).reshape(b, -1, d), f"{att}.linears.3") + q
        return F.layer_norm(x, (d,), sd[f"{att}.ln.weight"], sd[f"{att}.ln.bias"])

    feats = [v.reshape(b, g, g, d) for v in views]
    crop, stride = feats[:n * n], feats[n * n:2 * n * n]
    local = torch.cat([torch.cat(crop[i * n:(i + 1) * n], dim=2) for i in range(n)], dim=1)
    glob = torch.zeros(b, n * g, n * g, d)
    for h in range(n):
        for w in range(n):
            glob[:, h::n, w::n] = stride[h * n + w]
    # "Global as Query": contiguous windows of both maps
    enh_g = torch.zeros_like(glob)
    for i in range(n):
        for j in range(n):
            win = (slice(None), slice(i * g, (i + 1) * g), slice(j * g, (j + 1) * g))
            enh_g[win] = mha(glob[win].reshape(b, g * g, d), local[win].reshape(b, g * g, d)).reshape(b, g, g, d)
    # "Local as Query": stride-3 sub-grids of both maps
    enh_l = torch.zeros_like(local)
    for h in range(n):
        for w in range(n):
            win = (slice(None), slice(h, None, n), slice(w, None, n))
            enh_l[win] = mha(local[win].reshape(b, g * g, d), glob[win].reshape(b, g * g, d)).reshape(b, g, g, d)
    mlp = lambda x, name: lin(F.gelu(lin(x, f"{name}.0")), f"{name}.2")  # noqa: E731
    se = "model.spatial_embed"
    fused = torch.cat([mlp(enh_l, f"{se}.ffn_crop"), mlp(enh_g, f"{se}.ffn_stride")], -1)
    fused = F.layer_norm(fused + enh_g + enh_l, (d,), sd[f"{se}.ln_fuse.weight"], sd[f"{se}.ln_fuse.bias"])
    out = F.interpolate(fused.permute(0, 3, 1, 2), size=(g, g), mode="bilinear", align_corners=False)
    out = out.permute(0, 2, 3, 1).reshape(b, g * g, d)
    x = torch.mean(torch.stack([views[-1], out], -1), -1)
    return lin(F.gelu(lin(x, "model.mm_projector.0")), "model.mm_projector.2")


def test_official_preset_matches_the_official_computation_with_official_weights():
    from hires_vlm.methods.inf_llava import official_key_map

    method = build_method(cfg(), DIMS).eval()
    ours = {f"connector.{k}": v for k, v in method.state_dict().items()}
    keys = official_key_map()
    assert set(keys.values()) == set(ours)  # every parameter has an official name, and no more
    torch.manual_seed(1)
    official = {k: torch.randn_like(ours[v]) * 0.3 for k, v in keys.items()}
    method.load_state_dict({keys[k].removeprefix("connector."): v for k, v in official.items()})
    rec = spec_of(method.cfg).record_for((200, 120))
    assert rec.views == ("tile",) * 9 + ("strided",) * 9 + ("lowres",)  # the official 19 views, in order
    views = torch.randn(2, 19, G * G, DV)
    with torch.no_grad():
        got = method(views.reshape(-1, G * G, DV), [rec, rec]).tokens
        want = _reference_official(official, list(views.unbind(1)), G, heads=8)
    assert torch.allclose(torch.stack(got), want, atol=1e-5)


def test_model_initialisation_of_the_weighted_add_fusion():
    """The only raw parameter of the connector is initialised by the model's init hook (0.5, 0.5)."""
    model, _ = build_tiny({"preset": "inf_llava-paper", "fusion": "weighted_add"})
    assert model.connector.fusion.weights.tolist() == [0.5, 0.5]
