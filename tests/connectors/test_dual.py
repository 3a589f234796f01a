"""Dual-perspective geometry: pixel cuts and token maps share one convention, and every round trip
is the identity (property tests over grids, including non-square ones)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hires_vlm.connectors import assemble_map, cut_map, merge_windows, split_map
from hires_vlm.imaging import ops

KINDS = ("contiguous", "strided")
PIXEL_CUT = {"contiguous": ops.cut_tiles, "strided": ops.cut_strided}

grids = st.tuples(st.integers(1, 4), st.integers(1, 4))  # (cols, rows)


def coord_map(b, rows, cols, g):
    """[b x rows·g x cols·g x 3]: every token carries (image, row, column)."""
    h, w = rows * g, cols * g
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    m = torch.stack([torch.zeros_like(ys), ys, xs], -1).float()
    m = m.expand(b, h, w, 3).clone()
    m[..., 0] = torch.arange(b).view(b, 1, 1).float()
    return m


@settings(max_examples=60, deadline=None)
@given(grid=grids, g=st.integers(1, 5), b=st.integers(1, 3), d=st.integers(1, 3), kind=st.sampled_from(KINDS))
def test_map_windows_round_trip_is_identity(grid, g, b, d, kind):
    cols, rows = grid
    fmap = torch.randn(b, rows * g, cols * g, d)
    windows = cut_map(fmap, cols, rows, kind)
    assert windows.shape == (b, cols * rows, g, g, d)
    assert torch.equal(merge_windows(windows, cols, rows, kind), fmap)
    tiles = torch.randn(b, cols * rows, g * g, d)
    assert torch.equal(split_map(assemble_map(tiles, cols, rows, kind), cols, rows, kind), tiles)


@settings(max_examples=60, deadline=None)
@given(grid=grids, g=st.integers(1, 5), b=st.integers(1, 3), d=st.integers(1, 3), kind=st.sampled_from(KINDS))
def test_token_windows_follow_the_pixel_functions_of_imaging(grid, g, b, d, kind):
    """cut_map / merge_windows (channels last, batched) give exactly imaging.ops' cut / merge of
    each channel plane: one convention for pixels and tokens."""
    cols, rows = grid
    fmap = torch.randn(b, rows * g, cols * g, d)
    windows = cut_map(fmap, cols, rows, kind)
    merge = {"contiguous": ops.merge_tiles, "strided": ops.merge_strided}[kind]
    for img in range(b):
        ref = PIXEL_CUT[kind](fmap[img].permute(2, 0, 1), cols, rows, g)  # [n x d x g x g]
        assert torch.equal(windows[img], ref.permute(0, 2, 3, 1))
        back = merge(windows[img].permute(0, 3, 1, 2), cols, rows)  # [d x H x W]
        assert torch.equal(back.permute(1, 2, 0), fmap[img])


@settings(max_examples=60, deadline=None)
@given(grid=grids, s=st.integers(1, 6), kind=st.sampled_from(KINDS))
def test_pixel_cut_then_feature_reassembly_is_identity(grid, s, kind):
    """A patch-1 'tower' (token = pixel): cutting the canvas into tiles (imaging) and putting the
    tiles' token grids back (connectors) returns the canvas — for strided tiles this is the
    de-interleaving, token (v, u) of tile (i, j) → row v·rows + i, column u·cols + j."""
    cols, rows = grid
    canvas = torch.randn(3, rows * s, cols * s)
    tiles = PIXEL_CUT[kind](canvas, cols, rows, s)  # [n x 3 x s x s]
    tokens = tiles.permute(0, 2, 3, 1).reshape(1, cols * rows, s * s, 3)  # raster tokens per tile
    fmap = assemble_map(tokens, cols, rows, kind)
    assert torch.equal(fmap[0], canvas.permute(1, 2, 0))


@settings(max_examples=40, deadline=None)
@given(grid=grids, g=st.integers(1, 5))
def test_deinterleaving_places_each_strided_token_by_the_formula(grid, g):
    cols, rows = grid
    tokens = torch.zeros(1, cols * rows, g * g, 3)
    for i in range(rows):
        for j in range(cols):
            for v in range(g):
                for u in range(g):
                    tokens[0, i * cols + j, v * g + u] = torch.tensor([i, j, v * g + u], dtype=torch.float)
    fmap = assemble_map(tokens, cols, rows, "strided")[0]
    for i in range(rows):
        for j in range(cols):
            for v in range(g):
                for u in range(g):
                    assert fmap[v * rows + i, u * cols + j].tolist() == [i, j, v * g + u]


@settings(max_examples=40, deadline=None)
@given(grid=grids, g=st.integers(1, 5), kind=st.sampled_from(KINDS))
def test_each_window_holds_exactly_the_specified_tokens(grid, g, kind):
    cols, rows = grid
    b = 2
    windows = cut_map(coord_map(b, rows, cols, g), cols, rows, kind)
    for img in range(b):
        for i in range(rows):
            for j in range(cols):
                win = windows[img, i * cols + j].reshape(-1, 3)
                assert (win[:, 0] == img).all()
                got = {(int(y), int(x)) for _, y, x in win.tolist()}
                if kind == "contiguous":
                    want = {(y, x) for y in range(i * g, (i + 1) * g) for x in range(j * g, (j + 1) * g)}
                else:
                    want = {(y, x) for y in range(i, rows * g, rows) for x in range(j, cols * g, cols)}
                assert got == want and len(win) == g * g
                if kind == "strided":  # element (v, u) is map[v·rows + i, u·cols + j]
                    w2 = windows[img, i * cols + j]
                    for v in range(g):
                        for u in range(g):
                            assert w2[v, u, 1:].tolist() == [v * rows + i, u * cols + j]


def test_strided_windows_of_the_global_map_are_the_strided_tiles():
    """Cutting the de-interleaved global map into strided windows gives back each strided tile's features."""
    cols, rows, g = 3, 2, 4
    tiles = torch.randn(2, cols * rows, g * g, 5)
    fmap = assemble_map(tiles, cols, rows, "strided")
    assert torch.equal(cut_map(fmap, cols, rows, "strided").reshape(tiles.shape), tiles)


def test_bad_shapes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="not a 3x2 grid of square windows"):
        cut_map(torch.zeros(1, 8, 10, 2), 3, 2, "contiguous")
    with pytest.raises(ValueError, match="choose one of"):
        cut_map(torch.zeros(1, 4, 4, 2), 1, 1, "diagonal")
    with pytest.raises(ValueError, match="not a square number"):
        assemble_map(torch.zeros(1, 4, 6, 2), 2, 2, "strided")
