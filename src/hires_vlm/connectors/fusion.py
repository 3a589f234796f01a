"""Fusion of the two enhanced maps of INF-LLaVA (global-query output and local-query output) into one.

Kinds (``FUSION_KINDS``), channels last, ``[b x H x W x d]`` in and out:

* ``linear_concat`` — the paper: two bias-free linears d→d/2 (``global_proj``, ``local_proj``),
  concatenated on channels.
* ``mlp_concat`` — the official code: two bottleneck MLPs ``Linear(d, d/16) → GELU →
  Linear(d/16, d/2)`` with separate weights (``global_mlp`` = official ``ffn_stride``,
  ``local_mlp`` = official ``ffn_crop``), concatenated.
* the paper's Table 5 variants: ``conv3x3`` (a 3×3 convolution, 2d→d, over the concatenated
  maps), ``multiply`` (element-wise product), ``weighted_add`` (two learnable scalars, both 0.5 at
  start), ``max`` (element-wise max-pool over the two perspectives), ``add``.

``order`` says which map comes first on the channel axis of the concatenating kinds (paper
``[global; local]``, official ``[local; global]``). ``residual_norm`` (official) returns
``norm(fused + global + local)`` — the extra residual sum of both enhanced maps and a LayerNorm.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

FusionKind = Literal["linear_concat", "mlp_concat", "conv3x3", "multiply", "weighted_add", "max", "add"]
FUSION_KINDS: tuple[str, ...] = ("linear_concat", "mlp_concat", "conv3x3", "multiply", "weighted_add", "max", "add")
FUSION_ORDERS: tuple[str, ...] = ("global_first", "local_first")
CONCAT_KINDS = ("linear_concat", "mlp_concat", "conv3x3")


def _bottleneck(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


class DualFusion(nn.Module):
    def __init__(self, kind: str, dim: int, *, order: str = "global_first", residual_norm: bool = False,
                 bottleneck: int = 16):
        super().__init__()
        if kind not in FUSION_KINDS:
            raise ValueError(f"fusion {kind!r} is not supported; choose one of {list(FUSION_KINDS)}")
        if order not in FUSION_ORDERS:
            raise ValueError(f"fusion order {order!r} is not valid; choose one of {list(FUSION_ORDERS)}")
        if kind in ("linear_concat", "mlp_concat") and dim % 2:
            raise ValueError(f"fusion {kind!r} halves the feature width, which must be even (got {dim})")
        if bottleneck < 1:
            raise ValueError(f"fusion bottleneck divisor must be at least 1, got {bottleneck}")
        self.kind, self.order, self.residual_norm = kind, order, residual_norm
        if kind == "linear_concat":
            self.global_proj = nn.Linear(dim, dim // 2, bias=False)
            self.local_proj = nn.Linear(dim, dim // 2, bias=False)
        elif kind == "mlp_concat":
            hidden = max(1, dim // bottleneck)
            self.global_mlp = _bottleneck(dim, hidden, dim // 2)
            self.local_mlp = _bottleneck(dim, hidden, dim // 2)
        elif kind == "conv3x3":
            self.conv = nn.Conv2d(2 * dim, dim, kernel_size=3, padding=1)
        elif kind == "weighted_add":
            self.weights = nn.Parameter(torch.full((2,), 0.5))
        if residual_norm:
            self.norm = nn.LayerNorm(dim)

    def init_parameters(self, init) -> None:
        # Only called for a module holding parameters of its own: here the two weights of 'weighted_add'.
        if self.kind == "weighted_add":
            init.constant_(self.weights, 0.5)

    def _ordered(self, g: torch.Tensor, l: torch.Tensor) -> list[torch.Tensor]:
        return [g, l] if self.order == "global_first" else [l, g]

    def forward(self, global_map: torch.Tensor, local_map: torch.Tensor) -> torch.Tensor:
        g, l = global_map, local_map
        if g.shape != l.shape:
            raise ValueError(f"global map {tuple(g.shape)} and local map {tuple(l.shape)} differ")
        kind = self.kind
        if kind == "linear_concat":
            out = torch.cat(self._ordered(self.global_proj(g), self.local_proj(l)), dim=-1)
        elif kind == "mlp_concat":
            out = torch.cat(self._ordered(self.global_mlp(g), self.local_mlp(l)), dim=-1)
        elif kind == "conv3x3":
            x = torch.cat(self._ordered(g, l), dim=-1).permute(0, 3, 1, 2)
            out = self.conv(x).permute(0, 2, 3, 1)
        elif kind == "multiply":
            out = g * l
        elif kind == "weighted_add":
            w = self.weights.to(g.dtype)
            out = w[0] * g + w[1] * l
        elif kind == "max":
            out = torch.maximum(g, l)
        else:  # add
            out = g + l
        if self.residual_norm:
            out = self.norm(out + g + l)
        return out
