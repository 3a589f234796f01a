"""The official rules of LLaVA-OneVision and InternVL, re-implemented from their descriptions for the tests
(the official repositories are not dependencies; nothing here is imported from them or from ``hires_vlm``).

* LLaVA-OneVision: LLaVA-NeXT ``llava/mm_utils.py`` (``get_anyres_image_grid_shape``,
  ``process_anyres_image``, ``select_best_resolution``) and ``llava/model/llava_arch.py``
  (``unpad_image``; ``prepare_inputs_labels_for_multimodal``, the ``anyres_max`` branch).
* InternVL: ``internvl_chat/internvl/train/dataset.py`` (``dynamic_preprocess``,
  ``find_closest_aspect_ratio``).
"""

from __future__ import annotations

import math
import random

# ≥ 30 sizes: ordinary photos, squares, exact multiples, extreme aspect ratios and 1-pixel images.
SIZES = [
    (1, 1), (1, 2), (2, 1), (1, 1000), (1000, 1), (1, 9000), (9000, 1), (3, 7), (50, 40), (100, 100),
    (112, 112), (224, 112), (112, 224), (300, 200), (200, 300), (336, 336), (384, 384), (448, 448),
    (640, 480), (480, 640), (672, 672), (768, 768), (800, 600), (896, 448), (1000, 1000), (1024, 768),
    (1280, 720), (1344, 1344), (1750, 1500), (1920, 1080), (1080, 1920), (2304, 2304), (2560, 1440),
    (3000, 100), (100, 3000), (4000, 1000), (1000, 4000), (4032, 3024), (5000, 5000), (8192, 64),
]


def random_sizes(n, seed):
    rng = random.Random(seed)
    return [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- OneVision
def official_onevision_pinpoints(tile, first=(1, 1), last=(6, 6)):
    """LLaVA-NeXT's expansion of "(1x1),...,(6x6)": (width, height) pixels, first entry the outer loop."""
    out = []
    for a in range(first[0], last[0] + 1):
        for b in range(first[1], last[1] + 1):
            out.append((a * tile, b * tile))
    return out


def official_select_best_resolution(size, resolutions):
    """LLaVA-NeXT ``select_best_resolution``; ``None`` where every candidate scores 0 (the official code
    then fails: it only happens for images a few pixels wide and thousands high)."""
    w, h = size
    best, best_eff, best_waste = None, 0, float("inf")
    for cw, ch in resolutions:
        s = min(cw / w, ch / h)
        eff = min(int(w * s) * int(h * s), w * h)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    return best


# ---------------------------------------------------------------------------------------------- InternVL
def official_internvl_ratio(size, tile, max_num=12, min_num=1):
    """``dynamic_preprocess`` + ``find_closest_aspect_ratio``, with the official set-then-sort order."""
    w, h = size
    ratios = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
              if min_num <= i * j <= max_num}
    ratios = sorted(ratios, key=lambda x: x[0] * x[1])
    aspect, area = w / h, w * h
    best, best_diff = (1, 1), float("inf")
    for i, j in ratios:
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and area > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


def official_unpadded(size, map_h, map_w, rounding="floor"):
    """(h, w) of LLaVA-NeXT's ``unpad_image`` (``int()``) or transformers' (``int(round(x, 7))``)."""
    w, h = size
    whole = (lambda x: int(x)) if rounding == "floor" else (lambda x: int(round(x, 7)))
    if w / h > map_w / map_h:
        pad = (map_h - whole(h * (map_w / w))) // 2
        return map_h - 2 * pad, map_w
    pad = (map_w - whole(w * (map_h / h))) // 2
    return map_h, map_w - 2 * pad


def official_onevision_tokens(size, tile, g, n=9, rounding="floor"):
    """((columns, rows), visual tokens) of one image under ``anyres_max_n``: base g², the un-padded map
    shrunk when ``sqrt(h·w / (n·g²)) > 1.1``, one newline per row."""
    best = official_select_best_resolution(size, official_onevision_pinpoints(tile)) or (tile, tile)
    cols, rows = best[0] // tile, best[1] // tile
    h, w = official_unpadded(size, rows * g, cols * g, rounding)
    times = math.sqrt(h * w / (n * g * g))
    if times > 1.1:
        h, w = int(h // times), int(w // times)
    return (cols, rows), g * g + h * w + h


def official_internvl_tokens(size, tile, g, max_num=12, use_thumbnail=True):
    """((columns, rows), visual tokens): (tiles + thumbnail when 2+ tiles) · (g/2)² (pixel shuffle 0.5)."""
    cols, rows = official_internvl_ratio(size, tile, max_num)
    views = cols * rows + (1 if use_thumbnail and cols * rows != 1 else 0)
    return (cols, rows), views * (g // 2) ** 2
