"""The dual-perspective enhancement module: the attention formulas, which tokens each window
attends to (hand-built maps whose tokens carry their coordinates), no attention over the whole
map, and the official/paper switches."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors import DualPerspectiveEnhancement, WindowCrossAttention
from hires_vlm.connectors import dem as dem_module

KINDS = ("contiguous", "strided")
GRIDS = [(1, 1), (2, 2), (3, 3), (3, 2), (1, 4), (4, 1)]  # (cols, rows)


def window_cells(kind, i, j, cols, rows, g):
    if kind == "contiguous":
        return {(y, x) for y in range(i * g, (i + 1) * g) for x in range(j * g, (j + 1) * g)}
    return {(y, x) for y in range(i, rows * g, rows) for x in range(j, cols * g, cols)}


def tagged_map(b, rows, cols, g, tag):
    """Channels: (tag, image, row, column) — what a window sees can be read off its tokens."""
    h, w = rows * g, cols * g
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = torch.zeros(b, h, w, 4)
    m[..., 0] = tag
    m[..., 1] = torch.arange(b).view(b, 1, 1)
    m[..., 2], m[..., 3] = ys, xs
    return m


def test_single_head_plain_is_the_paper_formula():
    torch.manual_seed(0)
    d = 16
    attn = WindowCrossAttention(d, heads=1, bias=False, block="plain")
    q, c = torch.randn(5, 7, d), torch.randn(5, 9, d)
    wq, wk, wv = attn.q_proj.weight.T, attn.k_proj.weight.T, attn.v_proj.weight.T
    a = torch.softmax((q @ wq) @ (c @ wk).transpose(1, 2) / math.sqrt(d), dim=-1)
    assert torch.allclose(attn(q, c), a @ c @ wv, atol=1e-5)
    assert not any("bias" in n for n, _ in attn.named_parameters())


def test_official_block_is_multi_head_with_output_projection_and_post_ln_residual():
    torch.manual_seed(0)
    d, h = 16, 4
    attn = WindowCrossAttention(d, heads=h, bias=True, block="residual_post_ln")
    q, c = torch.randn(3, 6, d), torch.randn(3, 6, d)
    dh = d // h
    Q = attn.q_proj(q).view(3, 6, h, dh).transpose(1, 2)
    K = attn.k_proj(c).view(3, 6, h, dh).transpose(1, 2)
    V = attn.v_proj(c).view(3, 6, h, dh).transpose(1, 2)
    x = torch.softmax(Q @ K.transpose(-1, -2) / math.sqrt(dh), -1) @ V
    x = x.transpose(1, 2).reshape(3, 6, d)
    want = F.layer_norm(attn.out_proj(x) + q, (d,), attn.norm.weight, attn.norm.bias)
    assert torch.allclose(attn(q, c), want, atol=1e-5)
    assert {n.split(".")[0] for n, _ in attn.named_parameters()} == {"q_proj", "k_proj", "v_proj", "out_proj", "norm"}


def test_heads_must_divide_the_width_and_change_the_result():
    with pytest.raises(ValueError, match="do not divide"):
        WindowCrossAttention(10, heads=3)
    torch.manual_seed(0)
    one = WindowCrossAttention(8, heads=1)
    two = WindowCrossAttention(8, heads=2)
    two.load_state_dict(one.state_dict())
    q, c = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert not torch.allclose(one(q, c), two(q, c))


def identity_attention(attn):
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            lin.weight.copy_(torch.eye(attn.dim))


@pytest.mark.parametrize("cols,rows", GRIDS)
@pytest.mark.parametrize("gq,lq", list(itertools.product(KINDS, KINDS)))
def test_each_window_sees_exactly_the_specified_tokens(cols, rows, gq, lq, monkeypatch):
    """Record what every attention kernel call gets (identity projections, so the tokens still carry
    their coordinates): window k of the query map and window k of the other map, both of the
    configured kind, as one batch — for both directions."""
    g, b = 3, 2
    dem = DualPerspectiveEnhancement(4, 1, shared=False, global_query_windows=gq, local_query_windows=lq)
    identity_attention(dem.global_attention)
    identity_attention(dem.local_attention)
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((q[:, 0].detach(), k[:, 0].detach()))  # one head: [b·n x g² x 4]
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(dem_module.F, "scaled_dot_product_attention", spy)
    local_map, global_map = tagged_map(b, rows, cols, g, 0.0), tagged_map(b, rows, cols, g, 1.0)
    dem(local_map, global_map, cols, rows)
    assert len(calls) == 2  # global-as-query first, then local-as-query
    for (q, c), kind, q_tag, c_tag in zip(calls, (gq, lq), (1.0, 0.0), (0.0, 1.0)):
        n = cols * rows
        assert q.shape == (b * n, g * g, 4) and c.shape == (b * n, g * g, 4)  # windows are the batch
        for img in range(b):
            for i in range(rows):
                for j in range(cols):
                    k = img * n + i * cols + j
                    want = window_cells(kind, i, j, cols, rows, g)
                    for toks, tag in ((q[k], q_tag), (c[k], c_tag)):
                        assert (toks[:, 0] == tag).all() and (toks[:, 1] == img).all()
                        assert {(int(y), int(x)) for y, x in toks[:, 2:].tolist()} == want


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block,heads,bias", [("plain", 1, False), ("residual_post_ln", 4, True)])
def test_windowed_forward_equals_attention_over_cut_windows(kind, block, heads, bias):
    """Projecting on the maps and cutting Q, K, V is the same as cutting the maps and attending."""
    from hires_vlm.connectors import cut_map, merge_windows

    torch.manual_seed(0)
    attn = WindowCrossAttention(8, heads, bias=bias, block=block)
    cols, rows, g = 3, 2, 4
    qm, cm = torch.randn(2, rows * g, cols * g, 8), torch.randn(2, rows * g, cols * g, 8)
    qw, cw = cut_map(qm, cols, rows, kind), cut_map(cm, cols, rows, kind)
    ref = attn(qw.reshape(-1, g * g, 8), cw.reshape(-1, g * g, 8))
    ref = merge_windows(ref.reshape(2, cols * rows, g, g, 8), cols, rows, kind)
    assert torch.allclose(attn.forward_windowed(qm, cm, cols, rows, kind), ref, atol=1e-5)


@pytest.mark.parametrize("cols,rows", [(3, 3), (3, 2), (2, 4)])
@pytest.mark.parametrize("kind", KINDS)
def test_changing_a_key_token_changes_only_queries_of_its_window(cols, rows, kind):
    """The attention really is windowed: perturb one local token, and in the global-as-query
    output only the queries of the window holding that token change (no leak across windows)."""
    torch.manual_seed(0)
    g, d = 3, 8
    dem = DualPerspectiveEnhancement(d, 2, shared=True, bias=True, block="residual_post_ln",
                                     global_query_windows=kind, local_query_windows=kind)
    local_map, global_map = torch.randn(1, rows * g, cols * g, d), torch.randn(1, rows * g, cols * g, d)
    y0, x0 = rows * g - 2, 1
    bumped = local_map.clone()
    bumped[0, y0, x0] += 5.0
    g_out0, _ = dem(local_map, global_map, cols, rows)
    g_out1, _ = dem(bumped, global_map, cols, rows)
    changed = {(y, x) for y, x in ((g_out0 - g_out1).abs().amax(-1)[0] > 1e-6).nonzero().tolist()}
    if kind == "contiguous":
        i, j = y0 // g, x0 // g
    else:
        i, j = y0 % rows, x0 % cols
    assert changed == window_cells(kind, i, j, cols, rows, g)


def test_attention_never_spans_the_whole_map(monkeypatch):
    """At 3×3 tiles of 4×4 tokens, every attention call is over 16 tokens with the 9·b windows as batch."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(dem_module.F, "scaled_dot_product_attention", spy)
    dem = DualPerspectiveEnhancement(8, 2, shared=True)
    dem(torch.randn(2, 12, 12, 8), torch.randn(2, 12, 12, 8), 3, 3)
    assert seen == [((18, 2, 16, 4), (18, 2, 16, 4))] * 2


def test_shared_or_separate_attention_and_directions():
    shared = DualPerspectiveEnhancement(8, 2, shared=True)
    assert {n.split(".")[0] for n, _ in shared.named_parameters()} == {"attention"}
    separate = DualPerspectiveEnhancement(8, 2, shared=False)
    assert {n.split(".")[0] for n, _ in separate.named_parameters()} == {"global_attention", "local_attention"}
    assert sum(p.numel() for p in separate.parameters()) == 2 * sum(p.numel() for p in shared.parameters())
    only_g = DualPerspectiveEnhancement(8, 2, shared=False, directions="global_query")
    assert {n.split(".")[0] for n, _ in only_g.named_parameters()} == {"global_attention"}
    with pytest.raises(ValueError, match="directions"):
        DualPerspectiveEnhancement(8, 2, directions="sideways")
    with pytest.raises(ValueError, match="global_query_windows"):
        DualPerspectiveEnhancement(8, 2, global_query_windows="diagonal")


@pytest.mark.parametrize("directions", ["both", "global_query", "local_query"])
def test_a_switched_off_direction_passes_its_map_through(directions):
    torch.manual_seed(0)
    dem = DualPerspectiveEnhancement(8, 1, directions=directions)
    loc, glo = torch.randn(1, 6, 6, 8), torch.randn(1, 6, 6, 8)
    g_out, l_out = dem(loc, glo, 2, 2)
    assert torch.equal(g_out, glo) == (directions == "local_query")
    assert torch.equal(l_out, loc) == (directions == "global_query")


def test_shared_attention_uses_the_same_weights_both_ways():
    torch.manual_seed(0)
    dem = DualPerspectiveEnhancement(8, 2, shared=True, global_query_windows="contiguous",
                                     local_query_windows="contiguous")
    loc, glo = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8)
    g_out, l_out = dem(loc, glo, 2, 2)
    # with the maps swapped, the two outputs swap: same attention for both directions
    g2, l2 = dem(glo, loc, 2, 2)
    assert torch.allclose(g_out, l2) and torch.allclose(l_out, g2)
