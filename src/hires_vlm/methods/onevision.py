"""``onevision``: LLaVA-OneVision's single-image strategy, ``anyres_max_N`` (default N = 9).

The LLaVA-NeXT pipeline of ``llava_hd`` with two changes, both as in the official code (LLaVA-NeXT
repository; the ``lmms-lab/llava-onevision-*`` checkpoints were trained with it):

* Grid: ``select_best_resolution`` over all 36 grids from 1×1 to 6×6 (``image_grid_pinpoints=
  "(1x1),...,(6x6)"``, expanded by ``llava/mm_utils.py`` ``get_anyres_image_grid_shape`` with the
  columns in the outer loop; :data:`~hires_vlm.imaging.ONEVISION_GRIDS`). Image resized keeping
  aspect and centre-padded black, tiles row-major, base view squashed to S (``process_anyres_image``).
* Token budget: the tiles' projected features, assembled into one map and un-padded, are shrunk
  bilinearly when larger than N tiles' worth — ``t = sqrt(h·w / (N·g²))``; if ``t > 1.1`` the map
  becomes ``int(h // t) × int(w // t)`` (``llava/model/llava_arch.py``,
  ``prepare_inputs_labels_for_multimodal``, the ``anyres_max`` branch of ``spatial_unpad``).

Layout: base tokens (g²), then the map row by row with a learned newline after each row.
Visual tokens: ``g² + h'·w' + h'`` for the shrunk map h'×w' (transformers
``LlavaOnevisionProcessor._get_unpadded_features`` counts the same). ``unpad_rounding`` chooses
LLaVA-NeXT's ``unpad_image`` (``int()``, default) or transformers' (``int(round(·, 7))``); they
differ on a few sizes. Parameter names as ``llava_hd``: ``connector.projector``,
``connector.image_newline``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..connectors import anyres_layout, anyres_max_size, anyres_token_count, build_projector, unpadded_extent
from ..imaging import ONEVISION_GRIDS, ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, VisualMethod
from .registry import register_method, register_preset


@dataclass
class OneVisionConfig(MethodConfig):
    name: ClassVar[str] = "onevision"

    grid_candidates: tuple[tuple[int, int], ...] = ONEVISION_GRIDS  # (columns, rows), in official order
    max_tiles: int = 9  # N of anyres_max_N: the map is shrunk to about N tiles' worth of tokens
    unpad_rounding: Literal["floor", "transformers"] = "floor"  # LLaVA-NeXT unpad_image | transformers'

    def validate(self) -> None:
        if not self.grid_candidates:
            raise ValueError(f"{self.name}.grid_candidates must list at least one (columns, rows) grid")
        super().validate()
        if self.max_tiles < 1:
            raise ValueError(f"{self.name}.max_tiles (N of anyres_max_N) must be at least 1, got {self.max_tiles}")

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(tile_size=tile_size, grid_rule="anyres", grid_candidates=self.grid_candidates,
                           canvas="fit", global_view="squash", local_tiles=True, mean=mean, std=std)

    def max_visual_tokens(self, record, grid) -> int:
        return anyres_token_count(record.image_size, record.grid, grid, max_tiles=self.max_tiles,
                                  rounding=self.unpad_rounding)

    def token_layout(self, record, grid) -> dict:
        cols, rows = record.grid
        top, bottom, left, right = unpadded_extent(record.image_size, (rows * grid, cols * grid), self.unpad_rounding)
        h, w = bottom - top, right - left
        sh, sw = anyres_max_size((h, w), grid, self.max_tiles)
        return {"base": grid * grid, "tile_map": [rows * grid, cols * grid], "unpadded_map": [h, w],
                "shrunk_map": [sh, sw], "shrink_factor": round(math.sqrt(h * w / (self.max_tiles * grid * grid)), 4),
                "newlines": sh, "budget_tiles": self.max_tiles}


@register_method
class OneVisionMethod(VisualMethod):
    config_class = OneVisionConfig

    def __init__(self, cfg: OneVisionConfig, dims: Dims):
        super().__init__(cfg, dims)
        self.projector = build_projector(cfg.projector, dims.vision_dim, dims.text_dim)
        self.image_newline = nn.Parameter(torch.randn(dims.text_dim) / math.sqrt(dims.text_dim))

    def forward(self, features, records, text=None) -> MethodOutput:
        projected = self.projector(features)  # the official code shrinks projected features, as here
        out = []
        for feats, rec in zip(self.split(projected, records), records):
            base = feats[rec.index("global")[0]]
            tiles = feats[rec.index("tile")]
            out.append(anyres_layout(base, tiles, rec.image_size, rec.grid, self.image_newline,
                                     max_tiles=self.cfg.max_tiles, rounding=self.cfg.unpad_rounding))
        return MethodOutput(out)


register_preset("onevision", OneVisionConfig)
register_preset("onevision-anyres-max-9", OneVisionConfig)
