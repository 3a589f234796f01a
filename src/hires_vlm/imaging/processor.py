"""The image processor: images of any size and mode → a flat batch of S×S views + a cut record each.

A method describes what it needs with an :class:`ImagingSpec` (grid rule, canvas, which views);
the processor turns a list of images into ``pixel_values [v x c x S x S]`` holding every view of
every image back to back — no padding views, no dummy views — and one :class:`CutRecord` per
image saying how it was cut. View order inside one image is fixed:
``[global] + contiguous tiles (row-major) + strided tiles (row-major) + [low-resolution]``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import grids, grids_more, native, ops
from .resample import PIXELS, Resampler

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class GridRule(str, enum.Enum):
    NONE = "none"  # no tiles (LLaVA-1.5)
    ANYRES = "anyres"  # LLaVA-NeXT select_best_resolution over grid_candidates
    SLIME_PAPER = "slime_paper"  # SliME paper: 1..max_cols × 1..max_rows
    UHD = "uhd"  # SliME official: 2..max_tiles+1 tiles
    FIXED = "fixed"  # INF-LLaVA official: always fixed_grid (3×3)
    FLOOR = "floor"  # INF-LLaVA paper: ⌊W/S⌋ × ⌊H/S⌋, capped
    INTERNVL = "internvl"  # InternVL dynamic tiling: closest aspect among 1..max_tiles tiles
    NATIVE = "native"  # Qwen2-VL: no tiles, the whole image resized by smart_resize to one patch grid


class Canvas(str, enum.Enum):
    FIT = "fit"  # resize keeping aspect to fit the grid canvas, centre-pad black (LLaVA-NeXT)
    PAD_SQUARE = "pad_square"  # pad to square with the mean colour, then resize to the canvas (INF official)
    STRETCH = "stretch"  # resize to the canvas exactly (aspect changes slightly; INF paper)
    CENTER_CROP = "center_crop"  # cover the canvas keeping aspect, crop the centre (CLIP processor; INF stage 1)


class GlobalView(str, enum.Enum):
    NONE = "none"
    PAD = "pad"  # pad to square with the mean colour, resize to S (LLaVA-1.5 "pad")
    SQUASH = "squash"  # resize to S×S, aspect distorted (LLaVA-NeXT base image)
    SQUASH_IF_TILED = "squash_if_tiled"  # the squashed view, only when there are 2+ tiles (InternVL thumbnail)


class LowRes(str, enum.Enum):
    NONE = "none"
    CANVAS_BICUBIC = "canvas_bicubic"  # bicubic downsample of the normalised canvas, no antialias (INF official)
    ANTIALIAS = "antialias"  # antialiased resize of the canvas image to S×S


VIEW_GLOBAL, VIEW_TILE, VIEW_STRIDED, VIEW_LOWRES = "global", "tile", "strided", "lowres"
VIEW_NATIVE = "native"  # one variable-size view, given as flattened patches (``native.py``)


def _enum(cls, value, name):
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name}={value!r} is not valid; choose one of {choices}") from None


@dataclass(frozen=True)
class ImagingSpec:
    """What views a method needs. Every field has a closed set of values."""

    tile_size: int
    grid_rule: GridRule = GridRule.NONE
    grid_candidates: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # (cols, rows)
    max_cols: int = 6
    max_rows: int = 6
    max_tiles: int = 6
    fixed_grid: tuple[int, int] = (3, 3)
    canvas: Canvas = Canvas.FIT
    global_view: GlobalView = GlobalView.PAD
    local_tiles: bool = False
    strided_tiles: bool = False
    lowres: LowRes = LowRes.NONE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resampler: Resampler = Resampler.PILLOW  # pillow (official code's pixels) | torch (transformers' fast processors')
    # The canvas from the image at full resolution (False), or from one S×S view of it (the canvas rule at
    # S px) normalised, then upsampled bicubically (float, align_corners False) to the canvas: INF-LLaVA's
    # official inference, where builder.py hands encode_images the tower's 336-px processor output.
    canvas_from_view: bool = False
    # grid_rule 'native' (Qwen2-VL, ``native.py``): patch and merge sizes, frames per temporal patch, pixel bounds
    patch_size: int = native.QWEN2VL_PATCH
    merge_size: int = native.QWEN2VL_MERGE
    temporal_patch_size: int = native.QWEN2VL_TEMPORAL
    min_pixels: int = native.QWEN2VL_MIN_PIXELS
    max_pixels: int = native.QWEN2VL_MAX_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "grid_rule", _enum(GridRule, self.grid_rule, "grid_rule"))
        object.__setattr__(self, "canvas", _enum(Canvas, self.canvas, "canvas"))
        object.__setattr__(self, "global_view", _enum(GlobalView, self.global_view, "global_view"))
        object.__setattr__(self, "lowres", _enum(LowRes, self.lowres, "lowres"))
        object.__setattr__(self, "resampler", _enum(Resampler, self.resampler, "resampler"))
        object.__setattr__(self, "grid_candidates", tuple((int(c), int(r)) for c, r in self.grid_candidates))
        object.__setattr__(self, "fixed_grid", (int(self.fixed_grid[0]), int(self.fixed_grid[1])))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be positive, got {self.tile_size}")
        bad = [list(g) for g in self.grid_candidates if min(g) < 1]
        if bad:
            raise ValueError(f"grid_candidates must be (columns, rows) pairs of at least 1 tile, got {bad}")
        if min(self.fixed_grid) < 1:
            raise ValueError(f"fixed_grid must be at least 1x1 tiles, got {list(self.fixed_grid)}")
        for name in ("max_cols", "max_rows", "max_tiles"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive per channel, got {list(self.std)}")
        if (self.local_tiles or self.strided_tiles) and self.grid_rule is GridRule.NONE:
            raise ValueError("tiles were asked for but grid_rule is 'none'")
        if self.global_view is GlobalView.SQUASH_IF_TILED and not (self.local_tiles or self.strided_tiles):
            raise ValueError("global_view 'squash_if_tiled' (a thumbnail beside 2+ tiles) needs tiles: set local_tiles")
        if self.grid_rule is GridRule.ANYRES and not self.grid_candidates:
            raise ValueError("grid_rule 'anyres' needs at least one grid candidate")
        if self.grid_rule is GridRule.NATIVE:
            self._check_native()
        elif not (self.local_tiles or self.strided_tiles or self.global_view is not GlobalView.NONE
                  or self.lowres is not LowRes.NONE):
            raise ValueError("the imaging spec produces no view at all")

    @property
    def is_native(self) -> bool:
        return self.grid_rule is GridRule.NATIVE

    def _check_native(self) -> None:
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1 for grid_rule 'native', got {getattr(self, name)}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        if (self.local_tiles or self.strided_tiles or self.global_view is not GlobalView.NONE
                or self.lowres is not LowRes.NONE or self.canvas_from_view):
            raise ValueError("grid_rule 'native' makes one native-resolution view per image; it takes no tiles, "
                             "global, low-resolution or upsampled views (set them off)")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, enum.Enum):
                out[k] = v.value
        out["grid_candidates"] = [list(p) for p in self.grid_candidates]
        out["fixed_grid"] = list(self.fixed_grid)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ImagingSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown imaging fields {sorted(unknown)}; valid: {sorted(names)}")
        d = dict(d)
        if "grid_candidates" in d:
            d["grid_candidates"] = tuple(tuple(p) for p in d["grid_candidates"])
        return cls(**d)

    # ------------------------------------------------------------------ geometry
    def grid_for(self, image_size: Sequence[int]) -> tuple[int, int]:
        """(columns, rows) of tiles for an image of (width, height); (0, 0) when there are no tiles."""
        s = self.tile_size
        rule = self.grid_rule
        if rule is GridRule.NONE:
            return 0, 0
        if rule is GridRule.ANYRES:
            return grids.anyres_grid(image_size, self.grid_candidates, s)
        if rule is GridRule.SLIME_PAPER:
            return grids.slime_paper_grid(image_size, s, self.max_cols, self.max_rows)
        if rule is GridRule.UHD:
            return grids.uhd_grid(image_size, s, self.max_tiles)
        if rule is GridRule.FIXED:
            return self.fixed_grid
        if rule is GridRule.FLOOR:
            return grids.floor_grid(image_size, s, self.max_cols, self.max_rows)
        if rule is GridRule.INTERNVL:
            return grids_more.internvl_grid(image_size, s, self.max_tiles)
        if rule is GridRule.NATIVE:
            return self.record_for(image_size).grid
        raise AssertionError(rule)

    def record_for(self, image_size: Sequence[int]) -> "CutRecord":
        """The cut of an image of this size, computed without touching pixels."""
        w, h = grids._check_size(image_size)
        if self.is_native:  # grid = patches of the resized image, canvas = that size
            nw, nh = native.native_size((w, h), self.patch_size, self.merge_size, self.min_pixels, self.max_pixels)
            grid = (nw // self.patch_size, nh // self.patch_size)
            return CutRecord((w, h), self.tile_size, grid, (nw, nh), (0, 0, nw, nh), (VIEW_NATIVE,))
        cols, rows = self.grid_for((w, h))
        canvas = (cols * self.tile_size, rows * self.tile_size)
        if cols == 0:
            box = (0, 0, 0, 0)
        elif self.canvas is Canvas.FIT:
            box = ops.content_box((w, h), canvas)
        elif self.canvas is Canvas.PAD_SQUARE:
            side = max(w, h)
            sx, sy = canvas[0] / side, canvas[1] / side
            left, top = (side - w) // 2, (side - h) // 2
            box = (round(left * sx), round(top * sy), round((left + w) * sx), round((top + h) * sy))
        else:  # stretch, center_crop: the canvas is all image
            box = (0, 0, canvas[0], canvas[1])
        kinds: list[str] = []
        if self.global_view is not GlobalView.NONE and not (
                self.global_view is GlobalView.SQUASH_IF_TILED and cols * rows <= 1):
            kinds.append(VIEW_GLOBAL)
        if self.local_tiles:
            kinds += [VIEW_TILE] * (cols * rows)
        if self.strided_tiles:
            kinds += [VIEW_STRIDED] * (cols * rows)
        if self.lowres is not LowRes.NONE:
            kinds.append(VIEW_LOWRES)
        return CutRecord((w, h), self.tile_size, (cols, rows), canvas, box, tuple(kinds))


@dataclass(frozen=True)
class CutRecord:
    """How one image was cut. Sizes (width, height), grid (columns, rows), views in tensor order.

    A native-resolution cut (``views == ("native",)``) has the *patch* grid of the resized image
    (``canvas_size``) as ``grid``, and occupies one row of ``pixel_values`` per patch.
    """

    image_size: tuple[int, int]
    tile_size: int
    grid: tuple[int, int]
    canvas_size: tuple[int, int]
    content_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the image on the canvas
    views: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_views(self) -> int:
        """Rows of ``pixel_values`` this image occupies: its views, or for a native cut its patches."""
        if self.views == (VIEW_NATIVE,):
            return self.grid[0] * self.grid[1]
        return len(self.views)

    @property
    def is_native(self) -> bool:
        return self.views == (VIEW_NATIVE,)

    def index(self, kind: str) -> list[int]:
        """Positions of the views of one kind ('global', 'tile', 'strided', 'lowres')."""
        return [i for i, k in enumerate(self.views) if k == kind]

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "tile_size": self.tile_size,
            "grid": list(self.grid),
            "canvas_size": list(self.canvas_size),
            "content_box": list(self.content_box),
            "views": list(self.views),
        }


@dataclass
class ImageBatch:
    """``pixel_values [v x c x S x S]`` for all images back to back, and one record per image."""

    pixel_values: torch.Tensor
    records: list[CutRecord]

    @property
    def views_per_image(self) -> list[int]:
        return [r.num_views for r in self.records]


def _cover_and_crop(px, img, canvas: Sequence[int]):
    """Resize keeping the aspect so the image covers ``canvas`` (w, h), then crop its centre.

    On a square canvas this is the CLIP processor: shortest edge → side, longest →
    ``int(side·long/short)``, crop offsets ``(size − side) // 2``. ``px`` is the resampler's
    pixel operations (:mod:`.resample`).
    """
    w, h = px.size(img)
    cw, ch = int(canvas[0]), int(canvas[1])
    if cw * h >= ch * w:  # width is the binding side
        size = (cw, max(ch, int(cw * h / w)))
    else:
        size = (max(cw, int(ch * w / h)), ch)
    scaled = px.resize(img, size)
    left, top = (size[0] - cw) // 2, (size[1] - ch) // 2
    return px.crop(scaled, (left, top, left + cw, top + ch))


class HiResImageProcessor:
    """Cuts images into views following an :class:`ImagingSpec`. Works on any tile size."""

    def __init__(self, spec: ImagingSpec):
        self.spec = spec
        self._px = PIXELS[spec.resampler]

    def __repr__(self) -> str:
        return f"HiResImageProcessor({self.spec})"

    def preprocess_one(self, image: Image.Image) -> tuple[torch.Tensor, CutRecord]:
        """One image → its views ``[v x c x S x S]`` (native: patches ``[n x c·T·p·p]``) and its cut record."""
        image = ops.to_rgb(image)
        record = self.spec.record_for(image.size)
        if self.spec.is_native:
            return self._native_patches(image, record), record
        out = np.empty((record.num_views, 3, self.spec.tile_size, self.spec.tile_size), dtype=np.float32)
        self._views_into(image, record, out)
        return torch.from_numpy(out), record

    def _canvas(self, image, record: CutRecord):
        """The image made ``nW·S × nH·S`` the way the spec says (uint8, before normalisation)."""
        spec, px = self.spec, self._px
        if spec.canvas is Canvas.FIT:
            left, top, right, bottom = record.content_box
            return px.place(px.resize(image, (right - left, bottom - top)), record.canvas_size, (left, top), (0, 0, 0))
        if spec.canvas is Canvas.PAD_SQUARE:
            return px.resize(px.expand_to_square(image, ops.mean_fill(spec.mean)), record.canvas_size)
        if spec.canvas is Canvas.CENTER_CROP:
            return _cover_and_crop(px, image, record.canvas_size)
        return px.resize(image, record.canvas_size)

    def _views_into(self, image: Image.Image, record: CutRecord, out: np.ndarray) -> None:
        """Write the views of one RGB image cut as ``record`` into ``out [v x c x S x S]`` (float32).

        Every view is cut from uint8 pixels and normalised straight into its slot of the batch
        (``ops.normalize_into``): no per-view tensors to concatenate, and a float canvas only when
        the low-resolution view is interpolated from it (INF-LLaVA official), in which case the
        tiles are copied from it. The values are those of normalising the canvas and cutting it.
        """
        spec, px = self.spec, self._px
        s = spec.tile_size
        cols, rows = record.grid
        mean, std = spec.mean, spec.std
        image = px.prepare(image)
        k = 0
        if record.views[:1] == (VIEW_GLOBAL,):  # the spec asks for it, and (InternVL) the grid has 2+ tiles
            if spec.global_view is GlobalView.PAD:
                g = px.resize(px.expand_to_square(image, ops.mean_fill(mean)), (s, s))
            else:  # squash, squash_if_tiled
                g = px.resize(image, (s, s))
            ops.normalize_into(out[k], px.array(g).transpose(2, 0, 1), mean, std)
            k += 1
        if not (spec.local_tiles or spec.strided_tiles or spec.lowres is not LowRes.NONE):
            return
        if cols == 0:
            raise AssertionError("tiles requested without a grid")
        if spec.canvas_from_view:
            k = self._views_from_upsampled_view(image, record, out, k)
            if k != out.shape[0]:
                raise AssertionError(f"wrote {k} views into a slot of {out.shape[0]}")
            return
        canvas_img = self._canvas(image, record)
        pixels = px.array(canvas_img)  # [H x W x c] uint8
        normalised = None  # [c x H x W] float32, only where a view needs the whole normalised canvas
        if spec.lowres is LowRes.CANVAS_BICUBIC:
            normalised = ops.normalize_into(np.empty((3,) + pixels.shape[:2], dtype=np.float32),
                                            pixels.transpose(2, 0, 1), mean, std)
        n = cols * rows
        for wanted, strided in ((spec.local_tiles, False), (spec.strided_tiles, True)):
            if wanted:
                dst = out[k:k + n].reshape(rows, cols, 3, s, s)
                if normalised is not None:  # copying floats beats normalising the pixels again
                    np.copyto(dst, ops.tile_pixels(normalised.transpose(1, 2, 0), cols, rows, s, strided=strided))
                else:
                    ops.normalize_into(dst, ops.tile_pixels(pixels, cols, rows, s, strided=strided), mean, std)
                k += n
        if normalised is not None:
            low = F.interpolate(torch.from_numpy(normalised)[None], size=(s, s), mode="bicubic", align_corners=False)
            torch.from_numpy(out[k:k + 1]).copy_(low)
            k += 1
        elif spec.lowres is LowRes.ANTIALIAS:
            ops.normalize_into(out[k], px.array(px.resize(canvas_img, (s, s))).transpose(2, 0, 1), mean, std)
            k += 1
        if k != out.shape[0]:
            raise AssertionError(f"wrote {k} views into a slot of {out.shape[0]}")

    def _views_from_upsampled_view(self, image, record: CutRecord, out: np.ndarray, k: int) -> int:
        """Tiles (and the low-resolution view) cut from one S×S view upsampled to the canvas: INF-LLaVA's
        official inference path (``encode_images``: ``F.interpolate(images, (1008, 1008), 'bicubic')``)."""
        spec = self.spec
        s = spec.tile_size
        cols, rows = record.grid
        small_record = dataclasses.replace(record, canvas_size=(s, s), content_box=ops.content_box(record.image_size, (s, s)))
        view = self._px.array(self._canvas(image, small_record))  # the canvas rule at S px: [s x s x c] uint8
        small = ops.normalize_into(np.empty((3, s, s), dtype=np.float32), view.transpose(2, 0, 1), spec.mean, spec.std)
        canvas = F.interpolate(torch.from_numpy(small)[None], size=(rows * s, cols * s), mode="bicubic",
                               align_corners=False)[0]
        normalised = canvas.numpy().transpose(1, 2, 0)  # [H x W x c]
        n = cols * rows
        for wanted, strided in ((spec.local_tiles, False), (spec.strided_tiles, True)):
            if wanted:
                np.copyto(out[k:k + n].reshape(rows, cols, 3, s, s),
                          ops.tile_pixels(normalised, cols, rows, s, strided=strided))
                k += n
        if spec.lowres is LowRes.CANVAS_BICUBIC:
            low = F.interpolate(canvas[None], size=(s, s), mode="bicubic", align_corners=False)
            torch.from_numpy(out[k:k + 1]).copy_(low)
            k += 1
        elif spec.lowres is LowRes.ANTIALIAS:  # the S-px view itself
            out[k] = small
            k += 1
        return k

    def __call__(self, images: Sequence[Image.Image] | Image.Image) -> ImageBatch:
        """Images → one ``pixel_values [v x c x S x S]`` holding every view, written in place."""
        if isinstance(images, Image.Image):
            images = [images]
        s = self.spec.tile_size
        # Records come from the sizes alone, so the whole batch is allocated once and every view is
        # normalised straight into it; images are converted to RGB one at a time.
        records = [self.spec.record_for(ops.upright_size(img)) for img in images]
        if self.spec.is_native:
            return self._concatenate(images)
        out = np.empty((sum(r.num_views for r in records), 3, s, s), dtype=np.float32)
        start = 0
        for img, record in zip(images, records):
            rgb = ops.to_rgb(img)
            if rgb.size != record.image_size:  # the EXIF turn failed (broken block): cut the image as it is
                return self._concatenate(images)
            self._views_into(rgb, record, out[start:start + record.num_views])
            start += record.num_views
        return ImageBatch(torch.from_numpy(out), records)

    def _native_patches(self, image: Image.Image, record: CutRecord) -> torch.Tensor:
        """The image resized to its native size, normalised, as Qwen2-VL's flattened patches."""
        spec, px = self.spec, self._px
        pixels = px.array(px.resize(px.prepare(image), record.canvas_size)).transpose(2, 0, 1)
        normalised = ops.normalize_into(np.empty(pixels.shape, dtype=np.float32), pixels, spec.mean, spec.std)
        return native.patchify(normalised, spec.patch_size, spec.merge_size, spec.temporal_patch_size)

    def _concatenate(self, images: Sequence[Image.Image]) -> ImageBatch:
        tensors, records = [], []
        for img in images:
            t, r = self.preprocess_one(img)
            tensors.append(t)
            records.append(r)
        return ImageBatch(torch.cat(tensors, 0), records)
