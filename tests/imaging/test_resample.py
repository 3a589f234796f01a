"""The two resamplers: Pillow (the official code's pixels) and torch (transformers' fast processors' pixels)."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor, ImagingSpec, ops
from hires_vlm.imaging.resample import PillowPixels, Resampler, TorchPixels
from hires_vlm.methods import PRESETS, resolve_method_config

# One grey level after CLIP normalisation is 1/(255·std) ≤ 0.0146; the kernels round differently by ≤ 2 levels.
ONE_LEVEL = 1 / (255 * min(CLIP_STD)) + 1e-5
TWO_LEVELS = 2 / (255 * min(CLIP_STD)) + 1e-5


def textured(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([127 + 110 * np.sin(x / 13.0 + c) * np.cos(y / 19.0) for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


SIZES = [(1, 1), (1, 300), (300, 1), (7, 5), (336, 336), (500, 200), (900, 2400)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_torch_resampler_cuts_the_same_and_stays_within_two_grey_levels_of_pillow(preset):
    spec = resolve_method_config(preset).imaging_spec(112, CLIP_MEAN, CLIP_STD)
    pil, fast = HiResImageProcessor(spec), HiResImageProcessor(dataclasses.replace(spec, resampler="torch"))
    # native resolution (qwen2vl) refuses an aspect ratio above 200, as Qwen2-VL does (tests/imaging/test_native.py)
    sizes = [s for s in SIZES if not spec.is_native or max(s) / min(s) <= 200]
    images = [textured(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    a, b = pil(images), fast(images)
    assert a.records == b.records
    assert a.pixel_values.shape == b.pixel_values.shape
    diff = (a.pixel_values - b.pixel_values).abs()
    assert float(diff.max()) <= TWO_LEVELS
    assert float((diff > ONE_LEVEL).float().mean()) < 0.001  # all but a few pixels agree exactly or by one level


def test_torch_resize_is_torchs_uint8_antialiased_bicubic_and_leaves_its_input_alone():
    img = textured(301, 177)
    arr = np.asarray(img)  # read-only, as Pillow hands it out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = TorchPixels.resize(arr, (120, 50))
    ref = F.interpolate(torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].contiguous(), size=(50, 120),
                        mode="bicubic", antialias=True, align_corners=False)[0].permute(1, 2, 0).numpy()
    assert out.shape == (50, 120, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref)
    assert TorchPixels.resize(arr, (301, 177)) is arr  # same size: no work
    pil = np.asarray(img.resize((120, 50), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(pil - out.astype(int)).max() <= 2


@pytest.mark.parametrize("fill", [(0, 0, 0), (122, 116, 104), (255, 255, 255)])
@pytest.mark.parametrize("size,canvas,offset", [((30, 20), (50, 20), (10, 0)), ((30, 20), (30, 44), (0, 12)),
                                                ((17, 9), (40, 31), (11, 5)), ((30, 20), (30, 20), (0, 0))])
def test_array_padding_matches_pillow_paste_exactly(size, canvas, offset, fill):
    img = textured(*size)
    want = np.asarray(PillowPixels.place(img, canvas, offset, fill))
    got = TorchPixels.place(np.asarray(img), canvas, offset, fill)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size", [(40, 25), (25, 40), (33, 33)])
def test_array_square_expansion_and_crop_match_pillow(size):
    img = textured(*size)
    fill = ops.mean_fill(CLIP_MEAN)
    np.testing.assert_array_equal(TorchPixels.expand_to_square(np.asarray(img), fill),
                                  np.asarray(ops.expand_to_square(img, fill)))
    box = (3, 5, 21, 19)
    np.testing.assert_array_equal(TorchPixels.crop(np.asarray(img), box), np.asarray(img.crop(box)))


def test_resampler_is_part_of_the_spec_and_bad_values_are_named():
    spec = ImagingSpec(tile_size=28, resampler="torch")
    assert spec.resampler is Resampler.TORCH
    assert ImagingSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["resampler"] == "torch"
    assert ImagingSpec(tile_size=28).resampler is Resampler.PILLOW
    with pytest.raises(ValueError, match="resampler='bilinear' is not valid; choose one of 'pillow', 'torch'"):
        ImagingSpec(tile_size=28, resampler="bilinear")


def test_torch_resampler_handles_every_mode_the_pillow_one_does():
    spec = ImagingSpec(tile_size=28, grid_rule="anyres", local_tiles=True, global_view="pad",
                       resampler="torch")
    ims = [Image.new("L", (50, 20), 90), Image.new("RGBA", (20, 61), (9, 9, 9, 0)), Image.new("P", (33, 33)),
           Image.new("I;16", (40, 30), 40000), Image.new("CMYK", (28, 28))]
    b = HiResImageProcessor(spec)(ims)
    assert torch.isfinite(b.pixel_values).all()
    ref = HiResImageProcessor(dataclasses.replace(spec, resampler="pillow"))(ims)
    assert float((b.pixel_values - ref.pixel_values).abs().max()) <= TWO_LEVELS
