"""Qwen2-VL's native-resolution resize rule and patch order against their official description.

Official: transformers ``src/transformers/models/qwen2_vl/image_processing_qwen2_vl.py``, function
``smart_resize(height, width, factor=28, min_pixels=56*56, max_pixels=14*14*4*1280)``: (1) each
side rounded to the nearest multiple of ``factor``; (2) if the area exceeds ``max_pixels``, both
sides scaled by ``β = sqrt(H·W / max_pixels)`` and *floored* to the factor (at least one factor);
(3) else if it falls below ``min_pixels``, scaled by ``β = sqrt(min_pixels / (H·W))`` and *ceiled*;
an absolute aspect ratio above 200 raises. Patch order (``Qwen2VLImageProcessor``): the frame
repeated ``temporal_patch_size`` times, patches grouped by 2×2 merge window, each flattened as
(channel, time, row, column).

The reference below is written from that description in exact integer arithmetic (no floating
point square root); where transformers is importable, its own ``smart_resize`` is checked too.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor, ImagingSpec, native_size, patchify, smart_resize

from official_rules import SIZES



def transformers_qwen2vl_module():
    """transformers' Qwen2-VL image processing module: the torchvision one, or its PIL twin (same ``smart_resize``)."""
    for name in ("image_processing_qwen2_vl", "image_processing_pil_qwen2_vl"):
        try:
            return __import__(f"transformers.models.qwen2_vl.{name}", fromlist=["smart_resize"])
        except ImportError:
            continue
    pytest.skip("transformers' Qwen2-VL image processing is not importable here")


def reference_resize(width, height, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    """(width, height) → (width, height), from the description above; exact arithmetic."""
    if Fraction(max(width, height), min(width, height)) > 200:
        raise ValueError("aspect")
    w = factor * round(Fraction(width, factor))  # round half to even, as Python's round
    h = factor * round(Fraction(height, factor))
    area = width * height
    if w * h > max_pixels:
        # side / β / factor = sqrt(side² · max_pixels / area) / factor; floor of a square root = isqrt of the floor
        w = max(factor, factor * math.isqrt(width * width * max_pixels // (area * factor * factor)))
        h = max(factor, factor * math.isqrt(height * height * max_pixels // (area * factor * factor)))
    elif w * h < min_pixels:
        def ceil_sqrt(num, den):
            r = math.isqrt(num // den)
            return r if r * r * den == num else r + 1  # r² ≤ num/den; equal only when exactly a square

        w = factor * ceil_sqrt(width * width * min_pixels, area * factor * factor)
        h = factor * ceil_sqrt(height * height * min_pixels, area * factor * factor)
    return w, h


NATIVE_SIZES = [s for s in SIZES if max(s) / min(s) <= 200] + [
    (27, 27), (28, 28), (42, 42), (55, 57), (56, 56), (14, 200), (200, 14), (2800, 14), (14, 2800),
    (5600, 28), (3000, 2000), (1365, 1024), (4096, 4096), (8000, 6000), (200, 1), (1, 200), (10, 10),
]


def test_at_least_thirty_sizes_with_extremes():
    assert len(NATIVE_SIZES) >= 30
    assert any(max(s) / min(s) >= 100 for s in NATIVE_SIZES) and any(max(s) <= 10 for s in NATIVE_SIZES)


@pytest.mark.parametrize("size", NATIVE_SIZES)
def test_native_size_matches_the_description(size):
    got = native_size(size)
    assert got == reference_resize(*size), size
    w, h = got
    assert w % 28 == 0 and h % 28 == 0 and w >= 28 and h >= 28


def test_reference_and_ours_agree_on_random_sizes_and_bounds():
    rng = random.Random(0)
    for _ in range(500):
        size = (rng.randint(1, 5000), rng.randint(1, 5000))
        if max(size) / min(size) > 200:
            continue
        lo = rng.choice([56 * 56, 28 * 28 * 4, 100 * 100])
        hi = rng.choice([28 * 28 * 16, 28 * 28 * 256, 28 * 28 * 1280])
        assert native_size(size, 14, 2, lo, hi) == reference_resize(*size, 28, lo, hi), (size, lo, hi)


def test_transformers_smart_resize_directly():
    mod = transformers_qwen2vl_module()
    rng = random.Random(1)
    sizes = NATIVE_SIZES + [(rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(2000)]
    checked = 0
    for w, h in sizes:
        if max(w, h) / min(w, h) > 200:
            continue
        for factor, lo, hi in ((28, 56 * 56, 28 * 28 * 1280), (28, 28 * 28 * 64, 28 * 28 * 256), (32, 32 * 32, 32 ** 2 * 64)):
            assert smart_resize(h, w, factor, lo, hi) == mod.smart_resize(h, w, factor, lo, hi), (w, h, factor)
            checked += 1
    assert checked > 3000


@pytest.mark.parametrize("size", [(201, 1), (1, 201), (4021, 20), (10000, 3)])
def test_aspect_above_200_is_refused(size):
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        native_size(size)
    with pytest.raises(ValueError):
        reference_resize(*size)
    spec = ImagingSpec(tile_size=28, grid_rule="native", global_view="none")
    with pytest.raises(ValueError, match="aspect ratio"):
        spec.record_for(size)


def test_tiny_images_grow_to_min_pixels():
    for size in ((1, 1), (5, 5), (27, 27), (20, 30)):
        w, h = native_size(size)
        assert w * h >= 56 * 56 and (w, h) == reference_resize(*size)
    assert native_size((1, 1)) == (56, 56)


def test_record_geometry():
    spec = ImagingSpec(tile_size=28, grid_rule="native", global_view="none")
    rec = spec.record_for((1920, 1080))
    w, h = native_size((1920, 1080))
    assert rec.canvas_size == (w, h) and rec.grid == (w // 14, h // 14) and rec.views == ("native",)
    assert rec.num_views == (w // 14) * (h // 14) and rec.is_native  # one pixel_values row per patch
    assert spec.grid_for((1920, 1080)) == rec.grid


@pytest.mark.parametrize("bad,msg", [
    (dict(min_pixels=10_000, max_pixels=100), "must not exceed max_pixels"),
    (dict(patch_size=0), "patch_size must be at least 1"),
    (dict(global_view="pad"), "takes no tiles, global"),
])
def test_bad_native_specs(bad, msg):
    kw = dict(tile_size=28, grid_rule="native", global_view="none")
    kw.update(bad)
    with pytest.raises(ValueError, match=msg):
        ImagingSpec(**kw)


def reference_patches(image, p, m, t):
    """Patch (window (I, J), position (a, b) in it) → row k; values [c, time, y, x] of pixel (Ip·m + a·p + y, …)."""
    c, height, width = image.shape
    gh, gw = height // p, width // p
    rows = []
    for wi in range(gh // m):
        for wj in range(gw // m):
            for a in range(m):
                for b in range(m):
                    y0, x0 = (wi * m + a) * p, (wj * m + b) * p
                    patch = image[:, y0:y0 + p, x0:x0 + p]  # [c x p x p]
                    rows.append(np.repeat(patch[:, None], t, axis=1).reshape(-1))
    return np.stack(rows)


def test_patch_order():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 56, 84)).astype(np.float32)
    got = patchify(image, 14, 2, 2)
    assert got.shape == (4 * 6, 3 * 2 * 14 * 14)
    assert np.array_equal(got.numpy(), reference_patches(image, 14, 2, 2))
    assert np.array_equal(patchify(image, 7, 4, 1).numpy(), reference_patches(image, 7, 4, 1))
    with pytest.raises(ValueError, match="not a multiple of patch·merge"):
        patchify(image[:, :50], 14, 2, 2)


def test_processor_against_transformers_qwen2vl_processor():
    """At an image already at its native size (no resize), our patches equal transformers' Qwen2-VL processor's."""
    mod = transformers_qwen2vl_module()
    from PIL import Image

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (56, 112, 3), dtype=np.uint8))
    ours = HiResImageProcessor(ImagingSpec(tile_size=28, grid_rule="native", global_view="none", mean=CLIP_MEAN,
                                           std=CLIP_STD))([image])
    try:
        cls = getattr(mod, "Qwen2VLImageProcessor", None) or getattr(mod, "Qwen2VLImageProcessorPil")
        theirs = cls()(images=[image], do_resize=False, return_tensors="pt")
    except Exception as exc:  # an incompatible transformers processor API: the order is tested above
        pytest.skip(f"transformers' Qwen2VLImageProcessor could not run here: {exc}")
    assert theirs["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert ours.records[0].grid == (8, 4)
    assert torch.allclose(ours.pixel_values, theirs["pixel_values"].float(), atol=1e-5)
