"""``internvl``: InternVL's dynamic tiling, pixel shuffle and MLP projector (InternVL 1.5 / 2 / 2.5).

As the official code does it (OpenGVLab/InternVL, ``internvl_chat``):

* Tiles (``internvl/train/dataset.py``, ``dynamic_preprocess`` + ``find_closest_aspect_ratio``,
  here :func:`~hires_vlm.imaging.internvl_grid`): the grid c×r with at most ``max_tiles`` tiles
  whose aspect is closest to the image's (ties: the larger grid when the image's area exceeds
  half its canvas); the image squashed to c·S × r·S (aspect not kept, no padding) and cut
  row-major; with ``use_thumbnail`` a thumbnail — the whole image squashed to S×S — only when
  there are 2 or more tiles. S is the tower's input size (448 in InternVL, 112 for the tiny tower).
* Tokens (``internvl/model/internvl_chat/modeling_internvl_chat.py``, ``extract_feature``): each
  view's g×g feature map pixel-shuffled (2×2 neighbours concatenated channel-wise, ``pixel_shuffle``
  with ``downsample_ratio = 0.5``: (g/2)² tokens of 4·dv), then ``mlp1`` = LayerNorm(4·dv) →
  Linear → GELU → Linear (``projector: ln_mlp2x_gelu``).
* Layout: every tile's tokens in tile order, then the thumbnail's (the official image list is
  tiles then thumbnail; our processor puts the thumbnail view first, the order is restored here).
  Visual tokens: (tiles + thumbnail)·(g/f)².

The tower's token grid g must be a multiple of ``shuffle_factor`` (2): a 448/14 or 336/14 tower
(32, 24) or the tiny 112/14 (8) works, SigLIP-384/14 (27) does not and is refused with a clear
error when the method is built. The official ``<img>`` / ``</img>`` tokens around the image are
text of the chat template, not visual tokens. Min tiles is the official default, 1. Parameter
names: ``connector.projector.{0,1,3}`` (``mlp1.{0,1,3}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..connectors import build_projector, check_shuffle_grid, pixel_shuffle
from ..imaging import ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, VisualMethod
from .registry import register_method, register_preset


@dataclass
class InternVLConfig(MethodConfig):
    name: ClassVar[str] = "internvl"

    projector: Literal["ln_mlp2x_gelu", "mlp2x_gelu", "linear", "mlp3x_gelu"] = "ln_mlp2x_gelu"  # InternVL's mlp1
    max_tiles: int = 12  # max_num of dynamic_preprocess (InternVL 1.5/2: 12; some fine-tunes: 6)
    use_thumbnail: bool = True  # a squashed whole-image view after 2+ tiles
    # 1 / downsample_ratio. The tower's g (S / patch) must be a multiple of it: checked when the method is built.
    shuffle_factor: int = 2
    ps_version: Literal["v2", "v1"] = "v2"  # v2: InternVL 1.5+; v1 (1.1/1.2): the merged map left transposed

    def validate(self) -> None:
        super().validate()
        if self.max_tiles < 1:
            raise ValueError(f"{self.name}.max_tiles (max_num of dynamic_preprocess) must be at least 1, "
                             f"got {self.max_tiles}")
        if self.shuffle_factor < 1:
            raise ValueError(f"{self.name}.shuffle_factor must be at least 1 (1: no pixel shuffle; InternVL: 2), "
                             f"got {self.shuffle_factor}; the tower's token grid must be a multiple of it")

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(tile_size=tile_size, grid_rule="internvl", max_tiles=self.max_tiles, canvas="stretch",
                           global_view="squash_if_tiled" if self.use_thumbnail else "none", local_tiles=True,
                           mean=mean, std=std)

    def tokens_per_view(self, grid: int) -> int:
        side = check_shuffle_grid(grid, self.shuffle_factor, f"{self.name}'s pixel shuffle")
        return side * side

    def max_visual_tokens(self, record, grid) -> int:
        return self.tokens_per_view(grid) * record.num_views

    def token_layout(self, record, grid) -> dict:
        return {"tiles": len(record.index("tile")), "thumbnail": bool(record.index("global")),
                "tokens_per_view": self.tokens_per_view(grid), "order": "tiles row-major, then thumbnail"}


@register_method
class InternVLMethod(VisualMethod):
    config_class = InternVLConfig

    def __init__(self, cfg: InternVLConfig, dims: Dims):
        super().__init__(cfg, dims)
        cfg.tokens_per_view(dims.grid)  # refuses a grid the shuffle factor does not divide
        f = cfg.shuffle_factor
        self.projector = build_projector(cfg.projector, dims.vision_dim * f * f, dims.text_dim)

    def forward(self, features, records, text=None) -> MethodOutput:
        merged = pixel_shuffle(features, self.cfg.shuffle_factor, self.cfg.ps_version)  # [v x (g/f)² x f²·dv]
        tokens = self.projector(merged)  # every view of the batch at once
        out = []
        for toks, rec in zip(self.split(tokens, records), records):
            order = rec.index("tile") + rec.index("global")  # InternVL: tiles, then the thumbnail
            out.append(toks[order].reshape(-1, toks.shape[-1]))
        return MethodOutput(out)


register_preset("internvl", InternVLConfig)
register_preset("internvl-dynamic", InternVLConfig)
