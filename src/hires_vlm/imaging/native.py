"""Native dynamic resolution (Qwen2-VL): one variable-size patch grid per image, no tiles.

Same convention as :mod:`.grids`: sizes are (width, height), grids (columns, rows) — here of ViT
*patches*, not tiles.

* :func:`smart_resize` / :func:`native_size` – Qwen2-VL's resize rule (transformers
  ``models/qwen2_vl/image_processing_qwen2_vl.py``, function ``smart_resize``): each side rounded
  to the nearest multiple of ``factor = patch_size · merge_size`` (28 for Qwen2-VL); if the area
  then exceeds ``max_pixels`` both sides are scaled by ``β = sqrt(H·W / max_pixels)`` and floored
  to the factor (never below one factor), if it falls under ``min_pixels`` they are scaled by
  ``β = sqrt(min_pixels / (H·W))`` and ceiled; an aspect ratio above 200 is refused.
* :func:`patchify` – the resized image, repeated ``temporal_patch_size`` times as Qwen2-VL does
  for a still image, as flattened patches ``[(H/p)·(W/p) x c·T·p·p]`` in the order Qwen2-VL's
  vision model expects: merge windows (``merge_size`` × ``merge_size`` patches) row-major, the
  patches of one window consecutive (row-major inside the window), each patch's values in
  (channel, time, row, column) order. Qwen2-VL's ``PatchMerger`` then concatenates each window's
  patches into one token, so an image gets ``(H/28)·(W/28)`` visual tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .grids import _check_size

#: Qwen2-VL's defaults: 14-px patches, 2×2 merge, 2 frames per temporal patch, [56², 28²·1280] pixels.
QWEN2VL_PATCH = 14
QWEN2VL_MERGE = 2
QWEN2VL_TEMPORAL = 2
QWEN2VL_MIN_PIXELS = 56 * 56
QWEN2VL_MAX_PIXELS = 28 * 28 * 1280
MAX_ASPECT = 200


def smart_resize(height: int, width: int, factor: int = QWEN2VL_PATCH * QWEN2VL_MERGE,
                 min_pixels: int = QWEN2VL_MIN_PIXELS, max_pixels: int = QWEN2VL_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's rule, with its argument order: ``(height, width)`` → ``(new_height, new_width)``.

    The first rounding is Python's ``round`` (halves to even), as in the official function; the
    scaled sides use floating point ``floor`` / ``ceil`` as it does, so results agree bit for bit.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got (height={height}, width={width})")
    if factor < 1 or min_pixels < 1 or max_pixels < min_pixels:
        raise ValueError(f"native resize needs factor ≥ 1 and 1 ≤ min_pixels ≤ max_pixels, got factor {factor}, "
                         f"min_pixels {min_pixels}, max_pixels {max_pixels}")
    aspect = max(height, width) / min(height, width)
    if aspect > MAX_ASPECT:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT}, got {aspect} "
                         f"(image {width}x{height}, width x height); crop or pad the image first")
    new_h, new_w = factor * round(height / factor), factor * round(width / factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, factor * math.floor(height / beta / factor))
        new_w = max(factor, factor * math.floor(width / beta / factor))
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = factor * math.ceil(height * beta / factor)
        new_w = factor * math.ceil(width * beta / factor)
    return new_h, new_w


def native_size(image_size: Sequence[int], patch_size: int = QWEN2VL_PATCH, merge_size: int = QWEN2VL_MERGE,
                min_pixels: int = QWEN2VL_MIN_PIXELS, max_pixels: int = QWEN2VL_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) an image of (width, height) is resized to: :func:`smart_resize` at factor p·m."""
    w, h = _check_size(image_size)
    new_h, new_w = smart_resize(h, w, patch_size * merge_size, min_pixels, max_pixels)
    return new_w, new_h


def native_patch_grid(image_size: Sequence[int], patch_size: int = QWEN2VL_PATCH, merge_size: int = QWEN2VL_MERGE,
                      min_pixels: int = QWEN2VL_MIN_PIXELS, max_pixels: int = QWEN2VL_MAX_PIXELS) -> tuple[int, int]:
    """(columns, rows) of patches of the resized image; both are multiples of ``merge_size``."""
    w, h = native_size(image_size, patch_size, merge_size, min_pixels, max_pixels)
    return w // patch_size, h // patch_size


def patchify(image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """A normalised image ``[c x H x W]`` (float) → ``[(H/p)·(W/p) x c·T·p·p]`` in Qwen2-VL's patch order.

    H and W must be multiples of ``patch_size · merge_size``. The one frame is repeated T times.
    """
    c, height, width = image.shape
    p, m, t = patch_size, merge_size, temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"a native view of {width}x{height} px is not a multiple of patch·merge = {p * m}")
    rows, cols = height // p, width // p
    x = torch.from_numpy(np.ascontiguousarray(image))
    # [c x rows/m x m x p x cols/m x m x p]: window row, row in window, pixel row; same for columns
    x = x.reshape(c, rows // m, m, p, cols // m, m, p)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [rows/m x cols/m x m x m x c x p x p]
    x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # the frame repeated along time, after the channel
    return x.reshape(rows * cols, c * t * p * p).contiguous()
