"""Grid rules: LLaVA-NeXT anyres against transformers, SliME's official and paper rules, INF's floor."""

import itertools
import random

import pytest
from transformers.image_processing_utils import select_best_resolution as hf_select

from hires_vlm.imaging import grids

HF_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # (height, width)


def _sizes(n=200, seed=0):
    rng = random.Random(seed)
    out = [(1, 1), (336, 336), (300, 200), (200, 300), (640, 480), (899, 1024), (672, 672), (4000, 1000)]
    while len(out) < n:
        out.append((rng.randint(1, 3000), rng.randint(1, 3000)))
    return out


@pytest.mark.parametrize("size", _sizes())
def test_select_best_resolution_matches_transformers_after_flipping(size):
    w, h = size
    ours = grids.select_best_resolution((w, h), grids.flip_pairs(HF_DEFAULT_PINPOINTS))
    hf_h, hf_w = hf_select((h, w), HF_DEFAULT_PINPOINTS)
    assert ours == (hf_w, hf_h)


def test_width_height_convention_small_square_image():
    # The same pinpoint list read as (w, h) (original LLaVA, ours) vs (h, w) (transformers):
    # a small image that fits both 1x2 canvases picks the first in list order.
    pinpoints = HF_DEFAULT_PINPOINTS
    assert grids.select_best_resolution((300, 200), pinpoints) == (336, 672)  # tall canvas, 1 col x 2 rows
    assert hf_select((200, 300), pinpoints) == (336, 672)  # transformers: height 336, width 672 — wide
    assert grids.anyres_grid((300, 200), [(1, 2), (2, 1)], 336) == (1, 2)


def test_exact_tie_keeps_first_candidate():
    assert grids.select_best_resolution((100, 100), [(200, 100), (100, 200)]) == (200, 100)
    assert grids.select_best_resolution((100, 100), [(100, 200), (200, 100)]) == (100, 200)


@pytest.mark.parametrize("size,grid", [
    ((336, 336), (1, 2)), ((100, 100), (1, 2)), ((672, 672), (2, 2)), ((1000, 1000), (2, 3)),
    ((1920, 1080), (3, 2)), ((4000, 1000), (5, 1)),
])
def test_uhd_rule_matches_official_consequences(size, grid):
    assert grids.uhd_grid(size, 336) == grid


def test_uhd_rule_tile_count_bounds():
    for w, h in _sizes(300, seed=1):
        c, r = grids.uhd_grid((w, h), 336)
        assert 2 <= c * r <= 7


def test_slime_paper_rule_is_exhaustive_argmax():
    S = 336
    for w, h in _sizes(100, seed=2):
        best = grids.slime_paper_grid((w, h), S)
        def score(m, n):
            s = min(m * S / w, n * S / h)
            used = min(w * h, w * s * h * s)
            return used, -(m * n * S * S - used)
        top = max(score(m, n) for m, n in itertools.product(range(1, 7), range(1, 7)))
        assert score(*best) == pytest.approx(top)
        assert 1 <= best[0] <= 6 and 1 <= best[1] <= 6


def test_slime_paper_rule_examples():
    assert grids.slime_paper_grid((336, 336), 336) == (1, 1)
    assert grids.slime_paper_grid((672, 336), 336) == (2, 1)
    assert grids.slime_paper_grid((5000, 5000), 336) == (6, 6)


def test_floor_rule_caps_and_minimum():
    assert grids.floor_grid((1008, 1008), 336) == (3, 3)
    assert grids.floor_grid((100, 5000), 336, max_cols=4, max_rows=4) == (1, 4)
    assert grids.floor_grid((700, 400), 336) == (2, 1)


@pytest.mark.parametrize("bad", [(0, 10), (10, -1), (5,)])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="size"):
        grids.select_best_resolution(bad, [(336, 336)])
