"""Grid rules of LLaVA-OneVision and InternVL against the official rules, re-implemented from their
descriptions in ``tests/official_rules.py`` (never imported from the official code, not a dependency).

* LLaVA-OneVision: LLaVA-NeXT ``llava/mm_utils.py`` — ``get_anyres_image_grid_shape`` /
  ``process_anyres_image`` expand ``image_grid_pinpoints="(1x1),...,(6x6)"`` into pairs (i, j), i the
  outer loop, each a (width, height) multiple of the tile size; ``select_best_resolution`` keeps the
  largest effective resolution ``min(int(W·s)·int(H·s), W·H)``, ``s = min(cw/W, ch/H)``, then the least
  waste, strict comparisons (the first of exact ties). Also checked against transformers'
  ``select_best_resolution`` with ``LlavaOnevisionConfig``'s default pinpoints (height, width).
* InternVL: ``internvl_chat/internvl/train/dataset.py`` — ``dynamic_preprocess`` builds the set of
  (i, j) with ``min_num ≤ i·j ≤ max_num`` and sorts it by i·j; ``find_closest_aspect_ratio`` walks it
  with ``best_ratio_diff = inf``, ``best = (1, 1)``: a strictly smaller ``|W/H − i/j|`` takes over;
  an equal one takes over when ``W·H > 0.5·S²·i·j``. The grid is (i, j) = (columns, rows): the
  image is resized to ``(S·i, S·j)`` as (width, height).
"""

import itertools
import math

import numpy as np
import pytest
from PIL import Image

from hires_vlm.imaging import (
    ONEVISION_GRIDS,
    HiResImageProcessor,
    ImagingSpec,
    grid_range,
    grids,
    internvl_grid,
    internvl_grids,
    onevision_grid,
)

from official_rules import (
    SIZES,
    official_internvl_ratio,
    official_onevision_pinpoints,
    official_select_best_resolution,
    random_sizes,
)


# ---------------------------------------------------------------------------------------------- OneVision
def test_onevision_candidates_are_the_36_grids_in_llava_next_order():
    assert len(ONEVISION_GRIDS) == 36 and len(set(ONEVISION_GRIDS)) == 36
    assert ONEVISION_GRIDS[:8] == ((1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 1), (2, 2))
    assert [(c * 384, r * 384) for c, r in ONEVISION_GRIDS] == official_onevision_pinpoints(384)
    assert grid_range(2, 3) == ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3))
    with pytest.raises(ValueError, match="empty"):
        grid_range(0, 3)


@pytest.mark.parametrize("tile", [384, 336, 112])
@pytest.mark.parametrize("size", SIZES)
def test_onevision_grid_matches_the_official_rule(size, tile):
    pins = official_onevision_pinpoints(tile)
    best = official_select_best_resolution(size, pins)
    if best is None:  # every candidate has effective area 0: ours keeps the least waste, the 1x1 grid
        assert onevision_grid(size, tile) == (1, 1)
        return
    assert onevision_grid(size, tile) == (best[0] // tile, best[1] // tile)


def test_onevision_grid_matches_transformers_with_its_own_pinpoint_order():
    """transformers lists the same 36 pinpoints as (height, width) with the height in the outer loop; the
    order differs from LLaVA-NeXT's, the chosen grid never does (no exact tie between a grid and its
    transpose survives: a smaller square grid always does at least as well)."""
    from transformers import LlavaOnevisionConfig
    from transformers.image_processing_utils import select_best_resolution as hf_select

    hf_pins = LlavaOnevisionConfig().image_grid_pinpoints
    assert sorted(map(tuple, hf_pins)) == sorted(official_onevision_pinpoints(384))
    for w, h in SIZES + random_sizes(400, seed=3):
        if official_select_best_resolution((w, h), official_onevision_pinpoints(384)) is None:
            continue
        hf_h, hf_w = hf_select((h, w), hf_pins)
        assert onevision_grid((w, h), 384) == (hf_w // 384, hf_h // 384), (w, h)


# ---------------------------------------------------------------------------------------------- InternVL
@pytest.mark.parametrize("max_num", [1, 6, 12])
@pytest.mark.parametrize("size", SIZES)
def test_internvl_grid_matches_the_official_rule(size, max_num):
    for tile in (448, 336, 112):
        assert internvl_grid(size, tile, max_num) == official_internvl_ratio(size, tile, max_num), (size, tile)


def test_internvl_grid_matches_on_random_sizes_and_every_max_num():
    for k, (w, h) in enumerate(random_sizes(300, seed=5)):
        max_num = 1 + k % 24
        assert internvl_grid((w, h), 448, max_num) == official_internvl_ratio((w, h), 448, max_num)


@pytest.mark.parametrize("size,tile,max_num,grid", [
    ((448, 448), 448, 12, (1, 1)),  # square, small: 1x1 (area 200704 is not > 0.5·448²·4)
    ((896, 448), 448, 12, (2, 1)),
    ((900, 900), 448, 12, (2, 2)),  # square ties move up while area > half the canvas: 810000 > 401408, < 903168
    ((1000, 1000), 448, 12, (3, 3)),  # 1e6 > 903168 = 0.5·448²·9
    ((2000, 2000), 448, 12, (3, 3)),  # 4e6 > 903168; 4x4 has 16 tiles, above 12
    ((1920, 1080), 336, 12, (4, 2)),  # 2:1 and 4:2 tie at |1.778 − 2|; 6:3 has 18 tiles
    ((50, 40), 112, 12, (4, 3)),  # closest aspect wins whatever the size: 12 tiles for a 50x40 image
    ((1, 9000), 448, 12, (1, 12)),
    ((9000, 1), 448, 6, (6, 1)),
    ((1, 1), 448, 12, (1, 1)),
])
def test_internvl_grid_examples(size, tile, max_num, grid):
    assert internvl_grid(size, tile, max_num) == grid


def test_internvl_candidates_by_tile_count_and_order_within_a_count_is_irrelevant():
    assert internvl_grids(4) == ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1))
    # The docstring's argument: two grids of equal count always have a grid with fewer tiles strictly
    # between them in aspect, so they are never tied as the closest — the set order cannot matter.
    for max_num in range(1, 41):
        cands = internvl_grids(max_num)
        for (c1, r1), (c2, r2) in itertools.combinations(cands, 2):
            if c1 * r1 != c2 * r2:
                continue
            lo, hi = sorted((c1 / r1, c2 / r2))
            assert any(lo < c / r < hi and c * r < c1 * r1 for c, r in cands)
    with pytest.raises(ValueError, match="min_tiles"):
        internvl_grids(0)


@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (5,)])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="size"):
        internvl_grid(bad, 448)


# ---------------------------------------------------------------------------------------------- the cut
def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_internvl_cut_squashes_to_the_canvas_and_adds_the_thumbnail_only_beside_2_tiles():
    s = 112
    spec = ImagingSpec(tile_size=s, grid_rule="internvl", max_tiles=12, canvas="stretch",
                       global_view="squash_if_tiled", local_tiles=True, mean=(0, 0, 0), std=(1, 1, 1))
    proc = HiResImageProcessor(spec)
    img = _photo(300, 200)
    views, rec = proc.preprocess_one(img)
    assert rec.grid == (3, 2) and rec.views == ("global",) + ("tile",) * 6
    assert rec.canvas_size == (336, 224) and rec.content_box == (0, 0, 336, 224)
    canvas = np.asarray(img.resize((336, 224), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    thumb = np.asarray(img.resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    np.testing.assert_allclose(views[0].permute(1, 2, 0).numpy(), thumb, atol=1e-6)
    for k in range(6):  # row-major: tile k covers column k % 3, row k // 3 of the squashed canvas
        i, j = divmod(k, 3)
        np.testing.assert_allclose(views[1 + k].permute(1, 2, 0).numpy(),
                                   canvas[i * s:(i + 1) * s, j * s:(j + 1) * s], atol=1e-6)
    # one tile: no thumbnail (it would be the same squashed image)
    views, rec = proc.preprocess_one(_photo(120, 110))
    assert rec.grid == (1, 1) and rec.views == ("tile",) and views.shape == (1, 3, s, s)
    batch = proc([_photo(120, 110), img, _photo(1, 900)])
    assert [r.num_views for r in batch.records] == [1, 7, 13] and batch.pixel_values.shape[0] == 21
    assert math.prod(batch.records[2].grid) == 12


def test_squash_if_tiled_needs_tiles():
    with pytest.raises(ValueError, match="squash_if_tiled"):
        ImagingSpec(tile_size=112, grid_rule="internvl", global_view="squash_if_tiled")


def test_onevision_cut_is_llava_next_anyres_over_36_grids():
    spec = ImagingSpec(tile_size=112, grid_rule="anyres", grid_candidates=ONEVISION_GRIDS, canvas="fit",
                       global_view="squash", local_tiles=True)
    for size in SIZES:
        rec = spec.record_for(size)
        assert rec.grid == onevision_grid(size, 112)
        assert rec.views == ("global",) + ("tile",) * math.prod(rec.grid)
        assert rec.canvas_size == (rec.grid[0] * 112, rec.grid[1] * 112)
    assert grids.anyres_grid((1920, 1080), ONEVISION_GRIDS, 384) == (5, 3)
