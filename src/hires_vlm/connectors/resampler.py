"""Resampler (query former): learnable queries on a q×q grid read a g×g token map by cross-attention.

SliME's global expert f_q, SliME's local compressor and the ``monkey`` projector are all this
module (the Qwen-VL-style resampler of SliME's official code, written anew):

* ``q_grid²`` learnable queries, ``LayerNorm`` on the queries, on the keys/values and on the
  output (eps 1e-6);
* fixed 2-D sin-cos position embeddings added to the queries and to the keys, never to the
  values; the queries' table is laid out on the q×q query grid, the keys' is that table resized
  **bicubically from the query grid to the key grid** when the two differ (as the official code
  does, e.g. 12×12 → 24×24 for the local compressor). The table is a saved buffer, ``pos_table``:
  computed in float32 for a new model, the checkpoint's own values (fp16 in SliME's releases) for
  an imported one, so that an import computes with the numbers the official code computes with;
* one multi-head cross-attention (``nn.MultiheadAttention``, whose parameter names match the
  official checkpoints) — no self-attention, no feed-forward block, no residual.

It works in the tower's feature space: ``dim`` is the tower's width, so its output still needs
the MLP projector to reach the LM's width. Heads: the official code uses ``dim // 128`` (8 for
CLIP-L); the tiny default uses 4.

Shapes: ``[b x t x kv_dim]`` with t = g² (a square token map) → ``[b x q_grid² x dim]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[M]`` positions → ``[M x dim]``: ``dim/2`` sines then ``dim/2`` cosines, MAE-style frequencies."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos embedding needs an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table of a ``grid``×``grid`` map, row-major: ``[grid² x dim]`` (float32).

    The first half of the channels encodes the column (x), the second half the row (y) — the
    channel order of the official ``get_2d_sincos_pos_embed`` (which meshgrids width first).
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, xs.reshape(-1)), sincos_1d(dim // 2, ys.reshape(-1))], dim=1)
    return emb.to(torch.float32)


def resize_pos_embed(table: torch.Tensor, src_grid: int, dst_grid: int) -> torch.Tensor:
    """``[src² x d]`` → ``[dst² x d]`` by bicubic interpolation (align_corners False); same grid: unchanged."""
    if src_grid == dst_grid:
        return table
    d = table.shape[-1]
    img = table.float().reshape(1, src_grid, src_grid, d).permute(0, 3, 1, 2)
    out = F.interpolate(img, size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(dst_grid * dst_grid, d).to(table.dtype)


def square_side(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what} must be a square number (a side×side grid), got {n}")
    return side


class Resampler(nn.Module):
    """Learnable-query cross-attention over a square token map (see the module docstring).

    Args:
        num_queries: a square number, q_grid² (SliME: g² for the global expert, 144 for tiles).
        dim: width of queries, attention and output (the tower's width).
        heads: attention heads (official: ``dim // 128``).
        kv_dim: width of the input tokens; a bias-free linear maps it to ``dim`` when it differs.
    """

    def __init__(self, num_queries: int, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.q_grid = square_side(num_queries, "the number of resampler queries")
        self.num_queries = num_queries
        self.dim = dim
        if heads < 1 or dim % heads:
            raise ValueError(f"resampler heads={heads} must be ≥ 1 and divide the width {dim}")
        if dim % 4:
            raise ValueError(f"the resampler width must be divisible by 4 (2-D sin-cos), got {dim}")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(num_queries, dim))
        kv_dim = dim if kv_dim is None else kv_dim
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False) if kv_dim != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_q = nn.LayerNorm(dim, eps=LN_EPS)
        self.ln_kv = nn.LayerNorm(dim, eps=LN_EPS)
        self.ln_post = nn.LayerNorm(dim, eps=LN_EPS)
        # The fixed table of the query grid (not learned; saved, so an imported table survives).
        self.register_buffer("pos_table", sincos_2d(dim, self.q_grid), persistent=True)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        nn.init.trunc_normal_(self.query, std=0.02)

    def init_parameters(self, init) -> None:
        """Called by ``HiResVLM._init_weights`` (``init`` = ``transformers.initialization``, which
        leaves loaded weights alone). Children (attention, norms, kv_proj) get the library's default."""
        init.trunc_normal_(self.query, std=0.02)
        init.copy_(self.pos_table, sincos_2d(self.dim, self.q_grid))  # a model saved before the buffer existed
        self._pos_cache.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self._pos_cache.clear()  # the table may change under a cached resize
        super()._load_from_state_dict(*args, **kwargs)

    def pos_embed(self, grid: int, device, dtype) -> torch.Tensor:
        """The fixed table for a ``grid``×``grid`` map: the query grid's table, bicubically resized."""
        key = (grid, device, dtype, self.pos_table.data_ptr())
        if key not in self._pos_cache:
            table = resize_pos_embed(self.pos_table.float(), self.q_grid, grid)
            self._pos_cache[key] = table.to(device=device, dtype=dtype)
        return self._pos_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b x t x kv_dim]`` (t = g², a square map) → ``[b x num_queries x dim]``."""
        if x.ndim != 3:
            raise ValueError(f"the resampler takes [batch x tokens x width], got {tuple(x.shape)}")
        k_grid = square_side(x.shape[1], "the number of tokens the resampler reads")
        kv = self.ln_kv(self.kv_proj(x))
        q = self.ln_q(self.query) + self.pos_embed(self.q_grid, x.device, kv.dtype)
        keys = kv + self.pos_embed(k_grid, x.device, kv.dtype)
        q = q.unsqueeze(0).expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, keys, kv, need_weights=False)
        return self.ln_post(out)
