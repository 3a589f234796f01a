"""``HiResVLMImageProcessor``: a method's cut as a transformers image processor.

Its config — ``preprocessor_config.json`` when saved alone, the ``image_processor`` entry of
``processor_config.json`` inside a processor, as transformers 5 writes them — holds what
transformers users look for (``image_mean``, ``image_std``, ``size``: the S×S view a tower sees,
``resample``, ``image_processor_type``) next to the method's cut settings (the fields of :class:`~hires_vlm.imaging.ImagingSpec`: grid rule and
candidates, canvas, which views). The maths stays in :class:`~hires_vlm.imaging.HiResImageProcessor`;
this class translates between the two and loads what transformers hands it (PIL images, arrays,
tensors, paths, URLs; flat or nested lists).

Shapes: ``pixel_values [v x c x S x S]`` (every view of every image back to back, no padding views;
for a native-resolution cut, Qwen2-VL's flattened patches ``[n x c·T·p·p]``),
``image_sizes [n x 2]`` (width, height) per image in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_transforms import to_pil_image
from transformers.image_utils import load_image
from transformers.processing_utils import ImagesKwargs

from ..imaging import CLIP_MEAN, CLIP_STD, CutRecord, HiResImageProcessor, ImagingSpec

#: PIL's bicubic filter, the only one the imaging code resizes with.
BICUBIC = int(Image.Resampling.BICUBIC)
#: ImagingSpec fields stored under their own names (mean, std and tile_size become image_mean, image_std, size).
CUT_FIELDS = ("grid_rule", "grid_candidates", "max_cols", "max_rows", "max_tiles", "fixed_grid", "canvas",
              "global_view", "local_tiles", "strided_tiles", "lowres", "canvas_from_view", "resampler",
              "patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels")


class HiResImagesKwargs(ImagesKwargs, total=False):
    """The keys ``from_pretrained(..., key=value)`` may override, besides transformers' usual ones."""

    grid_rule: str
    grid_candidates: list
    max_cols: int
    max_rows: int
    max_tiles: int
    fixed_grid: list
    canvas: str
    global_view: str
    local_tiles: bool
    strided_tiles: bool
    lowres: str
    canvas_from_view: bool
    resampler: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int


class ImageBatchFeature(BatchFeature):
    """``pixel_values`` and ``image_sizes``, plus how each image was cut (``records``; not a model input)."""

    def __init__(self, data, records: list[CutRecord], tensor_type=None):
        super().__init__(data, tensor_type=tensor_type)
        self.records = records

    @property
    def views_per_image(self) -> list[int]:
        return [r.num_views for r in self.records]


def _tile_size(size) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        if size["height"] != size["width"]:
            raise ValueError(f"views are square: size needs height == width, got {size}")
        return int(size["height"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ValueError(f"size must be an int or {{'height': S, 'width': S}}, got {size!r}")


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str):
        return load_image(image)
    if isinstance(image, torch.Tensor) or hasattr(image, "__array__"):
        return to_pil_image(image)
    raise TypeError(f"an image must be a PIL image, an array, a tensor, a path or a URL; got {type(image).__name__}")


def flatten_images(images) -> list[Image.Image]:
    """One image, a list of them or a list of lists (per prompt) → a flat list of PIL images; ``None`` entries dropped."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [im for sub in images for im in flatten_images(sub)]
    return [_as_pil(images)]


class HiResVLMImageProcessor(BaseImageProcessor):
    r"""
    Args:
        size: the S×S view a tower sees, ``{"height": S, "width": S}`` (or ``S``).
        image_mean, image_std: the tower's normalisation (R, G, B).
        resample: the resizing filter; the imaging code resizes bicubically (``3``), the one value accepted.
        grid_rule, grid_candidates, max_cols, max_rows, max_tiles, fixed_grid, canvas, global_view, local_tiles,
            strided_tiles, lowres, canvas_from_view, resampler, patch_size, merge_size, temporal_patch_size,
            min_pixels, max_pixels: the method's cut (see ``ImagingSpec``; the last five: native resolution).
    """

    model_input_names = ["pixel_values", "image_sizes"]
    valid_kwargs = HiResImagesKwargs

    def __init__(self, size=None, image_mean=None, image_std=None, resample: int = BICUBIC, **kwargs):
        cut = {k: kwargs.pop(k) for k in CUT_FIELDS if k in kwargs}
        super().__init__(**kwargs)
        if int(resample) != BICUBIC:
            raise ValueError(f"resample={resample!r} is not supported: hires-vlm resizes bicubically (resample=3)")
        if "grid_candidates" in cut:
            cut["grid_candidates"] = tuple(tuple(p) for p in cut["grid_candidates"])
        self._cutter = HiResImageProcessor(ImagingSpec(
            tile_size=_tile_size(size if size is not None else 336),
            mean=image_mean if image_mean is not None else CLIP_MEAN,
            std=image_std if image_std is not None else CLIP_STD, **cut))

    @classmethod
    def from_spec(cls, spec: ImagingSpec) -> HiResVLMImageProcessor:
        d = spec.to_dict()
        return cls(size=spec.tile_size, image_mean=d.pop("mean"), image_std=d.pop("std"),
                   **{k: d[k] for k in CUT_FIELDS})

    # ------------------------------------------------------------------ what transformers reads
    @property
    def spec(self) -> ImagingSpec:
        return self._cutter.spec

    @property
    def size(self) -> dict[str, int]:
        return {"height": self.spec.tile_size, "width": self.spec.tile_size}

    @property
    def image_mean(self) -> list[float]:
        return list(self.spec.mean)

    @property
    def image_std(self) -> list[float]:
        return list(self.spec.std)

    @property
    def resample(self) -> int:
        return BICUBIC

    def to_dict(self) -> dict:
        cut = self.spec.to_dict()
        out = {"image_processor_type": type(self).__name__, "size": self.size, "image_mean": self.image_mean,
               "image_std": self.image_std, "resample": BICUBIC, **{k: cut[k] for k in CUT_FIELDS}}
        if getattr(self, "auto_map", None):
            out["auto_map"] = dict(self.auto_map)
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        from .auto import IMAGE_PROCESSOR_AUTO_MAP, write_import_shims

        self.auto_map = dict(IMAGE_PROCESSOR_AUTO_MAP)
        files = super().save_pretrained(save_directory, *args, **kwargs)
        write_import_shims(save_directory)
        return files

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoImageProcessor"):
        """Nothing to do: ``save_pretrained`` always writes the ``auto_map`` and the import shims."""

    # ------------------------------------------------------------------ processing
    def preprocess_one(self, image: Image.Image) -> tuple[torch.Tensor, CutRecord]:
        """One image → its views ``[v x c x S x S]`` and its cut record."""
        return self._cutter.preprocess_one(_as_pil(image))

    def preprocess(self, images, return_tensors="pt", **kwargs) -> ImageBatchFeature:
        """Images (one, a list, or a list of lists per prompt) → ``pixel_values`` and ``image_sizes``."""
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}: the cut is set when the processor is made "
                            "(from_pretrained(path, max_tiles=...) or from_spec)")
        flat = flatten_images(images)
        if not flat:
            raise ValueError("no image was given")
        batch = self._cutter(flat)
        sizes = torch.tensor([r.image_size for r in batch.records], dtype=torch.long)
        return ImageBatchFeature({"pixel_values": batch.pixel_values, "image_sizes": sizes}, batch.records,
                                 tensor_type=return_tensors)

    def __call__(self, images: Sequence | Image.Image, *args, **kwargs) -> ImageBatchFeature:
        return self.preprocess(images, *args, **kwargs)
