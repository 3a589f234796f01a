"""Token layouts that turn per-view feature grids into one sequence per image.

LLaVA-NeXT ("anyres") layout: the base (global) view's tokens, then the tiles' tokens assembled
into one map over the whole grid, the rows and columns that only cover padding removed ("unpad"),
and a learned newline embedding after every row. The unpad rule is transformers'
(``int(round(x, 7))``) so token counts match ``LlavaNextProcessor`` exactly.

Shapes: tiles ``[n x t x d]`` (t = g² tokens per tile, row-major grid of ``cols x rows``) →
map ``[rows·g x cols·g x d]``.
"""

from __future__ import annotations

import torch


def tiles_to_map(tiles: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """``[rows·cols x g·g x d]`` tile tokens → ``[rows·g x cols·g x d]`` raster over the grid."""
    n, t, d = tiles.shape
    g = int(round(t ** 0.5))
    if g * g != t or n != rows * cols:
        raise ValueError(f"{n} tiles of {t} tokens do not form a {cols}x{rows} grid of square token maps")
    return tiles.reshape(rows, cols, g, g, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, d)


def unpadded_extent(image_size: tuple[int, int], map_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the map that covers the image, not the padding.

    ``image_size`` is (width, height) of the original image; ``map_hw`` the (height, width) of the
    token map of the whole canvas. Same arithmetic as transformers' ``unpad_image``.
    """
    w, h = image_size
    cur_h, cur_w = map_hw
    if w / h > cur_w / cur_h:
        new_h = int(round(h * (cur_w / w), 7))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = int(round(w * (cur_h / h), 7))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def anyres_token_count(image_size: tuple[int, int], grid: tuple[int, int], g: int, newline: bool = True,
                       base: bool = True, unpad: bool = True) -> int:
    """Visual tokens of the LLaVA-NeXT layout for an image cut into ``grid`` (cols, rows)."""
    cols, rows = grid
    h, w = rows * g, cols * g
    if unpad:
        top, bottom, left, right = unpadded_extent(image_size, (h, w))
        h, w = bottom - top, right - left
    return (g * g if base else 0) + h * w + (h if newline else 0)


def anyres_layout(base: torch.Tensor | None, tiles: torch.Tensor, image_size: tuple[int, int],
                  grid: tuple[int, int], newline: torch.Tensor | None, unpad: bool = True) -> torch.Tensor:
    """``base [t x d]`` + tiles ``[n x t x d]`` → ``[N x d]`` in LLaVA-NeXT order."""
    cols, rows = grid
    fmap = tiles_to_map(tiles, cols, rows)
    if unpad:
        top, bottom, left, right = unpadded_extent(image_size, fmap.shape[:2])
        fmap = fmap[top:bottom, left:right]
    if newline is not None:
        nl = newline.to(fmap.dtype).expand(fmap.shape[0], 1, fmap.shape[2])
        fmap = torch.cat([fmap, nl], dim=1)
    seq = fmap.reshape(-1, fmap.shape[-1])
    return seq if base is None else torch.cat([base, seq], 0)
