"""``monkey``: the compress-everything baseline of SliME's Table 4.

The same slicing as SliME (official: LLaVA-UHD grid, squashed global view; fit-and-pad tiles,
row-major), but the global view **and** every tile are compressed alike: one shared
:class:`~hires_vlm.connectors.resampler.Resampler` with ``queries`` learnable queries (144 = 12×12
at S = 336, as in the paper's comparison) in the tower's feature space, then the MLP projector.
Layout: the global view's q² tokens, then the tiles' tokens re-assembled into one raster over the
grid ((rows·q)×(cols·q)). Visual tokens: (1 + tiles)·q².

Parameter names: ``connector.resampler``, ``connector.projector``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..connectors import Resampler, build_projector, tiles_to_map
from ..connectors.resampler import square_side
from ..imaging import ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, VisualMethod
from .registry import register_method, register_preset
from .slime import default_heads, sliced_imaging_spec


@dataclass
class MonkeyConfig(MethodConfig):
    name: ClassVar[str] = "monkey"

    grid_rule: Literal["uhd", "slime_paper"] = "uhd"  # SliME's slicing ("identical slicing strategies")
    max_tiles: int = 6
    max_cols: int = 6
    max_rows: int = 6
    global_view: Literal["squash", "pad"] = "squash"
    queries: int = 144  # N_q per view, a square number
    resampler_heads: int | None = None  # None: vision width // 128

    def validate(self) -> None:
        super().validate()
        square_side(self.queries, f"{self.name}.queries")
        if self.resampler_heads is not None and self.resampler_heads < 1:
            raise ValueError(f"{self.name}.resampler_heads must be ≥ 1 or null, got {self.resampler_heads}")

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return sliced_imaging_spec(tile_size, mean, std, grid_rule=self.grid_rule, max_tiles=self.max_tiles,
                                   max_cols=self.max_cols, max_rows=self.max_rows, global_view=self.global_view)

    def max_visual_tokens(self, record, grid) -> int:
        return self.queries * (len(record.index("global")) + len(record.index("tile")))


@register_method
class MonkeyMethod(VisualMethod):
    config_class = MonkeyConfig

    def __init__(self, cfg: MonkeyConfig, dims: Dims):
        super().__init__(cfg, dims)
        self.resampler = Resampler(cfg.queries, dims.vision_dim, default_heads(dims.vision_dim, cfg.resampler_heads))
        self.projector = build_projector(cfg.projector, dims.vision_dim, dims.text_dim)

    def forward(self, features, records, text=None) -> MethodOutput:
        tokens = self.projector(self.resampler(features))  # every view of the batch at once: [v x q² x dl]
        out = []
        for toks, rec in zip(self.split(tokens, records), records):
            parts = [toks[i] for i in rec.index("global")]
            tiles = rec.index("tile")
            if tiles:
                cols, rows = rec.grid
                fmap = tiles_to_map(toks[tiles], cols, rows)
                parts.append(fmap.reshape(-1, fmap.shape[-1]))
            out.append(torch.cat(parts, 0))
        return MethodOutput(out)


register_preset("monkey", MonkeyConfig)
