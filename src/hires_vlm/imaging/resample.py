"""The two resamplers a processor can make its views with, behind one set of pixel operations.

* ``pillow`` (default): Pillow's antialiased bicubic filter on ``PIL.Image`` objects — the pixels of
  the original LLaVA / SliME / INF-LLaVA code and of transformers' PIL image processors
  (``LlavaNextImageProcessorPil``). Every checkpoint imported from those codebases saw these pixels.
* ``torch``: torch's antialiased bicubic ``interpolate`` on uint8 ``[H x W x c]`` arrays (run
  channels-last, the layout its vectorised uint8 kernel is written for) — the kernel transformers'
  default, torchvision-backed image processors (``LlavaNextImageProcessor``) run on CPU. It is 4–5×
  faster than Pillow on large images and differs from Pillow's pixels by 1–2 grey levels (fixed-point
  rounding); ``benchmarks/bench_preprocess.py`` measures both.

Both expose the same operations, so the processor describes a cut once. Sizes are (width, height).
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import ops


class Resampler(str, enum.Enum):
    PILLOW = "pillow"
    TORCH = "torch"


class PillowPixels:
    """Images stay ``PIL.Image`` objects until a view is read out with :meth:`array`."""

    name = Resampler.PILLOW

    @staticmethod
    def prepare(image: Image.Image) -> Image.Image:
        return image

    @staticmethod
    def size(image: Image.Image) -> tuple[int, int]:
        return image.size

    @staticmethod
    def resize(image: Image.Image, size: Sequence[int]) -> Image.Image:
        return ops.resize(image, size)

    @staticmethod
    def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
        return ops.expand_to_square(image, fill)

    @staticmethod
    def place(image: Image.Image, canvas: Sequence[int], offset: Sequence[int], fill: tuple[int, int, int]):
        """``image`` pasted at ``offset`` (left, top) on a new ``canvas`` (w, h) filled with ``fill``."""
        if image.size == tuple(canvas):
            return image
        out = Image.new("RGB", (int(canvas[0]), int(canvas[1])), fill)
        out.paste(image, (int(offset[0]), int(offset[1])))
        return out

    @staticmethod
    def crop(image: Image.Image, box: Sequence[int]) -> Image.Image:
        return image.crop(tuple(int(v) for v in box))

    @staticmethod
    def array(image: Image.Image) -> np.ndarray:
        """``[H x W x c]`` uint8 pixels."""
        return np.asarray(image)


class TorchPixels:
    """Images become one ``[H x W x c]`` uint8 array (a single copy out of Pillow); every operation
    after that works on arrays, and resizing runs torch's uint8 antialiased bicubic kernel."""

    name = Resampler.TORCH

    @staticmethod
    def prepare(image: Image.Image) -> np.ndarray:
        return np.asarray(image)

    @staticmethod
    def size(pixels: np.ndarray) -> tuple[int, int]:
        return int(pixels.shape[1]), int(pixels.shape[0])

    @staticmethod
    def resize(pixels: np.ndarray, size: Sequence[int]) -> np.ndarray:
        w, h = int(size[0]), int(size[1])
        if pixels.shape[0] == h and pixels.shape[1] == w:
            return pixels
        with warnings.catch_warnings():  # Pillow's arrays are read-only; the kernel only reads its input
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(pixels)
        # [1 x c x H x W] with channels-last strides and a batch stride of the whole image: the kernel then
        # allocates its output channels-last too (a batch stride of c makes it pick NCHW and repack).
        nchw = src[None].permute(0, 3, 1, 2)
        out = F.interpolate(nchw, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return out[0].permute(1, 2, 0).contiguous().numpy()  # already contiguous: no copy

    @staticmethod
    def expand_to_square(pixels: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
        h, w = pixels.shape[:2]
        if w == h:
            return pixels
        side = max(w, h)
        return TorchPixels.place(pixels, (side, side), ((side - w) // 2, (side - h) // 2), fill)

    @staticmethod
    def place(pixels: np.ndarray, canvas: Sequence[int], offset: Sequence[int], fill: tuple[int, int, int]):
        cw, ch = int(canvas[0]), int(canvas[1])
        h, w = pixels.shape[:2]
        if (w, h) == (cw, ch):
            return pixels
        c = pixels.shape[2]
        left, top = int(offset[0]), int(offset[1])
        if len(set(fill)) == 1:  # grey or black: one memset
            out = np.full((ch, cw, c), fill[0], dtype=np.uint8)
        else:  # a colour: fill the bands around the image with a pre-tiled row (a per-pixel broadcast is slow)
            out = np.empty((ch, cw, c), dtype=np.uint8)
            row = np.tile(np.asarray(fill, dtype=np.uint8), cw)
            flat = out.reshape(ch, cw * c)
            flat[:top] = row
            flat[top + h:] = row
            flat[top:top + h, :left * c] = row[:left * c]
            flat[top:top + h, (left + w) * c:] = row[(left + w) * c:]
        out[top:top + h, left:left + w] = pixels
        return out

    @staticmethod
    def crop(pixels: np.ndarray, box: Sequence[int]) -> np.ndarray:
        left, top, right, bottom = (int(v) for v in box)
        return pixels[top:bottom, left:right]

    @staticmethod
    def array(pixels: np.ndarray) -> np.ndarray:
        return pixels


PIXELS = {Resampler.PILLOW: PillowPixels, Resampler.TORCH: TorchPixels}
