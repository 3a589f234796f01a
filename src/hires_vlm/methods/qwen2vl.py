"""``qwen2vl``: Qwen2-VL's native dynamic resolution — no tiles, one variable-size patch grid per image.

As Qwen2-VL does it (transformers ``models/qwen2_vl/``):

* Resize (``image_processing_qwen2_vl.py``, ``smart_resize``; here
  :func:`~hires_vlm.imaging.smart_resize`): each side to a multiple of ``patch_size · merge_size``
  (28) with the area kept within ``[min_pixels, max_pixels]`` (default ``[56², 28²·1280]``); an
  aspect ratio above 200 is refused. The still image is repeated ``temporal_patch_size`` (2) times
  and cut into 14-px patches: ``pixel_values [Σ patches x 3·2·14·14]`` with no padding, the
  patch grid of each image in its :class:`~hires_vlm.imaging.CutRecord` (``grid`` = (columns, rows)
  of patches; ``image_grid_thw`` = (1, rows, columns)).
* Tower: transformers' ``Qwen2VisionTransformerPretrainedModel`` (2-D rotary positions, attention
  within each image), wrapped by :class:`~hires_vlm.vision.NativeVisionTower`; it cannot be a CLIP
  tower with fixed S×S views, and the embedded foundation's tower is one, so a ``qwen2vl`` model
  starts from a random native tower (see ``docs/methods.md``).
* Connector: Qwen2-VL's ``PatchMerger`` (transformers' class, used as is): LayerNorm(dv), the
  ``merge_size²`` patches of each window concatenated, Linear → GELU → Linear to the LM's width.
  Visual tokens: ``(H/28)·(W/28)`` for the resized H×W, in raster order of the merge windows.

Parameter names: ``connector.merger.{ln_q, mlp.0, mlp.2}`` (Qwen2-VL's ``visual.merger.*``).
Qwen2-VL's M-RoPE in the language model is not part of this method: the visual tokens take
ordinary 1-D positions in the causal LM, as every other method's do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..imaging import ImagingSpec
from ..imaging import native as native_rules
from .base import Dims, MethodConfig, MethodOutput, VisualMethod
from .registry import register_method, register_preset


@dataclass
class Qwen2VLConfig(MethodConfig):
    name: ClassVar[str] = "qwen2vl"

    projector: Literal["patch_merger"] = "patch_merger"  # Qwen2-VL's PatchMerger (LayerNorm, concat, MLP)
    patch_size: int = native_rules.QWEN2VL_PATCH  # the tower's; checked when the method is built
    merge_size: int = native_rules.QWEN2VL_MERGE  # patches per visual-token side (spatial_merge_size)
    temporal_patch_size: int = native_rules.QWEN2VL_TEMPORAL  # frames per patch: a still image is repeated
    min_pixels: int = native_rules.QWEN2VL_MIN_PIXELS
    max_pixels: int = native_rules.QWEN2VL_MAX_PIXELS

    def validate(self) -> None:
        for f in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{self.name}.{f} must be a positive integer, got {v!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"{self.name}.min_pixels ({self.min_pixels}) must not exceed max_pixels "
                             f"({self.max_pixels})")
        factor = self.patch_size * self.merge_size
        if self.max_pixels < factor * factor:
            raise ValueError(f"{self.name}.max_pixels ({self.max_pixels}) is below one visual token's "
                             f"{factor}x{factor} px = {factor * factor}; raise it")
        super().validate()

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(tile_size=tile_size, grid_rule="native", global_view="none", patch_size=self.patch_size,
                           merge_size=self.merge_size, temporal_patch_size=self.temporal_patch_size,
                           min_pixels=self.min_pixels, max_pixels=self.max_pixels, mean=mean, std=std)

    def max_visual_tokens(self, record, grid) -> int:
        cols, rows = record.grid
        return (cols // self.merge_size) * (rows // self.merge_size)

    def token_layout(self, record, grid) -> dict:
        cols, rows = record.grid
        m = self.merge_size
        return {"resized_size": list(record.canvas_size), "patch_grid": [cols, rows], "patches": cols * rows,
                "merge_size": m, "token_grid": [cols // m, rows // m], "grid_thw": [1, rows, cols],
                "temporal_patch_size": self.temporal_patch_size, "order": "merge windows row-major"}


@register_method
class Qwen2VLMethod(VisualMethod):
    config_class = Qwen2VLConfig

    def __init__(self, cfg: Qwen2VLConfig, dims: Dims):
        super().__init__(cfg, dims)
        if dims.grid != cfg.merge_size or dims.tile_size != cfg.factor:
            raise ValueError(
                f"method 'qwen2vl' (patch {cfg.patch_size}, merge {cfg.merge_size}) needs a native-resolution tower "
                f"with the same sizes; this tower reports {dims.tile_size}-px tokens of {dims.grid}x{dims.grid} patches "
                f"(patch {dims.tile_size // max(dims.grid, 1)}, merge {dims.grid}). Set the method's patch_size/"
                "merge_size to the tower's, or build the model with a Qwen2-VL vision config")
        from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchMerger

        self.merger = PatchMerger(dim=dims.text_dim, context_dim=dims.vision_dim, spatial_merge_size=cfg.merge_size)

    def forward(self, features, records, text=None) -> MethodOutput:
        # features [n x dv]: every image's patches, each merge window's patches consecutive
        if features.ndim != 2 or features.shape[0] != sum(r.num_views for r in records):
            raise ValueError(f"qwen2vl expects [patches x dv] features for {sum(r.num_views for r in records)} "
                             f"patches, got {tuple(features.shape)}")
        tokens = self.merger(features)  # [n / m² x dl]
        sizes = [self.cfg.max_visual_tokens(r, self.dims.grid) for r in records]
        return MethodOutput(list(tokens.split(sizes)))


register_preset("qwen2vl", Qwen2VLConfig)
register_preset("qwen2vl-native", Qwen2VLConfig)
