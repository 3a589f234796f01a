"""INF-LLaVA: dual-perspective cropping, dual-perspective enhancement, fusion, pooling, dual resolution.

Per image: the canvas (``nW·S × nH·S``) is cut into nW·nH contiguous tiles and nW·nH strided
tiles, plus one low-resolution view; all views go through the tower in the model's one batched
forward. Here the tile features are put back on two maps by 2-D position
(``connectors.dual.assemble_map``, no positional embedding), enhanced by windowed cross-attention
in both directions (``connectors.dem``), fused (``connectors.fusion``), pooled to a g×g grid
(``connectors.pooling``), combined with the low-resolution view's features and projected by the
MLP: g² tokens per image, as many as LLaVA-1.5.

Every way the paper and the official code differ is a field of :class:`InfLlavaConfig`; presets
``inf_llava`` (official code) and ``inf_llava-paper``. The ablations of the paper's Tables 4–6
are fields too: ``directions`` (DEM w/ global / w/ local), ``fusion`` (Table 5), ``cropping``
and ``enhancement`` (Table 6: one cropping only; both croppings added without the DEM).

Images of a batch with the same grid are stacked, so every module runs batched; attention
windows are a batch dimension too. Trainable parts (prefixes for a stage's ``trainable``):
``connector.dem``, ``connector.fusion``, ``connector.projector``.

Shapes: features ``[v x g² x dv]`` of all views → per image ``[P² x dl]`` (P = ``pool_grid`` or g).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..connectors import DualFusion, DualPerspectiveEnhancement, assemble_map, build_projector, pool_map
from ..imaging import CutRecord, ImagingSpec
from .base import Dims, MethodConfig, MethodOutput, VisualMethod
from .registry import register_method, register_preset


@dataclass
class InfLlavaConfig(MethodConfig):
    """INF-LLaVA. Defaults are the official code (preset ``inf_llava``); see ``PAPER`` for the paper.

    Cropping (DCM)
      grid_rule: 'fixed' (official: always ``fixed_grid``) | 'floor' (paper: ⌊W/S⌋ × ⌊H/S⌋, each at
        least 1 and capped at ``max_grid``; the paper gives no cap, 3×3 keeps the official budget).
      fixed_grid, max_grid: (columns, rows).
      canvas: how the image becomes ``nW·S × nH·S`` — 'pad_square' (official fine-tuning: pad to
        square with the mean colour, resize) | 'center_crop' (official pre-training: the CLIP
        processor's resize of the shortest edge + centre crop, borders lost) | 'stretch' (paper:
        resize to the canvas) | 'fit' (keep aspect, pad black). A run-time field: a stage may set it.
      canvas_source: 'image' (official training: the canvas is made from the image, ``train.py``
        scales the CLIP processor to 1008) | 'view' (official inference: ``model/builder.py``
        returns the hub's 336-px processor, so the eval scripts and ``serve/cli.py`` feed one
        336² view, which ``encode_images`` upsamples bicubically to 1008 before cropping). A
        run-time field (``hires-vlm eval --method-runtime canvas_source=view``). Which one the
        paper's tables used cannot be told: the repository's eval scripts are LLaVA-1.5's,
        unchanged (they import ``llava.*``), and the lmms-eval setup the README names was not
        released; the repository's own inference path is 'view'.
      cropping: 'dual' (contiguous + strided tiles) | 'local' (contiguous only) | 'global'
        (strided only; Table 6). With one cropping its map plays both roles in the DEM.
    Enhancement (DEM)
      enhancement: 'dem' | 'none' (Table 6 "w/ DCM": maps fused without enhancement).
      directions: 'both' | 'global_query' (Table 4 "DEM w/ global") | 'local_query' ("w/ local").
      global_query_windows / local_query_windows: 'contiguous' | 'strided' — the windows each
        direction attends in (paper strided / contiguous; official contiguous / strided).
      shared_attention: one attention for both directions (official) or one each (paper, our reading).
      heads: attention heads (official 8, paper 1).
      attention_block: 'residual_post_ln' (official: LayerNorm(W_o·attn + query)) | 'plain' (paper).
      attention_bias: biases in the projections (official) or none (paper's W_q, W_k, W_v).
    Fusion
      fusion: 'mlp_concat' (official bottleneck MLPs) | 'linear_concat' (paper) | 'conv3x3' |
        'multiply' | 'weighted_add' | 'max' | 'add' (Table 5).
      fusion_order: 'local_first' (official concat order) | 'global_first' (paper eq. 27).
      fusion_residual_norm: add both enhanced maps to the fused map and LayerNorm (official).
      fusion_bottleneck: hidden width of the official MLPs is d / this (16).
    Pooling and dual resolution
      pooling: 'bilinear' (official; = centre token of each 3×3 block) | 'avg' (paper).
      pool_grid: tokens per side after pooling; 0 = g (one view's worth).
      dual_resolution: 'mean' (official, 0.5·(low + fused)) | 'add' (paper) | 'none' (no low-res view).
      lowres: the low-resolution view — 'canvas_bicubic' (official: bicubic of the normalised
        canvas, no antialias) | 'antialias' (antialiased resize of the canvas image).
    """

    name: ClassVar[str] = "inf_llava"
    # The official code pre-trains on resize + centre-crop and fine-tunes on pad-to-square: a stage may switch.
    runtime_fields: ClassVar[tuple[str, ...]] = ("canvas", "canvas_source")

    grid_rule: Literal["fixed", "floor"] = "fixed"
    fixed_grid: tuple[int, int] = (3, 3)
    max_grid: tuple[int, int] = (3, 3)
    canvas: Literal["pad_square", "stretch", "fit", "center_crop"] = "pad_square"
    canvas_source: Literal["image", "view"] = "image"
    cropping: Literal["dual", "local", "global"] = "dual"
    enhancement: Literal["dem", "none"] = "dem"
    directions: Literal["both", "global_query", "local_query"] = "both"
    global_query_windows: Literal["contiguous", "strided"] = "contiguous"
    local_query_windows: Literal["strided", "contiguous"] = "strided"
    shared_attention: bool = True
    heads: int = 8
    attention_block: Literal["residual_post_ln", "plain"] = "residual_post_ln"
    attention_bias: bool = True
    fusion: Literal["mlp_concat", "linear_concat", "conv3x3", "multiply", "weighted_add", "max", "add"] = "mlp_concat"
    fusion_order: Literal["local_first", "global_first"] = "local_first"
    fusion_residual_norm: bool = True
    fusion_bottleneck: int = 16
    pooling: Literal["bilinear", "avg"] = "bilinear"
    pool_grid: int = 0
    dual_resolution: Literal["mean", "add", "none"] = "mean"
    lowres: Literal["canvas_bicubic", "antialias"] = "canvas_bicubic"

    def validate(self) -> None:
        super().validate()
        for name in ("fixed_grid", "max_grid"):
            cols, rows = getattr(self, name)
            if cols < 1 or rows < 1:
                raise ValueError(f"{self.name}.{name}={getattr(self, name)!r}: columns and rows must be at least 1")
        if self.heads < 1:
            raise ValueError(f"{self.name}.heads must be at least 1, got {self.heads}")
        if self.fusion_bottleneck < 1:
            raise ValueError(f"{self.name}.fusion_bottleneck must be at least 1, got {self.fusion_bottleneck}")
        if self.pool_grid < 0:
            raise ValueError(f"{self.name}.pool_grid must be 0 (one view's grid) or positive, got {self.pool_grid}")

    # ------------------------------------------------------------------ what the method needs
    @property
    def uses_local(self) -> bool:
        return self.cropping in ("dual", "local")

    @property
    def uses_global(self) -> bool:
        return self.cropping in ("dual", "global")

    def imaging_spec(self, tile_size, mean, std) -> ImagingSpec:
        return ImagingSpec(
            tile_size=tile_size, grid_rule=self.grid_rule, fixed_grid=self.fixed_grid,
            max_cols=self.max_grid[0], max_rows=self.max_grid[1], canvas=self.canvas, global_view="none",
            local_tiles=self.uses_local, strided_tiles=self.uses_global,
            lowres="none" if self.dual_resolution == "none" else self.lowres, mean=mean, std=std,
            canvas_from_view=self.canvas_source == "view",
        )

    def output_grid(self, grid: int) -> int:
        return self.pool_grid or grid

    def max_visual_tokens(self, record: CutRecord, grid: int) -> int:
        return self.output_grid(grid) ** 2


#: The paper's description (fields that differ from the official code).
PAPER = dict(
    grid_rule="floor", canvas="stretch", global_query_windows="strided", local_query_windows="contiguous",
    shared_attention=False, heads=1, attention_block="plain", attention_bias=False, fusion="linear_concat",
    fusion_order="global_first", fusion_residual_norm=False, pooling="avg", dual_resolution="add",
    lowres="antialias",
)


def inf_llava_paper() -> InfLlavaConfig:
    return InfLlavaConfig(**PAPER)


@register_method
class InfLlavaMethod(VisualMethod):
    """Sub-modules: ``dem`` (when enhancement runs), ``fusion`` (when there are two maps to fuse), ``projector``."""

    config_class = InfLlavaConfig

    def __init__(self, cfg: InfLlavaConfig, dims: Dims):
        super().__init__(cfg, dims)
        d = dims.vision_dim
        if cfg.enhancement == "dem" and d % cfg.heads:
            raise ValueError(f"inf_llava.heads={cfg.heads} does not divide the tower's width {d}")
        out = cfg.output_grid(dims.grid)
        if cfg.dual_resolution != "none" and out != dims.grid:
            raise ValueError(
                f"inf_llava.pool_grid={cfg.pool_grid} gives {out}x{out} tokens but the low-resolution view has "
                f"{dims.grid}x{dims.grid}; set pool_grid to 0 or {dims.grid}, or dual_resolution to 'none'"
            )
        if cfg.enhancement == "dem":
            self.dem = DualPerspectiveEnhancement(
                d, cfg.heads, shared=cfg.shared_attention, bias=cfg.attention_bias, block=cfg.attention_block,
                global_query_windows=cfg.global_query_windows, local_query_windows=cfg.local_query_windows,
                directions=cfg.directions,
            )
        # Fusing a single un-enhanced map with itself means nothing: it goes straight to pooling.
        if cfg.enhancement == "dem" or cfg.cropping == "dual":
            self.fusion = DualFusion(cfg.fusion, d, order=cfg.fusion_order, residual_norm=cfg.fusion_residual_norm,
                                     bottleneck=cfg.fusion_bottleneck)
        self.projector = build_projector(cfg.projector, d, dims.text_dim)

    # ------------------------------------------------------------------ pieces
    def maps(self, feats: torch.Tensor, records: list[CutRecord], cols: int,
             rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Local and global maps ``[b x rows·g x cols·g x d]`` of images with the same grid
        (``feats``: one ``[v_i x g² x d]`` per image). With one cropping both are its map."""
        local = glob = None
        if self.cfg.uses_local:
            tiles = torch.stack([f[r.index("tile")] for f, r in zip(feats, records)])
            local = assemble_map(tiles, cols, rows, "contiguous")
        if self.cfg.uses_global:
            tiles = torch.stack([f[r.index("strided")] for f, r in zip(feats, records)])
            glob = assemble_map(tiles, cols, rows, "strided")
        return (local if local is not None else glob), (glob if glob is not None else local)

    def fuse_maps(self, local_map: torch.Tensor, global_map: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
        """Enhancement (if any) then fusion (if any): ``[b x H x W x d]``."""
        if self.cfg.enhancement == "dem":
            global_map, local_map = self.dem(local_map, global_map, cols, rows)
        if hasattr(self, "fusion"):
            return self.fusion(global_map, local_map)
        return local_map

    def combine_resolutions(self, pooled: torch.Tensor, lowres: torch.Tensor | None) -> torch.Tensor:
        mode = self.cfg.dual_resolution
        if mode == "none":
            return pooled
        if mode == "add":
            return pooled + lowres
        return 0.5 * (lowres + pooled)  # official: torch.mean(torch.stack([low, dem], -1), -1)

    def forward(self, features, records, text=None) -> MethodOutput:
        per_image = self.split(features, records)
        g = self.dims.grid
        p = self.cfg.output_grid(g)
        out: list[torch.Tensor | None] = [None] * len(records)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, rec in enumerate(records):
            groups[tuple(rec.grid)].append(k)
        for (cols, rows), idx in groups.items():
            feats = [per_image[k] for k in idx]
            recs = [records[k] for k in idx]
            local_map, global_map = self.maps(feats, recs, cols, rows)
            fused = self.fuse_maps(local_map, global_map, cols, rows)
            pooled = pool_map(fused, (p, p), self.cfg.pooling)
            b, _, _, d = pooled.shape
            x = pooled.reshape(b, p * p, d)
            low = None
            if self.cfg.dual_resolution != "none":
                low = torch.stack([f[r.index("lowres")[0]] for f, r in zip(feats, recs)])
            tokens = self.projector(self.combine_resolutions(x, low))
            for k, t in zip(idx, tokens.unbind(0)):
                out[k] = t
        return MethodOutput(out)  # type: ignore[arg-type]


def official_key_map(prefix: str = "connector.") -> dict[str, str]:
    """Official INF-LLaVA checkpoint keys → this package's parameter names (preset ``inf_llava``).

    ``spatial_embed.attention.linears.0..3`` are W_q, W_k, W_v, W_o and ``attention.ln`` the post-LN;
    ``ffn_crop`` runs on the local-query output (our ``fusion.local_mlp``), ``ffn_stride`` on the
    global-query output (``fusion.global_mlp``), ``ln_fuse`` is ``fusion.norm``; ``mm_projector`` is
    the projector. The vision tower and the LM keep their own checkpoints' names.
    """
    out: dict[str, str] = {}
    for p in ("weight", "bias"):
        for i, name in enumerate(("q_proj", "k_proj", "v_proj", "out_proj")):
            out[f"model.spatial_embed.attention.linears.{i}.{p}"] = f"{prefix}dem.attention.{name}.{p}"
        out[f"model.spatial_embed.attention.ln.{p}"] = f"{prefix}dem.attention.norm.{p}"
        out[f"model.spatial_embed.ln_fuse.{p}"] = f"{prefix}fusion.norm.{p}"
        for k in (0, 2):
            out[f"model.spatial_embed.ffn_crop.{k}.{p}"] = f"{prefix}fusion.local_mlp.{k}.{p}"
            out[f"model.spatial_embed.ffn_stride.{k}.{p}"] = f"{prefix}fusion.global_mlp.{k}.{p}"
            out[f"model.mm_projector.{k}.{p}"] = f"{prefix}projector.{k}.{p}"
    return out


register_preset("inf_llava", InfLlavaConfig)
register_preset("inf_llava-paper", inf_llava_paper)
