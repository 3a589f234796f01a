"""Token layouts that turn per-view feature grids into one sequence per image.

LLaVA-NeXT ("anyres") layout: the base (global) view's tokens, then the tiles' tokens assembled
into one map over the whole grid, the rows and columns that only cover padding removed ("unpad"),
and a learned newline embedding after every row. The unpad rule is transformers'
(``int(round(x, 7))``) so token counts match ``LlavaNextProcessor`` exactly; ``rounding="floor"``
is original LLaVA-NeXT's ``unpad_image`` (plain ``int()``), which differs on a few sizes (e.g.
1750×1500 on a 6×6 grid of 27×27 tokens: 108×125 rather than 108×127).

LLaVA-OneVision ``anyres_max_N`` (``max_tiles=N``): after un-padding, a map of h×w tokens larger
than N tiles' worth (by more than the official 1.1 factor in scale) is shrunk bilinearly to
``(int(h // t), int(w // t))``, ``t = sqrt(h·w / (N·g²))``, before the newlines are added
(LLaVA-NeXT ``llava/model/llava_arch.py`` ``prepare_inputs_labels_for_multimodal``;
transformers ``LlavaOnevisionModel.pack_image_features``).

Shapes: tiles ``[n x t x d]`` (t = g² tokens per tile, row-major grid of ``cols x rows``) →
map ``[rows·g x cols·g x d]``.
"""

from __future__ import annotations

import math

import torch

from .pooling import pool_map

#: How the un-padded extent is rounded: transformers' ``int(round(x, 7))`` or LLaVA-NeXT's ``int(x)``.
UNPAD_ROUNDINGS = ("transformers", "floor")
#: LLaVA-OneVision shrinks the map only when its scale factor exceeds this (``if times > 1.1``).
ANYRES_MAX_TOLERANCE = 1.1


def tiles_side(tiles: torch.Tensor) -> int:
    """g of tiles ``[n x g·g x d]``."""
    return int(round(tiles.shape[1] ** 0.5))


def tiles_to_map(tiles: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """``[rows·cols x g·g x d]`` tile tokens → ``[rows·g x cols·g x d]`` raster over the grid."""
    n, t, d = tiles.shape
    g = int(round(t ** 0.5))
    if g * g != t or n != rows * cols:
        raise ValueError(f"{n} tiles of {t} tokens do not form a {cols}x{rows} grid of square token maps")
    return tiles.reshape(rows, cols, g, g, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, d)


def unpadded_extent(image_size: tuple[int, int], map_hw: tuple[int, int],
                    rounding: str = "transformers") -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the map that covers the image, not the padding.

    ``image_size`` is (width, height) of the original image; ``map_hw`` the (height, width) of the
    token map of the whole canvas. Same arithmetic as transformers' ``unpad_image``, or with
    ``rounding="floor"`` as LLaVA-NeXT's.
    """
    if rounding not in UNPAD_ROUNDINGS:
        raise ValueError(f"unpad rounding {rounding!r} is not supported; choose one of {list(UNPAD_ROUNDINGS)}")
    w, h = image_size
    cur_h, cur_w = map_hw

    def whole(x: float) -> int:
        return int(round(x, 7)) if rounding == "transformers" else int(x)

    if w / h > cur_w / cur_h:
        new_h = whole(h * (cur_w / w))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = whole(w * (cur_h / h))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def anyres_max_size(map_hw: tuple[int, int], g: int, max_tiles: int) -> tuple[int, int]:
    """(rows, columns) of an un-padded h×w map after LLaVA-OneVision's ``anyres_max_N`` (N = ``max_tiles``).

    ``t = sqrt(h·w / (N·g²))``; when ``t > 1.1`` the map becomes ``(int(h // t), int(w // t))``,
    else it is kept (so up to 1.21·N tiles' worth survive). A side is never below 1 token: the
    official code would fail on an empty size, which maps up to 6×6 tiles only reach for g ≤ 4
    and N ≤ 4, never for N = 9.
    """
    h, w = int(map_hw[0]), int(map_hw[1])
    if max_tiles < 1 or g < 1:
        raise ValueError(f"anyres_max needs max_tiles ≥ 1 and g ≥ 1, got max_tiles={max_tiles}, g={g}")
    times = math.sqrt(h * w / (max_tiles * g * g))
    if times <= ANYRES_MAX_TOLERANCE:
        return h, w
    return max(1, int(h // times)), max(1, int(w // times))


def anyres_token_count(image_size: tuple[int, int], grid: tuple[int, int], g: int, newline: bool = True,
                       base: bool = True, unpad: bool = True, max_tiles: int | None = None,
                       rounding: str = "transformers") -> int:
    """Visual tokens of the LLaVA-NeXT layout for an image cut into ``grid`` (cols, rows);
    ``max_tiles``: LLaVA-OneVision's ``anyres_max_N`` budget on the un-padded map."""
    cols, rows = grid
    h, w = rows * g, cols * g
    if unpad:
        top, bottom, left, right = unpadded_extent(image_size, (h, w), rounding)
        h, w = bottom - top, right - left
    if max_tiles is not None:
        h, w = anyres_max_size((h, w), g, max_tiles)
    return (g * g if base else 0) + h * w + (h if newline else 0)


def anyres_layout(base: torch.Tensor | None, tiles: torch.Tensor, image_size: tuple[int, int],
                  grid: tuple[int, int], newline: torch.Tensor | None, unpad: bool = True,
                  max_tiles: int | None = None, rounding: str = "transformers") -> torch.Tensor:
    """``base [t x d]`` + tiles ``[n x t x d]`` → ``[N x d]`` in LLaVA-NeXT order (``max_tiles``:
    the map shrunk as LLaVA-OneVision's ``anyres_max_N``, bilinear, ``align_corners=False``)."""
    cols, rows = grid
    fmap = tiles_to_map(tiles, cols, rows)
    if unpad:
        top, bottom, left, right = unpadded_extent(image_size, fmap.shape[:2], rounding)
        fmap = fmap[top:bottom, left:right]
    if max_tiles is not None:
        size = anyres_max_size(fmap.shape[:2], tiles_side(tiles), max_tiles)
        if size != tuple(fmap.shape[:2]):
            fmap = pool_map(fmap[None], size, "bilinear")[0]
    if newline is not None:
        nl = newline.to(fmap.dtype).expand(fmap.shape[0], 1, fmap.shape[2])
        fmap = torch.cat([fmap, nl], dim=1)
    seq = fmap.reshape(-1, fmap.shape[-1])
    return seq if base is None else torch.cat([base, seq], 0)
