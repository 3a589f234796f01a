"""SliME's text-guided router: keep the local tokens most similar to the text, up to a mass γ.

No parameters. For one image, with its projected local tokens ``z_v [n x dl]`` and the LM input
embeddings of its text ``z_x [L x dl]``:

1. cosine similarity of every local token with every text token, ``[n x L]``;
2. aggregate over the text tokens — ``mean`` (paper) or ``sum`` (official);
3. optionally a first ``softmax(·/pre_softmax)`` (the official code until Nov 2024 had one with
   temperature 0.5, so the released checkpoints were probably trained with it; HEAD has none);
4. in training only, Gaussian noise ``N(0, noise_std²)`` (std 0.1 in both paper and code) — added
   before the final softmax, where the official code adds it (the paper only says "to the score");
5. ``softmax(·/temperature)`` over the image's local tokens (all tiles together);
6. sort descending, cumulative sum, keep a prefix (``cutoff``):

   * ``reach`` — the shortest prefix whose mass reaches γ (SliME paper: "until the accumulated
     score surpasses γ");
   * ``official`` — the official code: the positions whose cumulative mass is ≤ γ, plus one more.
     This equals ``reach`` except when a cumulative sum equals γ exactly, where it keeps one more;
   * ``within`` — the longest prefix whose mass stays ≤ γ (at least one token): what ``official``
     keeps one more than;

7. restore the spatial (raster) order of the kept tokens.

γ ≥ 1 keeps every token. Selection is hard: the scores are computed without gradient; the kept
tokens themselves carry gradient back to the compressor. Without text (e.g. the ``plain``
template, whose prompt is the image alone) the scores are uniform.

Shapes: ``local [n x d]``, ``text [L x d]`` → kept indices ``[k]`` (ascending) and probs ``[n]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ROUTER_AGGREGATES = ("mean", "sum")
ROUTER_CUTOFFS = ("reach", "official", "within")
COSINE_EPS = 1e-8


@dataclass(frozen=True)
class RouterSettings:
    gamma: float = 0.95
    aggregate: Literal["mean", "sum"] = "sum"
    temperature: float = 1.0
    noise_std: float = 0.1
    pre_softmax: float | None = None  # temperature of the older official extra softmax (0.5), or None
    cutoff: Literal["reach", "official", "within"] = "official"

    def __post_init__(self):
        if self.aggregate not in ROUTER_AGGREGATES:
            raise ValueError(f"router aggregate {self.aggregate!r} is not supported; choose {list(ROUTER_AGGREGATES)}")
        if self.cutoff not in ROUTER_CUTOFFS:
            raise ValueError(f"router cutoff {self.cutoff!r} is not supported; choose {list(ROUTER_CUTOFFS)}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"router gamma must be in (0, 1], got {self.gamma}")
        if self.temperature <= 0 or (self.pre_softmax is not None and self.pre_softmax <= 0):
            raise ValueError("router temperatures must be positive")
        if self.noise_std < 0:
            raise ValueError(f"router noise_std must be ≥ 0, got {self.noise_std}")


@dataclass
class RouteResult:
    indices: torch.Tensor  # [k] kept local-token positions, ascending (raster order)
    probs: torch.Tensor  # [n] the final selection scores (sum to 1)


def text_similarity(local: torch.Tensor, text: torch.Tensor, aggregate: str) -> torch.Tensor:
    """Cosine similarity of each local token with each text token, aggregated over text: ``[n]`` float32."""
    n = local.shape[0]
    if text is None or text.shape[0] == 0:
        return local.new_zeros(n, dtype=torch.float32)
    v = F.normalize(local.float(), dim=-1, eps=COSINE_EPS)
    t = F.normalize(text.float(), dim=-1, eps=COSINE_EPS)
    sim = v @ t.T  # [n x L]
    return sim.sum(-1) if aggregate == "sum" else sim.mean(-1)


def cumulative_count(sorted_probs: torch.Tensor, gamma: float, cutoff: str) -> int:
    """How many of the descending ``sorted_probs`` to keep for mass ``gamma`` under ``cutoff``."""
    n = sorted_probs.shape[0]
    if n == 0:
        return 0
    if gamma >= 1.0:
        return n
    csum = torch.cumsum(sorted_probs.double(), 0)
    below = int((csum <= gamma).sum())  # csum is non-decreasing, so this is a prefix length
    if cutoff == "official":
        return min(n, below + 1)
    if cutoff == "within":
        return max(1, below)
    reached = torch.nonzero(csum >= gamma).flatten()
    return int(reached[0]) + 1 if reached.numel() else n


@torch.no_grad()
def route(local: torch.Tensor, text: torch.Tensor | None, settings: RouterSettings, training: bool = False,
          generator: torch.Generator | None = None) -> RouteResult:
    """Select local tokens for one image (see the module docstring). No gradient flows through it."""
    s = settings
    scores = text_similarity(local.detach(), None if text is None else text.detach(), s.aggregate)
    if s.pre_softmax is not None:
        scores = torch.softmax(scores / s.pre_softmax, dim=-1)
    if training and s.noise_std > 0:
        noise = torch.randn(scores.shape, generator=generator, device=scores.device, dtype=scores.dtype)
        scores = scores + noise * s.noise_std
    probs = torch.softmax(scores / s.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    k = cumulative_count(sorted_probs, s.gamma, s.cutoff)
    kept, _ = torch.sort(order[:k])
    return RouteResult(kept, probs)
