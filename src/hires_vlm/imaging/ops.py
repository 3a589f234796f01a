"""Pixel operations: load, convert to RGB, pad, resize, normalise, cut tiles.

Pure functions on Pillow images and tensors; no ``nn.Module``. Resizing here is Pillow's bicubic
filter, which is antialiased when it shrinks (the CLIP processor's default), so a view made here
loses the high frequencies a real tower's preprocessing loses; :mod:`.resample` puts these and
their torch-kernel equivalents behind one interface for the processor.

Tensor legend used in this package: ``[v x c x s x s]`` views (v views, c = 3 channels, s = tile
size), ``[c x H x W]`` one canvas.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pixels above which an image is refused. Pillow warns at ~89M and refuses at ~179M pixels; we
# refuse clearly instead of letting a decompression bomb eat the host's memory.
MAX_IMAGE_PIXELS = 178_956_970
# Longest side an image is worked on at. The pixel limit alone does not bound memory: a 1 x 89M
# image is within it, but padding it to a square, or squashing it to S x S (Pillow resizes one axis
# at a time, so the intermediate is S x 89M), needs tens of GB. A longer image is first reduced,
# aspect kept, so that its long side is this (antialiased bicubic); every later buffer is then at
# most MAX_WORKING_SIDE² pixels (a pad-to-square canvas: 192 MiB of uint8). The official LLaVA /
# SliME / INF-LLaVA code has no such step (and runs out of memory on those images); below the
# bound — every photo up to 8192 px, 67 MP — the pixels are theirs.
MAX_WORKING_SIDE = 8192
# Longest side a file may have. Pillow keeps one pointer per row, so a 1 x 89M PNG (173 KB on disk,
# within the pixel limit) costs 1.8 GB to decode; past this side a file is refused before decoding.
MAX_IMAGE_SIDE = 65_536
EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # 1 (or none) is upright; 5–8 swap width and height


class ImageLoadError(ValueError):
    """An image file could not be used. The message names the file, the cause and the fix."""


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` fully (so truncation is detected here, not later) and return an RGB image."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageLoadError(f"image file not found: {path!r} (check the path and the image folder)")
    return _decode_checked(path, repr(path), max_pixels)


def load_image_bytes(data: bytes, name: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """:func:`load_image` for an encoded image held in memory (e.g. from a data URL); ``name`` is what
    the error messages call it. The same limits: the size is read from the header and refused before
    any pixel is decoded."""
    return _decode_checked(io.BytesIO(data), name, max_pixels)


def _decode_checked(source, name: str, max_pixels: int) -> Image.Image:
    # Other libraries switch Pillow to filling truncated files with grey (lmms-eval's task module sets
    # ImageFile.LOAD_TRUNCATED_IMAGES = True at import); a truncated file is an error here, always.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        f"image {name} has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; "
                        "downscale it first or raise max_pixels"
                    )
                if max(w, h) > MAX_IMAGE_SIDE:
                    raise ImageLoadError(
                        f"image {name} is {w}x{h}: a side longer than {MAX_IMAGE_SIDE} px cannot be decoded in "
                        "bounded memory; crop or downscale it first"
                    )
                img.load()
                return to_rgb(img)
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow names an in-memory file by its object's repr; say what it means instead
        detail = ("its bytes are in no image format Pillow reads"
                  if isinstance(exc, UnidentifiedImageError) and not isinstance(source, str) else exc)
        raise ImageLoadError(f"cannot read image {name}: {detail}; is it an image file Pillow supports?") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"image {name} is corrupt or truncated ({exc}); re-download or remove it") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Apply the EXIF orientation and convert any Pillow mode to 8-bit RGB.

    Transparency (RGBA, LA, P with a transparent index) is composited over ``background``
    (white, as transformers does); 16- and 32-bit greyscale (I;16, I, F) is rescaled to 0–255
    from its own range instead of being clipped; CMYK, YCbCr, LAB, HSV and 1-bit go through
    Pillow's converters. An image longer than :data:`MAX_WORKING_SIDE` is reduced to it
    (:func:`working_size`), so that no later step needs unbounded memory.
    """
    # exif_transpose copies the whole image even when there is nothing to turn; look first.
    if _orientation(img) in _TRANSPOSING_ORIENTATIONS:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block must not lose the image
            pass
    return _bounded(_to_rgb_mode(img, background))


def working_size(size: Sequence[int], max_side: int = MAX_WORKING_SIDE) -> tuple[int, int]:
    """The (width, height) an image of ``size`` is worked on at: itself, or reduced (aspect kept, each
    side at least 1 px) so that its long side is ``max_side``."""
    w, h = int(size[0]), int(size[1])
    if max(w, h) <= max_side:
        return w, h
    if w >= h:
        return max_side, max(1, round(h * max_side / w))
    return max(1, round(w * max_side / h)), max_side


def _bounded(img: Image.Image) -> Image.Image:
    size = working_size(img.size)
    # reducing_gap: a box reduction by an integer factor first, so that the bicubic kernel of a
    # 10 000-fold reduction is never built (Pillow refuses it with MemoryError).
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _to_rgb_mode(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else (float(arr.min()), float(arr.max()))
        if mode in ("I", "F") and hi - lo < 1e-12:
            hi = lo + 1.0
        arr = np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent or unreadable)."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not lose the image
        return 1


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) that :func:`to_rgb` gives this image (EXIF orientations 5–8 swap the sides,
    :func:`working_size` bounds the long side), without converting any pixel."""
    w, h = img.size
    return working_size((h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h))


def mean_fill(mean: Sequence[float]) -> tuple[int, int, int]:
    """The 0–255 colour of a normalisation mean, LLaVA's ``expand2square`` background.

    Truncated, not rounded, as every official caller writes it —
    ``tuple(int(x * 255) for x in image_processor.image_mean)`` (LLaVA ``llava/mm_utils.py``
    ``process_images``; INF-LLaVA ``train.py`` ``LazySupervisedDataset``; transformers'
    LLaVA-OneVision ``pad_to_square``): (122, 116, 104) for the CLIP mean, not (123, 117, 104).
    """
    return tuple(int(m * 255) for m in mean)  # type: ignore[return-value]


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side symmetrically (extra pixel at the end) so the image is square."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def resize(img: Image.Image, size: Sequence[int]) -> Image.Image:
    """Resize to exactly (width, height) with antialiased bicubic."""
    size = (int(size[0]), int(size[1]))
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC)


def fit_size(image_size: Sequence[int], canvas: Sequence[int]) -> tuple[int, int]:
    """Size of the image scaled to fit ``canvas`` with its aspect kept (LLaVA: ceil, capped)."""
    w, h = image_size
    cw, ch = canvas
    sw, sh = cw / w, ch / h
    if sw < sh:
        return cw, min(math.ceil(h * sw), ch)
    return min(math.ceil(w * sh), cw), ch


def content_box(image_size: Sequence[int], canvas: Sequence[int]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the fitted image centred on the canvas."""
    nw, nh = fit_size(image_size, canvas)
    left, top = (canvas[0] - nw) // 2, (canvas[1] - nh) // 2
    return left, top, left + nw, top + nh


def resize_and_pad(img: Image.Image, canvas: Sequence[int], fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Resize keeping the aspect ratio to fit ``canvas`` (w, h), centre it on ``fill`` padding."""
    canvas = (int(canvas[0]), int(canvas[1]))
    left, top, right, bottom = content_box(img.size, canvas)
    scaled = resize(img, (right - left, bottom - top))
    if scaled.size == canvas:
        return scaled
    out = Image.new("RGB", canvas, fill)
    out.paste(scaled, (left, top))
    return out


def normalize(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB image → float tensor ``[c x H x W]``, ``(x/255 − mean)/std``.

    Done in NumPy: for one image it is as fast as torch and starts no intra-op thread pool, which
    matters in data-loader workers on small machines.
    """
    arr = np.asarray(img)  # [H x W x c] uint8
    out = np.empty((arr.shape[2], arr.shape[0], arr.shape[1]), dtype=np.float32)
    normalize_into(out, arr.transpose(2, 0, 1), mean, std)
    return torch.from_numpy(out)


def normalize_into(out: np.ndarray, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Write ``(x/255 − mean)/std`` of uint8 ``pixels [... x c x h x w]`` (any strides) into the
    float32 array ``out`` of the same shape; returns ``out``.

    The layout change (HWC → CHW, tile cutting) is done on the uint8 pixels, a quarter of the bytes
    of the float result, and the two float passes then run over contiguous memory. The arithmetic
    is ``x · (1/(255·std)) − mean/std`` in float32, so every view equals the normalised canvas's.
    """
    if out.shape != pixels.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {pixels.shape}, got {out.dtype} {out.shape}")
    scale, shift = _norm_coefficients(mean, std)
    np.multiply(np.ascontiguousarray(pixels), scale, out=out)
    np.subtract(out, shift, out=out)
    return out


def _norm_coefficients(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 ``1/(255·std)`` and ``mean/std`` shaped ``[c x 1 x 1]``."""
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(-1, 1, 1)
    shift = np.array([m / s for m, s in zip(mean, std)], dtype=np.float32).reshape(-1, 1, 1)
    return scale, shift


def tile_pixels(canvas: np.ndarray, cols: int, rows: int, tile_size: int, strided: bool = False) -> np.ndarray:
    """Tiles of an ``[H x W x c]`` pixel array as a view ``[rows x cols x c x S x S]`` (no copy).

    Row-major like :func:`cut_tiles` (contiguous) or :func:`cut_strided` (``strided=True``: tile
    (i, j) takes pixel (x, y) = (j + u·cols, i + v·rows)); flattening the first two axes gives the
    same ``[rows·cols x c x S x S]`` as those functions give for the ``[c x H x W]`` canvas.
    """
    height, width, c = canvas.shape
    s = tile_size
    if height != rows * s or width != cols * s:
        raise ValueError(f"canvas {width}x{height} is not a {cols}x{rows} grid of {s}px tiles")
    if strided:  # y = v·rows + i, x = u·cols + j  →  [v, i, u, j, c] → [i, j, c, v, u]
        return canvas.reshape(s, rows, s, cols, c).transpose(1, 3, 4, 0, 2)
    return canvas.reshape(rows, s, cols, s, c).transpose(0, 2, 4, 1, 3)


def cut_tiles(canvas: torch.Tensor, cols: int, rows: int, tile_size: int) -> torch.Tensor:
    """Contiguous tiles, row-major: ``[c x rows·S x cols·S]`` → ``[rows·cols x c x S x S]``.

    Tile k = i·cols + j holds pixels ``[i·S:(i+1)·S, j·S:(j+1)·S]``.
    """
    c, height, width = canvas.shape
    s = tile_size
    if height != rows * s or width != cols * s:
        raise ValueError(f"canvas {width}x{height} is not a {cols}x{rows} grid of {s}px tiles")
    tiles = canvas.reshape(c, rows, s, cols, s).permute(1, 3, 0, 2, 4)
    return tiles.reshape(rows * cols, c, s, s)


def cut_strided(canvas: torch.Tensor, cols: int, rows: int, tile_size: int) -> torch.Tensor:
    """Strided ("global") tiles, row-major: tile (i, j) takes pixel (x, y) = (j + u·cols, i + v·rows).

    Each tile is a subsampled view of the whole image; together they hold every pixel once.
    ``[c x rows·S x cols·S]`` → ``[rows·cols x c x S x S]``.
    """
    c, height, width = canvas.shape
    s = tile_size
    if height != rows * s or width != cols * s:
        raise ValueError(f"canvas {width}x{height} is not a {cols}x{rows} grid of {s}px tiles")
    # y = v·rows + i, x = u·cols + j  →  [c, v, i, u, j] → [i, j, c, v, u]
    tiles = canvas.reshape(c, s, rows, s, cols).permute(2, 4, 0, 1, 3)
    return tiles.reshape(rows * cols, c, s, s)


def merge_tiles(tiles: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """Inverse of ``cut_tiles`` for any trailing layout: ``[rows·cols x c x h x w]`` → ``[c x rows·h x cols·w]``."""
    n, c, h, w = tiles.shape
    if n != rows * cols:
        raise ValueError(f"{n} tiles cannot form a {cols}x{rows} grid")
    return tiles.reshape(rows, cols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def merge_strided(tiles: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """Inverse of ``cut_strided`` (de-interleaving): ``[rows·cols x c x h x w]`` → ``[c x rows·h x cols·w]``.

    Element (v, u) of tile (i, j) lands at row v·rows + i, column u·cols + j.
    """
    n, c, h, w = tiles.shape
    if n != rows * cols:
        raise ValueError(f"{n} tiles cannot form a {cols}x{rows} grid")
    return tiles.reshape(rows, cols, c, h, w).permute(2, 3, 0, 4, 1).reshape(c, h * rows, w * cols)
