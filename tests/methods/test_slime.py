"""SliME method: every config field value, the token layout, token counts, routing inside the
model (text scope, batching of variable counts), presets, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from torch import nn

from hires_vlm.connectors import RouterSettings, route, tiles_to_map
from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, grids
from hires_vlm.methods import Dims, TextContext, build_method, resolve_method_config
from hires_vlm.methods.slime import SlimeConfig

DIMS = Dims(vision_dim=64, text_dim=128, tile_size=112, grid=8)
# gate_bypass never: this 8×8 tower would otherwise skip the mixture (official: 576 tokens only).
TINY = {"local_queries": 16, "resampler_heads": 4, "separator_token_id": 3, "gate_bypass": "never"}


def make(preset="slime", **over):
    torch.manual_seed(0)
    cfg = resolve_method_config({"preset": preset, **TINY, **over})
    return build_method(cfg, DIMS).eval()


def inputs(method, sizes=((300, 200),), text_len=(6,), seed=0):
    g = torch.Generator().manual_seed(seed)
    spec = method.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    records = [spec.record_for(s) for s in sizes]
    feats = torch.randn(sum(r.num_views for r in records), 64, 64, generator=g)
    emb = nn.Embedding(50, 128)
    texts = [torch.randn(n, 128, generator=g) for n in text_len]
    return feats, records, TextContext(embeddings=texts, embed_tokens=emb)


# ---------------------------------------------------------------------------------- presets
def test_presets_official_and_paper_values():
    off, pap = resolve_method_config("slime"), resolve_method_config("slime-paper")
    # Official values, from github yfzhang114/SliME: router_text 'all' — llava_arch.py
    # get_pure_text_embedding embeds every non-image token of input_ids (answers included, the label
    # masking line commented out); gate_bypass 'official' — builder.py GatedBlock.forward returns
    # self.projection(x) unless x.shape[1] == 576.
    assert (off.grid_rule, off.global_view, off.gate_noise, off.router_aggregate, off.router_cutoff,
            off.router_text, off.separator, off.router_pre_softmax, off.gate_bypass) == (
        "uhd", "squash", "official", "sum", "official", "all", "token", None, "official")
    assert (pap.grid_rule, pap.global_view, pap.gate_noise, pap.router_aggregate, pap.router_cutoff,
            pap.router_text, pap.separator, pap.gate_bypass) == (
        "slime_paper", "pad", "paper", "mean", "reach", "prompt", "learned", "never")
    release = resolve_method_config("slime-release")
    assert release.router_pre_softmax == 0.5 and release.router_text == "all" and release.gate_bypass == "official"
    for cfg in (off, pap):
        assert (cfg.local_queries, cfg.gamma, cfg.router_noise_std, cfg.router_temperature) == (144, 0.95, 0.1, 1.0)


@pytest.mark.parametrize("grid,bypass,mixed", [(8, "official", False), (8, "never", True), (24, "official", True)])
def test_official_gate_mixes_only_576_token_global_views(grid, bypass, mixed):
    """builder.py GatedBlock.forward: ``if x.shape[1] != 576: return self.projection(x)``."""
    torch.manual_seed(0)
    dims = Dims(vision_dim=64, text_dim=128, tile_size=grid * 14, grid=grid)
    cfg = resolve_method_config({"preset": "slime", **TINY, "gate_bypass": bypass, "branches": "global"})
    m = build_method(cfg, dims).eval()
    spec = cfg.imaging_spec(dims.tile_size, CLIP_MEAN, CLIP_STD)
    rec = spec.record_for((300, 200))
    feats = torch.randn(rec.num_views, grid * grid, 64)
    out = m(feats, [rec], None)
    w = out.aux["gate_weights"][0]
    assert torch.equal(w[:, 0] == 1, torch.full((grid * grid,), not mixed))
    if not mixed:
        torch.testing.assert_close(out.tokens[0], m.projector(feats[rec.index("global")[0]]))


def test_literal_fields_are_closed_sets():
    lits = {f.name for f in dataclasses.fields(SlimeConfig) if "Literal" in str(f.type)}
    assert lits >= {"grid_rule", "global_view", "gate_noise", "gate_mode", "router_aggregate", "router_cutoff",
                    "router_text", "separator", "branches", "projector", "gate_bypass"}
    for name in lits:
        with pytest.raises(ValueError, match="not valid"):
            SlimeConfig(**{name: "nonsense"})


@pytest.mark.parametrize("bad", [{"local_queries": 15}, {"gamma": 0.0}, {"gamma": 1.2}, {"max_tiles": 1},
                                 {"resampler_heads": 0}, {"separator_token_id": -1}, {"router_temperature": 0.0}])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        SlimeConfig(**bad)


def test_only_runtime_fields_change_at_run_time():
    m = make()
    m.set_runtime(gamma=0.5, branches="local", gate_mode="mlp", router_text="prompt", router_noise_std=0.0,
                  router_temperature=2.0)
    assert m.cfg.gamma == 0.5 and m.cfg.branches == "local"
    with pytest.raises(ValueError, match="cannot change at run time"):
        m.set_runtime(local_queries=4)


# ---------------------------------------------------------------------------------- views
@pytest.mark.parametrize("rule", ["uhd", "slime_paper"])
@pytest.mark.parametrize("size", [(112, 112), (300, 200), (1000, 150), (224, 672), (700, 700)])
def test_grid_rule(rule, size):
    cfg = resolve_method_config({"preset": "slime", "grid_rule": rule, "max_tiles": 5, "max_cols": 4, "max_rows": 5})
    rec = cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD).record_for(size)
    expect = grids.uhd_grid(size, 112, 5) if rule == "uhd" else grids.slime_paper_grid(size, 112, 4, 5)
    assert rec.grid == expect
    assert rec.views == ("global",) + ("tile",) * (expect[0] * expect[1])


def test_uhd_gives_two_to_seven_tiles_and_paper_up_to_36():
    uhd = resolve_method_config("slime").imaging_spec(336, CLIP_MEAN, CLIP_STD)
    pap = resolve_method_config("slime-paper").imaging_spec(336, CLIP_MEAN, CLIP_STD)
    assert uhd.record_for((336, 336)).grid == (1, 2)
    assert pap.record_for((336, 336)).grid == (1, 1)
    assert uhd.record_for((2352, 336)).grid == (7, 1)
    assert pap.record_for((4000, 4000)).grid == (6, 6)


@pytest.mark.parametrize("view", ["squash", "pad"])
def test_global_view(view):
    from hires_vlm.imaging import HiResImageProcessor

    cfg = resolve_method_config({"preset": "slime", "global_view": view})
    spec = cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    img = Image.new("RGB", (224, 112), (255, 0, 0))
    views, rec = HiResImageProcessor(spec).preprocess_one(img)
    top_row = views[rec.index("global")[0], :, 0]  # first pixel row of the global view
    red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    if view == "squash":
        torch.testing.assert_close(top_row[0], torch.full_like(top_row[0], red))
    else:  # padded with the mean colour → normalised 0
        torch.testing.assert_close(top_row, torch.zeros_like(top_row), atol=2e-2, rtol=0)
    tiles = views[rec.index("tile")]
    assert tiles.shape[0] == rec.grid[0] * rec.grid[1]  # local tiles: fit, pad black, row-major


# ---------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("separator", ["token", "learned", "none"])
def test_layout_global_separator_local_raster(separator):
    m = make(separator=separator, gamma=1.0)
    feats, recs, text = inputs(m, sizes=[(300, 200)])
    out = m(feats, recs, text)
    rec = recs[0]
    cols, rows = rec.grid
    glob = feats[rec.index("global")]
    g_ref, _ = m.mixture(glob, m.projector, "mix")
    tiles = m.compress_tiles(feats[rec.index("tile")])
    raster = tiles_to_map(tiles, cols, rows).reshape(-1, 128)
    parts = [g_ref[0]]
    if separator == "token":
        parts.append(text.embed_tokens.weight[3:4])
    elif separator == "learned":
        parts.append(m.separator[None])
    parts.append(raster)
    torch.testing.assert_close(out.tokens[0], torch.cat(parts))
    assert out.tokens[0].shape[0] == m.max_visual_tokens(rec) == 64 + (separator != "none") + cols * rows * 16
    assert out.aux["local_grid"] == [(rows * 4, cols * 4)]
    assert hasattr(m, "separator") == (separator == "learned")


def test_raster_is_over_the_whole_grid():
    """Token (r, c) of tile (i, j) lands at raster row i·q + r, column j·q + c."""
    t = torch.arange(6 * 16).reshape(6, 16, 1).float()  # 3 columns × 2 rows of 4×4 tiles
    fmap = tiles_to_map(t, 3, 2)
    assert fmap.shape[:2] == (8, 12)
    for i in range(2):
        for j in range(3):
            for r in range(4):
                for c in range(4):
                    assert fmap[i * 4 + r, j * 4 + c, 0] == (i * 3 + j) * 16 + r * 4 + c


def test_separator_token_needs_an_id_inside_the_vocabulary():
    m = make(separator_token_id=None)
    feats, recs, text = inputs(m)
    with pytest.raises(ValueError, match="separator_token_id is not set"):
        m(feats, recs, text)
    m = make(separator_token_id=500)
    with pytest.raises(ValueError, match="outside the LM's vocabulary"):
        m(feats, recs, text)


def test_bind_tokenizer_takes_the_comma():
    from hires_vlm.text import build_bpe_tokenizer

    tok = build_bpe_tokenizer(["a, b"])
    cfg = resolve_method_config("slime").bind_tokenizer(tok)
    assert cfg.separator_token_id == tok(",", add_special_tokens=False)["input_ids"][-1]
    assert tok.decode([cfg.separator_token_id]) == ","
    fixed = resolve_method_config({"preset": "slime", "separator_token_id": 11}).bind_tokenizer(tok)
    assert fixed.separator_token_id == 11
    assert resolve_method_config("slime-paper").bind_tokenizer(tok).separator_token_id is None


@pytest.mark.parametrize("branches", ["both", "global", "local"])
def test_branches(branches):
    m = make(branches=branches, gamma=1.0)
    spec = m.cfg.imaging_spec(112, CLIP_MEAN, CLIP_STD)
    rec = spec.record_for((300, 200))
    n_tiles = 6
    assert rec.views.count("global") == (branches != "local")
    assert rec.views.count("tile") == (0 if branches == "global" else n_tiles)
    feats, recs, text = inputs(m, sizes=[(300, 200)])
    out = m(feats, recs, text)
    n = {"both": 64 + 1 + n_tiles * 16, "global": 64, "local": n_tiles * 16}[branches]
    assert out.tokens[0].shape == (n, 128) and m.max_visual_tokens(recs[0]) == n
    assert ("gate_weights" in out.aux) == (branches != "local")
    assert ("router_keep" in out.aux) == (branches != "global")


@pytest.mark.parametrize("mode", ["mix", "mlp", "resampler"])
def test_gate_mode(mode):
    m = make(gate_mode=mode, gamma=1.0)
    feats, recs, text = inputs(m)
    out = m(feats, recs, text)
    glob = feats[recs[0].index("global")]
    fm, fq = m.projector(glob), m.projector(m.mixture.resampler(glob))
    expect = {"mix": 0.5 * fm + 0.5 * fq, "mlp": fm, "resampler": fq}[mode]
    torch.testing.assert_close(out.tokens[0][:64], expect[0])
    w = out.aux["gate_weights"][0]
    assert w.shape == (64, 2)
    torch.testing.assert_close(w[:, 0], torch.full((64,), {"mix": 0.5, "mlp": 1.0, "resampler": 0.0}[mode]))


@pytest.mark.parametrize("noise", ["official", "paper", "none"])
def test_gate_noise_field_reaches_the_gate(noise):
    m = make(gate_noise=noise)
    assert m.mixture.gate.noise == noise
    m.train()
    feats, recs, text = inputs(m)
    torch.manual_seed(0)
    w = m(feats, recs, text).aux["gate_weights"][0]
    assert (w.std() > 0) == (noise != "none")  # zero-init gate: only noise moves it off 0.5


@pytest.mark.parametrize("heads,expect", [(None, 1), (4, 4), (2, 2)])
def test_resampler_heads(heads, expect):
    m = make(resampler_heads=heads)
    assert m.mixture.resampler.attn.num_heads == expect == m.local_compressor.attn.num_heads
    assert m.mixture.resampler.num_queries == 64 and m.local_compressor.num_queries == 16


@pytest.mark.parametrize("q", [4, 16, 64])
def test_local_queries(q):
    m = make(local_queries=q, gamma=1.0)
    feats, recs, text = inputs(m)
    out = m(feats, recs, text)
    side = int(q ** 0.5)
    cols, rows = recs[0].grid
    assert out.aux["local_grid"] == [(rows * side, cols * side)]
    assert out.aux["local_tokens"] == [cols * rows * q]


@pytest.mark.parametrize("over", [
    {"router_aggregate": "sum", "router_cutoff": "official"},
    {"router_aggregate": "mean", "router_cutoff": "reach"},
    {"router_aggregate": "mean", "router_cutoff": "within", "router_temperature": 0.01},
    {"router_aggregate": "sum", "router_cutoff": "official", "router_pre_softmax": 0.5},
])
@pytest.mark.parametrize("gamma", [0.5, 0.95])
def test_router_fields_drive_the_selection(over, gamma):
    m = make(gamma=gamma, **over)
    feats, recs, text = inputs(m, text_len=(9,))
    out = m(feats, recs, text)
    rec = recs[0]
    raster = tiles_to_map(m.compress_tiles(feats[rec.index("tile")]), *rec.grid).reshape(-1, 128)
    settings = RouterSettings(gamma, over["router_aggregate"], over.get("router_temperature", 1.0), 0.1,
                              over.get("router_pre_softmax"), over["router_cutoff"])
    ref = route(raster, text.embeddings[0], settings)
    assert torch.equal(out.aux["router_keep"][0], ref.indices)
    torch.testing.assert_close(out.tokens[0][65:], raster[ref.indices])
    assert out.tokens[0].shape[0] == 65 + ref.indices.numel() <= m.max_visual_tokens(rec)


def test_gamma_one_keeps_all_local_tokens_even_in_training():
    m = make(gamma=1.0).train()
    feats, recs, text = inputs(m)
    out = m(feats, recs, text)
    assert out.tokens[0].shape[0] == m.max_visual_tokens(recs[0])


def test_router_noise_std_and_eval_determinism():
    m = make(gamma=0.6, router_aggregate="mean")
    feats, recs, text = inputs(m)
    a = m(feats, recs, text).aux["router_keep"][0]
    assert torch.equal(a, m(feats, recs, text).aux["router_keep"][0])
    m.train()
    torch.manual_seed(1)
    keeps = {tuple(m(feats, recs, text).aux["router_keep"][0].tolist()) for _ in range(4)}
    assert len(keeps) > 1
    m.set_runtime(router_noise_std=0.0)
    assert torch.equal(m(feats, recs, text).aux["router_keep"][0], a)


def test_gradient_flows_to_every_connector_part():
    m = make(separator="learned", gate_noise="paper").train()
    feats, recs, text = inputs(m)
    out = m(feats, recs, text)
    torch.cat(out.tokens).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name


def test_several_images_in_one_call():
    m = make(gamma=0.9)
    sizes = [(300, 200), (112, 112), (500, 120)]
    feats, recs, text = inputs(m, sizes=sizes, text_len=(3, 5, 8))
    out = m(feats, recs, text)
    assert len(out.tokens) == 3
    for k in range(len(sizes)):
        start = sum(r.num_views for r in recs[:k])
        single = m(feats[start:start + recs[k].num_views], [recs[k]],
                   TextContext([text.embeddings[k]], text.embed_tokens))
        torch.testing.assert_close(out.tokens[k], single.tokens[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def tiny_slime():
    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny({"preset": "slime", "local_queries": 16, "resampler_heads": 4, "gate_bypass": "never"},
                             corpus=["What colour is the circle? red green blue, a b"], text_layers=1,
                             vision_layers=1, vocab_size=300)
    return model.eval(), proc


def _images():
    return [Image.new("RGB", (240, 160), "red"), Image.new("RGB", (120, 120), "blue")]


@pytest.mark.parametrize("scope", ["prompt", "all"])
def test_router_text_scope(tiny_slime, scope):
    model, proc = tiny_slime
    from hires_vlm.text import ConversationEncoder

    model.set_method_runtime(router_text=scope)
    enc = ConversationEncoder(proc.tokenizer, proc.template, model.config.image_token_id, 2048)
    batch = proc.image_processor([_images()[0]])
    count = model.max_visual_tokens((240, 160))
    e = enc.encode([{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                    {"from": "gpt", "value": "red and blue"}], [count])
    ids = torch.tensor([e.input_ids])
    labels = torch.tensor([e.labels])
    seen = {}
    orig = model.connector.forward

    def spy(features, records, text=None):
        seen["L"] = text.embeddings[0].shape[0]
        return orig(features, records, text)

    model.connector.forward = spy
    try:
        model.train()
        model(input_ids=ids, labels=labels, pixel_values=batch.pixel_values,
              image_sizes=torch.tensor([[240, 160]]))
    finally:
        model.connector.forward = orig
        model.eval()
        model.set_method_runtime(router_text="all")
    n_text = int((ids != model.config.image_token_id).sum())
    n_prompt = int(((labels == -100) & (ids != model.config.image_token_id)).sum())
    assert seen["L"] == (n_prompt if scope == "prompt" else n_text)
    assert n_prompt < n_text


def test_variable_token_counts_are_batched(tiny_slime):
    """Two samples whose images give different counts after routing: one padded batch gives each
    sample the logits it gets alone."""
    model, proc = tiny_slime
    prompts = ["What colour is the circle?", "Is it red, green or blue?"]
    imgs = _images()
    both = proc(prompts, imgs)
    with torch.no_grad():
        out = model(**both)
    counts = out.visual_tokens.tolist()
    assert counts[0] != counts[1]
    assert all(c <= model.max_visual_tokens(im.size) for c, im in zip(counts, imgs))
    for i in range(2):
        one = proc([prompts[i]], [imgs[i]])
        with torch.no_grad():
            single = model(**one)
        mine = out.logits[i][out.attention_mask[i].bool()]  # the batch is re-padded after expansion
        assert mine.shape == single.logits[0].shape
        torch.testing.assert_close(mine, single.logits[0], atol=2e-4, rtol=1e-3)
    gen = model.generate(**both, max_new_tokens=2, do_sample=False)
    assert gen.shape[0] == 2


def test_save_load_round_trip_gives_identical_outputs(tiny_slime, tmp_path):
    from hires_vlm.model import HiResVLM

    model, proc = tiny_slime
    with torch.no_grad():  # a trained-looking gate, so that a re-initialisation on load would show
        model.connector.mixture.gate.w_gate.normal_()
    inp = proc(["What colour is the circle?"] * 2, _images())
    with torch.no_grad():
        ref = model(**inp)
    model.save_pretrained(tmp_path)
    loaded = HiResVLM.from_pretrained(tmp_path).eval()
    assert loaded.connector.cfg == model.connector.cfg
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        got = loaded(**inp)
    assert torch.equal(got.visual_tokens, ref.visual_tokens)
    torch.testing.assert_close(got.logits, ref.logits, atol=0, rtol=0)
    for a, b in zip(got.visual_aux["router_keep"], ref.visual_aux["router_keep"]):
        assert torch.equal(a, b)


def test_a_stored_position_table_is_kept_and_an_older_save_without_one_still_loads(tiny_slime, tmp_path):
    from safetensors.torch import load_file, save_file

    from hires_vlm.connectors import sincos_2d
    from hires_vlm.model import HiResVLM

    model, proc = tiny_slime
    model.save_pretrained(tmp_path / "a")
    state = load_file(str(tmp_path / "a" / "model.safetensors"))
    key = "connector.local_compressor.pos_table"
    state[key] = state[key] + 0.5  # an imported checkpoint's own table survives save and load
    save_file(state, str(tmp_path / "a" / "model.safetensors"), metadata={"format": "pt"})
    loaded = HiResVLM.from_pretrained(tmp_path / "a")
    assert torch.equal(loaded.connector.local_compressor.pos_table, state[key])
    for k in [k for k in state if k.endswith("pos_table")]:  # saved before the buffer existed
        del state[k]
    save_file(state, str(tmp_path / "a" / "model.safetensors"), metadata={"format": "pt"})
    old = HiResVLM.from_pretrained(tmp_path / "a")
    table = old.connector.local_compressor.pos_table
    assert torch.equal(table, sincos_2d(table.shape[1], old.connector.local_compressor.q_grid))


def test_build_from_local_parts_fills_the_comma_separator(tmp_path):
    """``hires-vlm build --method slime``: the separator is the ',' of the LM's own tokenizer."""
    from hires_vlm.build import build_from_parts
    from tiny_parts import save_tiny_parts

    torch.manual_seed(0)
    save_tiny_parts(tmp_path, corpus=["a, b"], template="llama3", vision_layers=2)
    model, proc = build_from_parts(str(tmp_path / "clip"), str(tmp_path / "lm"),
                                   {"preset": "slime", "local_queries": 4, "resampler_heads": 2})
    sep = model.connector.cfg.separator_token_id
    assert proc.tokenizer.decode([sep]) == ","
    assert torch.all(model.connector.mixture.gate.w_gate == 0)
    inp = proc(["What is it?"], [Image.new("RGB", (120, 60), "red")])
    with torch.no_grad():
        out = model.eval()(**inp)
    n_tiles = model.image_processor.spec.record_for((120, 60)).views.count("tile")
    assert 16 + 1 < out.visual_tokens.item() <= 16 + 1 + 4 * n_tiles == model.max_visual_tokens((120, 60))
