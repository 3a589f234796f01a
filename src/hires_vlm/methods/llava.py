"""The two baselines: ``llava`` (LLaVA-1.5) and ``llava_hd`` (LLaVA-NeXT anyres, "LLaVA-HD" in SliME).

``llava``: one global view (pad to square with the mean colour, resize to S), every token
projected by the MLP: g² tokens.

``llava_hd``: grid chosen by LLaVA-NeXT's ``select_best_resolution`` over ``grid_candidates``
(in tiles, (columns, rows)), image resized keeping aspect and centre-padded black, tiles
row-major, global view squashed to S; every token projected; layout = base tokens, then the tiles
un-padded with a learned newline after each row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..connectors import anyres_layout, anyres_token_count, build_projector
from ..imaging import ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, VisualMethod

# LLaVA-NeXT's default pinpoints [[336,672],[672,336],[672,672],[1008,336],[336,1008]] read as
# (width, height) the way original LLaVA reads them, in tiles.
LLAVA_NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


@dataclass
class LlavaConfig(MethodConfig):
    name: ClassVar[str] = "llava"
    global_view: Literal["pad", "squash"] = "pad"

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(tile_size=tile_size, global_view=self.global_view, mean=mean, std=std)

    def max_visual_tokens(self, record, grid):
        return grid * grid


@dataclass
class LlavaHDConfig(MethodConfig):
    name: ClassVar[str] = "llava_hd"
    grid_candidates: tuple[tuple[int, int], ...] = LLAVA_NEXT_GRIDS
    global_view: Literal["squash", "pad"] = "squash"
    unpad: bool = True
    newline: bool = True

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(tile_size=tile_size, grid_rule="anyres", grid_candidates=self.grid_candidates,
                           canvas="fit", global_view=self.global_view, local_tiles=True, mean=mean, std=std)

    def max_visual_tokens(self, record, grid):
        return anyres_token_count(record.image_size, record.grid, grid, newline=self.newline, unpad=self.unpad)


class LlavaMethod(VisualMethod):
    config_class = LlavaConfig

    def __init__(self, cfg: LlavaConfig, dims: Dims):
        super().__init__(cfg, dims)
        self.projector = build_projector(cfg.projector, dims.vision_dim, dims.text_dim)

    def forward(self, features, records, text=None) -> MethodOutput:
        tokens = self.projector(features)  # [v x t x dl], one view per image
        return MethodOutput(list(tokens.unbind(0)))


class LlavaHDMethod(VisualMethod):
    config_class = LlavaHDConfig

    def __init__(self, cfg: LlavaHDConfig, dims: Dims):
        super().__init__(cfg, dims)
        self.projector = build_projector(cfg.projector, dims.vision_dim, dims.text_dim)
        if cfg.newline:
            self.image_newline = nn.Parameter(torch.randn(dims.text_dim) / math.sqrt(dims.text_dim))

    def forward(self, features, records, text=None) -> MethodOutput:
        projected = self.projector(features)
        out = []
        newline = self.image_newline if self.cfg.newline else None
        for feats, rec in zip(self.split(projected, records), records):
            base = feats[rec.index("global")[0]]
            tiles = feats[rec.index("tile")]
            out.append(anyres_layout(base, tiles, rec.image_size, rec.grid, newline, unpad=self.cfg.unpad))
        return MethodOutput(out)
