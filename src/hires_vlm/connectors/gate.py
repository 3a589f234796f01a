"""SliME's global mixture of adapters: a per-token noisy gate over an MLP expert and a resampler expert.

For a global-view feature map x (g² tokens of the tower's width):

* ``f_m(x)`` = the MLP projector applied to every token;
* ``f_q(x)`` = a :class:`~hires_vlm.connectors.resampler.Resampler` with as many queries as there
  are tokens (g²), its output passed through the **same** MLP (the projector is shared, not copied);
* token i gets ``G_i0 · f_m(x)_i + G_i1 · f_q(x)_i`` with ``G_i = softmax(x_i · W_g + noise_i)``
  computed from the raw tower feature of token i.

Noise (training only), ``noise``:

* ``paper``: ``N(0, 1) · softplus(x · W_noise)`` (SliME §2.1);
* ``official``: ``N(0, 1) · (softplus(x · W_g) + 0.01)`` — the official code scales the noise with
  ``W_g``; ``W_noise`` exists but is never used;
* ``none``: no noise.

``W_g`` and ``W_noise`` start at zero (both papers' code), so an untrained gate weighs the experts
0.5 / 0.5. The official top-k with k = 2 of 2 experts is the plain softmax (its 1e-6
renormalisation is left out). There is no load-balancing loss (the official code computes none).

``mode`` (a run-time choice, the official ``mm_learnable_gated``): ``mix`` uses the gate, ``mlp``
returns f_m alone and ``resampler`` f_q alone — the official pretraining stages 1a and 1b.

Shapes: x ``[b x t x dv]`` → tokens ``[b x t x dl]`` and gate weights ``[b x t x 2]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .resampler import Resampler

GATE_NOISE = ("paper", "official", "none")
GATE_MODES = ("mix", "mlp", "resampler")
OFFICIAL_NOISE_EPS = 0.01


class NoisyGate(nn.Module):
    """``softmax(x · W_g + noise)`` over ``num_experts``; ``W_g``, ``W_noise`` zero-initialised."""

    def __init__(self, in_dim: int, num_experts: int = 2, noise: Literal["paper", "official", "none"] = "paper"):
        super().__init__()
        if noise not in GATE_NOISE:
            raise ValueError(f"gate noise {noise!r} is not supported; choose one of {list(GATE_NOISE)}")
        self.noise = noise
        self.w_gate = nn.Parameter(torch.zeros(in_dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(in_dim, num_experts))

    def init_parameters(self, init) -> None:
        init.zeros_(self.w_gate)
        init.zeros_(self.w_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[... x in_dim]`` → weights ``[... x num_experts]`` (noisy in training mode)."""
        logits = x @ self.w_gate.to(x.dtype)
        if self.training and self.noise != "none":
            if self.noise == "paper":
                std = F.softplus(x @ self.w_noise.to(x.dtype))
            else:
                std = F.softplus(logits) + OFFICIAL_NOISE_EPS
            logits = logits + torch.randn_like(logits) * std
        return torch.softmax(logits, dim=-1)


class GatedMixture(nn.Module):
    """The gate and the resampler expert; the shared MLP projector is passed to ``forward``.

    The projector is not a sub-module here on purpose: it belongs to the method (the local branch
    uses it too), so its parameters have one name (``connector.projector``) and one learning rate.
    """

    def __init__(self, in_dim: int, num_tokens: int, heads: int, noise: str = "paper"):
        super().__init__()
        self.resampler = Resampler(num_tokens, in_dim, heads)
        self.gate = NoisyGate(in_dim, 2, noise)

    def forward(self, x: torch.Tensor, projector: Callable[[torch.Tensor], torch.Tensor],
                mode: Literal["mix", "mlp", "resampler"] = "mix") -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[b x t x dv]`` → (tokens ``[b x t x dl]``, weights ``[b x t x 2]``: the share of each expert)."""
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode {mode!r} is not supported; choose one of {list(GATE_MODES)}")
        if mode == "mlp":
            out = projector(x)
            return out, _one_hot(x, 0)
        q = self.resampler(x)
        if q.shape[1] != x.shape[1]:
            raise ValueError(f"the resampler expert gives {q.shape[1]} tokens for {x.shape[1]} global tokens; "
                             "it needs as many queries as global tokens")
        fq = projector(q)
        if mode == "resampler":
            return fq, _one_hot(x, 1)
        weights = self.gate(x)
        fm = projector(x)
        out = weights[..., :1].to(fm.dtype) * fm + weights[..., 1:].to(fq.dtype) * fq
        return out, weights


def _one_hot(x: torch.Tensor, k: int) -> torch.Tensor:
    w = x.new_zeros(*x.shape[:-1], 2)
    w[..., k] = 1
    return w
