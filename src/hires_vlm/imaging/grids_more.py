"""Grid rules of two more high-resolution strategies: LLaVA-OneVision's and InternVL's.

Same convention as :mod:`.grids`: sizes are (width, height), grids (columns, rows), and every rule
is a pure function of the image size and the tile size S.

* ``grid_range`` / ``onevision_grid`` – LLaVA-OneVision (``anyres_max_N``): LLaVA-NeXT's
  ``select_best_resolution`` over every grid from 1×1 to 6×6, in the order LLaVA-NeXT builds them
  from ``image_grid_pinpoints="(1x1),...,(6x6)"`` (``llava/mm_utils.py``,
  ``get_anyres_image_grid_shape`` / ``process_anyres_image``: ``(i, j)`` with i the outer loop,
  read as (width, height) in tiles). The token budget of ``anyres_max_N`` is a connector step
  (:func:`hires_vlm.connectors.layout.anyres_max_size`), not a grid rule.
* ``internvl_grids`` / ``internvl_grid`` – InternVL's dynamic tiling
  (``internvl_chat/internvl/train/dataset.py``, ``dynamic_preprocess`` and
  ``find_closest_aspect_ratio``): among every c×r with ``min_tiles ≤ c·r ≤ max_tiles``, visited by
  tile count, the one whose c/r is closest to W/H; on an equal difference a later (larger) grid
  replaces the best so far when ``W·H > 0.5·S²·c·r``. The image is then squashed to c·S × r·S.
"""

from __future__ import annotations

from collections.abc import Sequence

from .grids import Grid, _check_size, anyres_grid

#: LLaVA-OneVision's ``image_grid_pinpoints="(1x1),...,(6x6)"``: the largest grid side.
ONEVISION_MAX_SIDE = 6


def grid_range(max_cols: int = ONEVISION_MAX_SIDE, max_rows: int = ONEVISION_MAX_SIDE,
               min_cols: int = 1, min_rows: int = 1) -> tuple[Grid, ...]:
    """Every (columns, rows) from (min_cols, min_rows) to (max_cols, max_rows), columns the outer loop.

    This is LLaVA-NeXT's expansion of a pinpoint range ``"(1x1),...,(6x6)"``: its pairs are
    (width, height) multiples of S, the first entry in the outer loop; list order matters because
    ``select_best_resolution`` keeps the first of exactly tied candidates.
    """
    if min(min_cols, min_rows) < 1 or max_cols < min_cols or max_rows < min_rows:
        raise ValueError(f"grid range ({min_cols}x{min_rows})..({max_cols}x{max_rows}) is empty or below 1x1")
    return tuple((c, r) for c in range(min_cols, max_cols + 1) for r in range(min_rows, max_rows + 1))


#: The 36 grids of LLaVA-OneVision, (1, 1), (1, 2), …, (1, 6), (2, 1), …, (6, 6).
ONEVISION_GRIDS: tuple[Grid, ...] = grid_range()


def onevision_grid(image_size: Sequence[int], tile_size: int, max_side: int = ONEVISION_MAX_SIDE) -> Grid:
    """LLaVA-OneVision's grid: LLaVA-NeXT anyres over every grid up to ``max_side`` × ``max_side``."""
    return anyres_grid(image_size, grid_range(max_side, max_side), tile_size)


def internvl_grids(max_tiles: int = 12, min_tiles: int = 1) -> tuple[Grid, ...]:
    """InternVL's candidate grids: every (c, r) with ``min_tiles ≤ c·r ≤ max_tiles``, by tile count.

    Within one tile count the official code's order is that of a Python ``set``; here it is by
    columns. With ``min_tiles = 1`` the order within a count never changes the result: two grids
    (c, r), (c', r') with c·r = c'·r' and c < c' have (c, r') between them in aspect ratio
    (c/r < c/r' < c'/r'), with fewer tiles, so they are never the two closest at once.
    """
    if min_tiles < 1 or max_tiles < min_tiles:
        raise ValueError(f"InternVL tile counts need 1 ≤ min_tiles ≤ max_tiles, got min {min_tiles}, "
                         f"max {max_tiles}")
    pairs = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles // c + 1) if c * r >= min_tiles]
    return tuple(sorted(pairs, key=lambda p: p[0] * p[1]))


def internvl_grid(image_size: Sequence[int], tile_size: int, max_tiles: int = 12, min_tiles: int = 1) -> Grid:
    """InternVL's ``find_closest_aspect_ratio`` for an image of (width, height): its (columns, rows).

    The aspect difference is ``|W/H − c/r|`` in floating point, as in the official code; a strictly
    smaller difference wins; an equal one moves to the later grid only when the image's area
    exceeds half the later grid's canvas, ``W·H > 0.5·S²·c·r`` (so small images keep few tiles).
    The default when nothing is closer than infinity is (1, 1), which the first candidate replaces.
    """
    w, h = _check_size(image_size)
    aspect, area = w / h, w * h
    best: Grid = (1, 1)
    best_diff = float("inf")
    for cols, rows in internvl_grids(max_tiles, min_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best
