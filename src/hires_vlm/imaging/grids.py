"""Grid rules: how many S×S tiles (columns × rows) an image of a given size is cut into.

Convention, stated once for the whole package: **every size is (width, height)** and every grid
is **(columns, rows)**, the order of Pillow's ``Image.size``. Original LLaVA uses the same order;
transformers uses (height, width) for sizes and pinpoints, so a pinpoint list copied from a
transformers config must be flipped (``flip_pairs``) before it is given to these functions.

Each rule is a pure function of the image size and the tile size, so that it can be tested
exhaustively:

* ``select_best_resolution`` – LLaVA-NeXT "anyres" over a list of candidate canvases.
* ``slime_paper_grid`` – SliME paper: every m×n up to 6×6, max utilised area then min waste.
* ``uhd_grid`` – SliME official code (LLaVA-UHD style): 2–7 tiles chosen from factor pairs.
* ``floor_grid`` – INF-LLaVA paper: ``nW = ⌊W/S⌋, nH = ⌊H/S⌋`` clamped to ``[1, cap]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Size = tuple[int, int]  # (width, height)
Grid = tuple[int, int]  # (columns, rows)


def _check_size(image_size: Sequence[int]) -> Size:
    if len(image_size) != 2:
        raise ValueError(f"image size must be (width, height), got {image_size!r}")
    w, h = int(image_size[0]), int(image_size[1])
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got (width={w}, height={h})")
    return w, h


def flip_pairs(pairs: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """Swap the two entries of every pair: (height, width) lists of transformers ↔ (width, height)."""
    return [(int(p[1]), int(p[0])) for p in pairs]


def effective_and_waste(image_size: Sequence[int], canvas: Sequence[int]) -> tuple[int, int]:
    """LLaVA-NeXT's score of fitting ``image_size`` into ``canvas`` without changing its aspect.

    effective = min(int(W·s)·int(H·s), W·H) with s = min(cw/W, ch/H); waste = cw·ch − effective.
    """
    w, h = image_size
    cw, ch = canvas
    scale = min(cw / w, ch / h)
    effective = min(int(w * scale) * int(h * scale), w * h)
    return effective, cw * ch - effective


def select_best_resolution(image_size: Sequence[int], candidates: Sequence[Sequence[int]]) -> Size:
    """Pick the canvas (width, height) among ``candidates`` that LLaVA-NeXT's anyres rule picks.

    Largest effective resolution first, then least waste; comparisons are strict, so on an exact
    tie the first candidate in list order wins (as in original LLaVA and transformers).
    """
    size = _check_size(image_size)
    if not candidates:
        raise ValueError("no candidate resolutions given")
    best: Size | None = None
    best_eff, best_waste = -1, math.inf
    for cand in candidates:
        cw, ch = int(cand[0]), int(cand[1])
        eff, waste = effective_and_waste(size, (cw, ch))
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    assert best is not None
    return best


def anyres_grid(image_size: Sequence[int], grid_candidates: Sequence[Sequence[int]], tile_size: int) -> Grid:
    """LLaVA-NeXT anyres: the (columns, rows) of the best candidate grid (candidates in tiles)."""
    canvases = [(int(c) * tile_size, int(r) * tile_size) for c, r in grid_candidates]
    cw, ch = select_best_resolution(image_size, canvases)
    return cw // tile_size, ch // tile_size


def slime_paper_grid(image_size: Sequence[int], tile_size: int, max_cols: int = 6, max_rows: int = 6) -> Grid:
    """SliME paper's adaptive slicing: every m×n with 1 ≤ m ≤ max_cols, 1 ≤ n ≤ max_rows.

    s = min(m·S/W, n·S/H); utilised = min(W·H, W·s·H·s); wasted = m·n·S² − utilised. The grid with
    the largest utilised area wins, then the least waste; candidates are visited columns-major
    (m = 1, n = 1..max_rows, then m = 2, …) and ties keep the first, so for equal scores the grid
    with fewer columns wins.
    """
    w, h = _check_size(image_size)
    best: Grid = (1, 1)
    best_used, best_waste = -1.0, math.inf
    for m in range(1, max_cols + 1):
        for n in range(1, max_rows + 1):
            s = min(m * tile_size / w, n * tile_size / h)
            used = min(w * h, w * s * h * s)
            waste = m * n * tile_size * tile_size - used
            if used > best_used + 1e-9 or (abs(used - best_used) <= 1e-9 and waste < best_waste - 1e-9):
                best, best_used, best_waste = (m, n), used, waste
    return best


def _factor_pairs(n: int) -> list[Grid]:
    """(columns, rows) with columns·rows = n, columns ascending."""
    return [(c, n // c) for c in range(1, n + 1) if n % c == 0]


def uhd_grid(image_size: Sequence[int], tile_size: int, max_tiles: int = 6) -> Grid:
    """SliME official rule (LLaVA-UHD style), at most ``max_tiles`` + 1 tiles and at least 2.

    n = ⌈W·H / S²⌉ clamped to [2, max_tiles]; candidates are the factor pairs of n−1, n and n+1
    (of n and n+1 when n ≤ 2), each list by columns ascending; each candidate canvas is scored
    like LLaVA-NeXT (effective area, then waste) with strict comparisons, so a square image gets
    1 column × 2 rows.
    """
    w, h = _check_size(image_size)
    n = math.ceil(w * h / (tile_size * tile_size))
    n = min(max(n, 2), max_tiles)
    counts = [n, n + 1] if n <= 2 else [n - 1, n, n + 1]
    candidates = [pair for count in counts for pair in _factor_pairs(count)]
    best: Grid = candidates[0]
    best_eff, best_waste = -1, math.inf
    for cols, rows in candidates:
        eff, waste = effective_and_waste((w, h), (cols * tile_size, rows * tile_size))
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cols, rows), eff, waste
    return best


def floor_grid(image_size: Sequence[int], tile_size: int, max_cols: int = 4, max_rows: int = 4) -> Grid:
    """INF-LLaVA paper: nW = ⌊W/S⌋, nH = ⌊H/S⌋, each clamped to [1, cap]."""
    w, h = _check_size(image_size)
    return min(max(w // tile_size, 1), max_cols), min(max(h // tile_size, 1), max_rows)
