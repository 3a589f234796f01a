"""llava_hd visual tokens = what transformers' LlavaNext functions give, for the same pinpoints,
tile size and image size (pinpoints flipped: transformers reads them as (height, width))."""

import random

import pytest
from transformers import LlavaNextImageProcessor, LlavaNextProcessor

from hires_vlm.imaging import flip_pairs
from hires_vlm.methods import LlavaHDConfig
from hires_vlm.text import build_bpe_tokenizer


def _hf_processor(pinpoints_hw, tile, patch):
    ip = LlavaNextImageProcessor(image_grid_pinpoints=pinpoints_hw, size={"shortest_edge": tile},
                                 crop_size={"height": tile, "width": tile})
    return LlavaNextProcessor(image_processor=ip, tokenizer=build_bpe_tokenizer(), patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=0,
                              image_token="<image>")


def _sizes(n, seed):
    rng = random.Random(seed)
    sizes = [(300, 200), (640, 480), (899, 1024), (672, 672), (1, 1), (13, 900), (3000, 2000), (336, 336)]
    while len(sizes) < n:
        w = rng.choice([rng.randint(1, 400), rng.randint(400, 4000)])
        h = rng.choice([rng.randint(1, 400), rng.randint(400, 4000)])
        sizes.append((w, h))
    return sizes + [(h, w) for w, h in sizes]  # both orientations


GRIDS = {
    "llava_next_default": ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)),
    "up_to_3x3": tuple((c, r) for c in range(1, 4) for r in range(1, 4)),
}


@pytest.mark.parametrize("tile,patch", [(336, 14), (112, 14), (224, 16)])
@pytest.mark.parametrize("grid_name", sorted(GRIDS))
def test_visual_tokens_match_transformers(tile, patch, grid_name):
    cands = GRIDS[grid_name]
    canvases_wh = [(c * tile, r * tile) for c, r in cands]
    hf = _hf_processor([list(p) for p in flip_pairs(canvases_wh)], tile, patch)
    cfg = LlavaHDConfig(grid_candidates=cands)
    spec = cfg.imaging_spec(tile, (0.5,) * 3, (0.5,) * 3)
    sizes = _sizes(30, seed=tile + len(cands))
    assert len(sizes) >= 60
    for w, h in sizes:
        ours = cfg.max_visual_tokens(spec.record_for((w, h)), tile // patch)
        theirs = hf._get_number_of_features(h, w, tile, tile)
        assert ours == theirs, (w, h)


def test_known_counts_from_the_ecosystem_survey():
    cfg = LlavaHDConfig(grid_candidates=((2, 1), (1, 2), (2, 2), (1, 3), (3, 1)))  # HF order, as (cols, rows)
    spec = cfg.imaging_spec(336, (0.5,) * 3, (0.5,) * 3)
    # transformers' docstring quotes 2634 for an image of height 899 and width 1024 (its (h, w) order).
    for (w, h), n in {(300, 200): 1464, (200, 300): 984, (640, 480): 2340, (1024, 899): 2634, (672, 672): 2928}.items():
        assert cfg.max_visual_tokens(spec.record_for((w, h)), 24) == n
