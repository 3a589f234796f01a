"""Stage 1 of the pipeline — imaging: grid rules, pixel operations and the image processor.

Pure functions and a processor, no ``nn.Module``. Sizes are (width, height), grids (columns, rows).
"""

from .grids import anyres_grid, flip_pairs, floor_grid, select_best_resolution, slime_paper_grid, uhd_grid
from .grids_more import ONEVISION_GRIDS, grid_range, internvl_grid, internvl_grids, onevision_grid
from .native import native_patch_grid, native_size, patchify, smart_resize
from .ops import ImageLoadError, load_image, load_image_bytes, to_rgb
from .processor import (
    CLIP_MEAN,
    CLIP_STD,
    Canvas,
    CutRecord,
    GlobalView,
    GridRule,
    HiResImageProcessor,
    ImageBatch,
    ImagingSpec,
    LowRes,
)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "Canvas", "CutRecord", "GlobalView", "GridRule", "HiResImageProcessor",
    "ImageBatch", "ImageLoadError", "ImagingSpec", "LowRes", "anyres_grid", "flip_pairs", "floor_grid",
    "load_image", "load_image_bytes", "select_best_resolution", "slime_paper_grid", "to_rgb", "uhd_grid",
    "ONEVISION_GRIDS", "grid_range", "internvl_grid", "internvl_grids", "onevision_grid",
    "native_patch_grid", "native_size", "patchify", "smart_resize",
]
