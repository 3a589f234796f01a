"""The processor: a flat batch of views for images of different sizes, with records."""

import pytest
import torch
from PIL import Image

from hires_vlm.imaging import HiResImageProcessor, ImagingSpec


@pytest.mark.parametrize("tile", [28, 112, 336])
def test_batches_images_of_different_sizes_with_records(tile):
    spec = ImagingSpec(tile_size=tile, grid_rule="anyres", local_tiles=True, global_view="squash")
    proc = HiResImageProcessor(spec)
    ims = [Image.new("RGB", (3 * tile, tile)), Image.new("L", (tile // 2, 2 * tile)), Image.new("RGBA", (tile, tile))]
    b = proc(ims)
    assert [r.grid for r in b.records] == [(3, 1), (1, 2), (1, 2)]
    assert b.views_per_image == [4, 3, 3]
    assert b.pixel_values.shape == (10, 3, tile, tile)
    assert b.records[0].views == ("global", "tile", "tile", "tile")
    assert b.records[1].index("tile") == [1, 2]


def test_view_order_and_kinds_for_every_view_kind():
    spec = ImagingSpec(tile_size=14, grid_rule="fixed", fixed_grid=(3, 2), canvas="pad_square", global_view="pad",
                       local_tiles=True, strided_tiles=True, lowres="canvas_bicubic")
    b = HiResImageProcessor(spec)([Image.new("RGB", (50, 30))])
    r = b.records[0]
    assert r.views == ("global",) + ("tile",) * 6 + ("strided",) * 6 + ("lowres",)
    assert b.pixel_values.shape == (14, 3, 14, 14)


def test_global_pad_uses_mean_colour_and_squash_does_not_pad():
    spec = ImagingSpec(tile_size=8, global_view="pad")
    b = HiResImageProcessor(spec)([Image.new("RGB", (16, 4), (255, 255, 255))])
    top_row = b.pixel_values[0, :, 0, 0]
    assert torch.allclose(top_row, torch.zeros(3), atol=0.02)  # mean colour normalises to ~0
    spec = ImagingSpec(tile_size=8, global_view="squash")
    b = HiResImageProcessor(spec)([Image.new("RGB", (16, 4), (255, 255, 255))])
    assert (b.pixel_values[0] > 1.5).all()


def test_pad_colour_is_the_truncated_mean_as_in_the_official_code():
    """LLaVA ``llava/mm_utils.py`` ``process_images``: ``expand2square(image, tuple(int(x * 255) for x in
    image_processor.image_mean))`` — truncated: (122, 116, 104) for CLIP, where rounding gives (123, 117, 104).
    INF-LLaVA's ``train.py`` and SliME's paper path call the same ``expand2square``."""
    import numpy as np

    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, ops

    assert ops.mean_fill(CLIP_MEAN) == (122, 116, 104)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 60, 3), dtype=np.uint8))
    square = Image.new("RGB", (60, 60), (122, 116, 104))
    square.paste(img, (0, 20))
    ref = np.asarray(square.resize((28, 28), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    ref = (torch.from_numpy(ref) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    got = HiResImageProcessor(ImagingSpec(tile_size=28, global_view="pad")).preprocess_one(img)[0][0]
    torch.testing.assert_close(got, ref.permute(2, 0, 1), atol=1e-5, rtol=0)


def test_record_without_pixels_equals_processed_record():
    spec = ImagingSpec(tile_size=112, grid_rule="anyres", local_tiles=True, global_view="squash")
    img = Image.new("RGB", (333, 177))
    assert spec.record_for(img.size) == HiResImageProcessor(spec)([img]).records[0]


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="grid_rule"):
        ImagingSpec(tile_size=112, grid_rule="diagonal")
    with pytest.raises(ValueError, match="no view"):
        ImagingSpec(tile_size=112, global_view="none")
    with pytest.raises(ValueError, match="tiles"):
        ImagingSpec(tile_size=112, local_tiles=True)


def test_spec_dict_round_trip():
    spec = ImagingSpec(tile_size=112, grid_rule="anyres", grid_candidates=((1, 1), (2, 3)), local_tiles=True)
    assert ImagingSpec.from_dict(spec.to_dict()) == spec
