"""Reduce a high-resolution token map to the LLM's token budget (INF-LLaVA's last visual step).

``avg`` (the paper): adaptive average pooling — for a map of rows·g × cols·g tokens to g×g, the
mean of each rows × cols block. ``bilinear`` (the official code): ``F.interpolate(...,
mode='bilinear', align_corners=False)`` in float32. For an integer reduction factor f the source
coordinate of output i is f·i + (f−1)/2, so an *odd* f picks exactly the centre token of each
f×f block (3×3 → 1, as the official 72 → 24) and drops the rest; an even f averages the central
2×2 of each block. Parameter-free.

Shapes: ``[b x H x W x d]`` → ``[b x h x w x d]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PoolingKind = Literal["avg", "bilinear"]
POOLING_KINDS: tuple[str, ...] = ("avg", "bilinear")


def pool_map(fmap: torch.Tensor, size: tuple[int, int], kind: str) -> torch.Tensor:
    """Pool a channels-last map to ``size`` = (rows, columns) of tokens."""
    if kind not in POOLING_KINDS:
        raise ValueError(f"pooling {kind!r} is not supported; choose one of {list(POOLING_KINDS)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"pooled size must be positive, got {size}")
    x = fmap.permute(0, 3, 1, 2)
    if kind == "avg":
        out = F.adaptive_avg_pool2d(x, (h, w))
    else:
        out = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False).to(fmap.dtype)
    return out.permute(0, 2, 3, 1)
