"""Dual-perspective geometry on token maps: tile features ↔ one map ↔ attention windows.

INF-LLaVA cuts the canvas two ways (``imaging.ops.cut_tiles``: contiguous "local" tiles;
``imaging.ops.cut_strided``: strided "global" tiles, tile (i, j) takes pixel (x, y) =
(j + u·cols, i + v·rows)). After the tower, each tile's g×g tokens go back to their 2-D place:
contiguous tiles side by side, strided tiles de-interleaved — token (v, u) of tile (i, j) lands at
row v·rows + i, column u·cols + j. No positional embedding is added; the place *is* the prior.
The enhancement module then re-cuts both maps into windows of the same two kinds.

The index arithmetic is that of ``imaging.ops.cut_tiles`` / ``cut_strided`` / ``merge_*``, written
here for channels-last maps with a leading batch (one reshape-permute, at most one copy, instead of
going through a channels-first copy); ``tests/connectors/test_dual.py`` checks that both give the
same result, so the pixel convention and the token convention cannot drift apart.

Legend: b images, n = cols·rows tiles (windows), g tokens per tile side, d channels.
Maps ``[b x rows·g x cols·g x d]`` (channels last); windows ``[b x n x g x g x d]``, row-major
over (i, j) with k = i·cols + j; tile tokens ``[b x n x g² x d]`` (raster order inside a tile).
"""

from __future__ import annotations

from typing import Literal

import torch

WindowKind = Literal["contiguous", "strided"]
WINDOW_KINDS: tuple[str, ...] = ("contiguous", "strided")


def _check_kind(kind: str) -> None:
    if kind not in WINDOW_KINDS:
        raise ValueError(f"window kind {kind!r} is not supported; choose one of {list(WINDOW_KINDS)}")


def _window_side(height: int, width: int, cols: int, rows: int) -> int:
    if cols < 1 or rows < 1 or height % rows or width % cols or height // rows != width // cols:
        raise ValueError(f"a {height}x{width} (rows x columns) map is not a {cols}x{rows} grid of square windows")
    return height // rows


def cut_map(fmap: torch.Tensor, cols: int, rows: int, kind: str) -> torch.Tensor:
    """``[b x H x W x d]`` map → ``[b x n x g x g x d]`` windows of ``kind`` (H = rows·g, W = cols·g).

    Contiguous window (i, j) holds rows i·g…(i+1)·g−1 and columns j·g…(j+1)·g−1; strided window
    (i, j) holds rows ≡ i (mod rows) and columns ≡ j (mod cols), element (v, u) = map[v·rows + i,
    u·cols + j]. Returns a view where possible (the caller's reshape makes the one copy).
    """
    _check_kind(kind)
    b, h, w, d = fmap.shape
    g = _window_side(h, w, cols, rows)
    if kind == "contiguous":  # row = i·g + v, column = j·g + u
        x = fmap.reshape(b, rows, g, cols, g, d).permute(0, 1, 3, 2, 4, 5)
    else:  # row = v·rows + i, column = u·cols + j
        x = fmap.reshape(b, g, rows, g, cols, d).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, g, g, d)


def merge_windows(windows: torch.Tensor, cols: int, rows: int, kind: str) -> torch.Tensor:
    """Inverse of :func:`cut_map`: ``[b x n x g x g x d]`` → ``[b x rows·g x cols·g x d]``."""
    _check_kind(kind)
    b, n, gh, gw, d = windows.shape
    if n != cols * rows or gh != gw:
        raise ValueError(f"{n} windows of {gh}x{gw} tokens cannot form a {cols}x{rows} grid of square windows")
    g = gh
    x = windows.reshape(b, rows, cols, g, g, d)  # [b, i, j, v, u, d]
    if kind == "contiguous":
        x = x.permute(0, 1, 3, 2, 4, 5)  # [b, i, v, j, u, d]
    else:
        x = x.permute(0, 3, 1, 4, 2, 5)  # [b, v, i, u, j, d]
    return x.reshape(b, rows * g, cols * g, d)


def assemble_map(tokens: torch.Tensor, cols: int, rows: int, kind: str) -> torch.Tensor:
    """Tile features ``[b x n x g² x d]`` (tiles cut as ``kind``) → their map ``[b x rows·g x cols·g x d]``.

    Contiguous tiles are put side by side; strided tiles are de-interleaved. Nothing is added.
    """
    b, n, t, d = tokens.shape
    g = int(round(t ** 0.5))
    if g * g != t:
        raise ValueError(f"a tile has {t} tokens, not a square number; cannot place it on a 2-D map")
    return merge_windows(tokens.reshape(b, n, g, g, d), cols, rows, kind)


def split_map(fmap: torch.Tensor, cols: int, rows: int, kind: str) -> torch.Tensor:
    """Inverse of :func:`assemble_map`: ``[b x H x W x d]`` → ``[b x n x g² x d]``."""
    windows = cut_map(fmap, cols, rows, kind)
    b, n, g, _, d = windows.shape
    return windows.reshape(b, n, g * g, d)
