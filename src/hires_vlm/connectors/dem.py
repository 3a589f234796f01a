"""INF-LLaVA's dual-perspective enhancement module (DEM): windowed cross-attention between the
local (contiguous-tile) map and the global (strided-tile) map.

Two directions: global tokens as queries over local keys/values ("global_query"), and local tokens
as queries over global keys/values ("local_query"). Each direction cuts *both* maps into windows
of one kind (``dual.cut_map``: contiguous g×g blocks or stride-(rows, cols) lattices), attends
window k of the query map to window k of the other map only, and puts the windows back. The
windows are a batch dimension: attention never spans the whole high-resolution map, so its cost
is n·(g²)² instead of (n·g²)².

The paper: global-as-query on strided windows, local-as-query on contiguous windows, single-head
``softmax(Q Kᵀ/√d) V`` with bias-free W_q, W_k, W_v. The official code: the window kinds
swapped, one 8-head attention shared by both directions, with biases, an output projection and
``LayerNorm(W_o·attn + query)`` (post-LN residual on the raw query). A direction that is switched
off passes its query map through unchanged (the paper's "DEM w/ global" / "w/ local" rows).

Legend: b images, n windows, L = g² tokens per window, d channels; maps ``[b x H x W x d]``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .dual import WINDOW_KINDS, cut_map, merge_windows

AttentionBlock = Literal["residual_post_ln", "plain"]
ATTENTION_BLOCKS: tuple[str, ...] = ("residual_post_ln", "plain")
DIRECTIONS: tuple[str, ...] = ("both", "global_query", "local_query")


class WindowCrossAttention(nn.Module):
    """Cross-attention of a batch of query windows over the same batch of context windows.

    ``query [B x L x d]``, ``context [B x M x d]`` → ``[B x L x d]``; B = b·n windows. Per head
    ``softmax(Q Kᵀ/√d_head) V`` (= the paper's formula with one head); no mask, no dropout.
    ``block='residual_post_ln'`` adds ``out_proj`` and returns ``norm(out_proj(x) + query)``.
    Sub-module names (q_proj, k_proj, v_proj, out_proj, norm) map one to one onto the official
    ``linears.0..3`` and ``ln``.
    """

    def __init__(self, dim: int, heads: int = 1, bias: bool = False, block: str = "plain"):
        super().__init__()
        if block not in ATTENTION_BLOCKS:
            raise ValueError(f"attention block {block!r} is not supported; choose one of {list(ATTENTION_BLOCKS)}")
        if heads < 1 or dim % heads:
            raise ValueError(f"{heads} attention heads do not divide the feature width {dim}")
        self.dim, self.heads, self.block = dim, heads, block
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        if block == "residual_post_ln":
            self.out_proj = nn.Linear(dim, dim, bias=bias)
            self.norm = nn.LayerNorm(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B x L x d]`` → ``[B x h x L x d_head]`` (a view)."""
        return x.unflatten(-1, (self.heads, self.dim // self.heads)).transpose(1, 2)

    def _finish(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        if self.block == "residual_post_ln":
            x = self.norm(self.out_proj(x) + query)
        return x

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(query))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        x = F.scaled_dot_product_attention(q, k, v)  # [B x h x L x d_head], scale 1/√d_head
        return self._finish(x.transpose(1, 2).flatten(2), query)

    def forward_windowed(self, query_map: torch.Tensor, context_map: torch.Tensor, cols: int, rows: int,
                         kind: str) -> torch.Tensor:
        """Window k of ``query_map`` attends to window k of ``context_map`` only (maps ``[b x H x W x d]``).

        The same computation as cutting both maps into windows and calling :meth:`forward` on the
        batch of windows; but the projections, the output projection, the residual and the norm
        act token by token, so they run on the maps and only Q, K, V are cut into windows: no
        window copies of the raw maps, which the projections would otherwise keep for backward.
        """
        b = query_map.shape[0]
        g = query_map.shape[1] // rows
        n, d = cols * rows, self.dim

        def windows(x):  # [b x H x W x d] → [b·n x h x g² x d_head]
            return self._heads(cut_map(x, cols, rows, kind).reshape(b * n, g * g, d))

        q = windows(self.q_proj(query_map))
        k = windows(self.k_proj(context_map))
        v = windows(self.v_proj(context_map))
        x = F.scaled_dot_product_attention(q, k, v)  # windows are the batch: (g²)² scores per window and head
        x = merge_windows(x.transpose(1, 2).reshape(b, n, g, g, d), cols, rows, kind)
        return self._finish(x, query_map)


class DualPerspectiveEnhancement(nn.Module):
    """Both enhancement directions over windows of the local and global maps.

    ``forward(local_map, global_map, cols, rows)`` → ``(global_out, local_out)``, both
    ``[b x rows·g x cols·g x d]``: ``global_out`` = the global map enhanced with local detail
    (global tokens as queries), ``local_out`` = the local map enhanced with global context.
    Parameters: ``attention`` when shared, else ``global_attention`` (global as query) and
    ``local_attention`` (local as query), only for the directions that run.
    """

    def __init__(self, dim: int, heads: int = 1, *, shared: bool = False, bias: bool = False,
                 block: str = "plain", global_query_windows: str = "strided",
                 local_query_windows: str = "contiguous", directions: str = "both"):
        super().__init__()
        for name, kind in (("global_query_windows", global_query_windows),
                           ("local_query_windows", local_query_windows)):
            if kind not in WINDOW_KINDS:
                raise ValueError(f"{name}={kind!r} is not valid; choose one of {list(WINDOW_KINDS)}")
        if directions not in DIRECTIONS:
            raise ValueError(f"directions={directions!r} is not valid; choose one of {list(DIRECTIONS)}")
        self.global_query_windows = global_query_windows
        self.local_query_windows = local_query_windows
        self.directions = directions
        self.shared = shared

        def make():
            return WindowCrossAttention(dim, heads, bias=bias, block=block)

        if shared:
            self.attention = make()
        else:
            if directions in ("both", "global_query"):
                self.global_attention = make()
            if directions in ("both", "local_query"):
                self.local_attention = make()

    def _attention(self, which: str) -> WindowCrossAttention:
        return self.attention if self.shared else getattr(self, f"{which}_attention")

    def forward(self, local_map: torch.Tensor, global_map: torch.Tensor, cols: int,
                rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        if local_map.shape != global_map.shape:
            raise ValueError(f"local map {tuple(local_map.shape)} and global map {tuple(global_map.shape)} differ")
        global_out, local_out = global_map, local_map
        if self.directions in ("both", "global_query"):
            global_out = self._attention("global").forward_windowed(global_map, local_map, cols, rows,
                                                                    self.global_query_windows)
        if self.directions in ("both", "local_query"):
            local_out = self._attention("local").forward_windowed(local_map, global_map, cols, rows,
                                                                  self.local_query_windows)
        return global_out, local_out
