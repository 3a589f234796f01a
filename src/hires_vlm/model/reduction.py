"""Training-free visual token reduction: the settings, the counts, and which methods VisionZip fits.

Two baselines for SliME's text-guided router, usable with the methods' own trained weights:

* **FastV** (Chen et al. 2024, *An Image is Worth 1/2 Tokens After Layer 2*, arXiv 2403.06764) —
  inside the LM: layers ``< fastv_layer`` (K) see the whole sequence; at layer K each image keeps
  the ``fastv_keep`` share of its visual tokens that the last prompt token attended to most in
  layer K−1 (averaged over heads), and layers ``≥ K`` — and their KV cache — hold only those
  (``model/fastv.py``). Text-guided, like SliME's router.
* **VisionZip** (Yang et al. 2024, *VisionZip: Longer is Better but Not Necessary in Vision
  Language Models*, arXiv 2412.04467) — after the tower, per view: ``visionzip_keep`` of its tokens
  survive, dominant ones chosen by the tower's own attention and contextual ones merged from the
  rest (``vision/visionzip.py``). Text-free, so ``inspect`` can count it from the geometry.

Both are *run-time* settings, not part of a method: ``HiResVLMConfig.token_reduction`` (saved with
the model; set at load time with ``from_pretrained(path, token_reduction={...})``),
``HiResVLM.set_token_reduction(...)``, a per-call ``token_reduction={...}`` of ``forward`` /
``generate``, and ``--fastv-keep`` / ``--visionzip-keep`` of ``hires-vlm generate`` and ``inspect``.
A keep fraction of 1.0 (the default) switches a reduction off: the model is then exactly the
unreduced one. Counts: an image (FastV) or view (VisionZip) of n tokens keeps
``ceil(keep·n)`` of them, at least one.

VisionZip changes how many tokens each view gives, so it only fits methods whose connector takes
any number of tokens per view: ``llava`` (the projector, token by token) and ``llava_hd`` with the
official VisionZip LLaVA-NeXT layout (:func:`zipped_anyres_tokens`). Methods that read a view as a
g×g token map — resamplers with 2-D position embeddings (``monkey``, ``slime``), re-assembly and
pooling (``inf_llava``), pixel shuffle — are refused with the reason. A method may opt in by setting
the class attribute ``visionzip_layout = "flat"`` on its connector.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

#: VisionZip's released settings keep 54 dominant + 10 contextual tokens (also 108 + 20, 162 + 30): 10/64.
OFFICIAL_CONTEXTUAL_SHARE = 10 / 64

#: Why a method cannot take VisionZip's reduced views (methods not named here and without
#: ``visionzip_layout`` get a generic reason).
VISIONZIP_REFUSALS = {
    "monkey": "its resampler reads each view as a g×g token map (2-D position embeddings)",
    "slime": "its global mixture and local query former read each view as a g×g token map (2-D position "
             "embeddings) and the local tiles are compressed to a fixed number of queries anyway",
    "inf_llava": "it re-assembles the tiles' g×g token maps by 2-D position and pools them",
    "onevision": "its anyres_max layout un-pads and bilinearly shrinks the tiles' g×g token maps",
    "internvl": "its pixel shuffle merges 2×2 neighbours of each view's g×g token map",
}


@dataclass(frozen=True)
class TokenReduction:
    """Run-time reduction settings (see the module docstring). 1.0 keeps every token (off)."""

    fastv_keep: float = 1.0  # share of each image's visual tokens kept from layer K on (FastV's 1 − R)
    fastv_layer: int = 2  # K: layers < K see every token (the paper's K = 2)
    visionzip_keep: float = 1.0  # share of each view's tokens kept (official 64 of 576 ≈ 0.111)
    visionzip_contextual: float = OFFICIAL_CONTEXTUAL_SHARE  # share of the kept tokens that are contextual
    visionzip_cls: bool = True  # official: the CLS token is one of the dominant tokens (towers with a CLS)

    def __post_init__(self):
        for name in ("fastv_keep", "visionzip_keep"):
            check_keep(getattr(self, name), name)
        if not isinstance(self.fastv_layer, int) or isinstance(self.fastv_layer, bool) or self.fastv_layer < 1:
            raise ValueError(f"fastv_layer must be an integer ≥ 1 (the layer from which pruned tokens are dropped; "
                             f"FastV's K = 2), got {self.fastv_layer!r}")
        share = self.visionzip_contextual
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ValueError(f"visionzip_contextual must be a share in [0, 1) of the kept tokens, got {share!r}")
        if not isinstance(self.visionzip_cls, bool):
            raise ValueError(f"visionzip_cls must be true or false, got {self.visionzip_cls!r}")

    @property
    def fastv(self) -> bool:
        return self.fastv_keep < 1.0

    @property
    def visionzip(self) -> bool:
        return self.visionzip_keep < 1.0

    @property
    def active(self) -> bool:
        return self.fastv or self.visionzip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TokenReduction":
        return resolve_token_reduction({**self.to_dict(), **changes})


def check_keep(keep, name: str = "keep") -> float:
    """``keep`` as a float in (0, 1], or a ValueError that says what is allowed."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or math.isnan(keep) or not 0 < keep <= 1:
        raise ValueError(f"{name} must be a fraction in (0, 1] of the visual tokens to keep (1.0 keeps all of "
                         f"them, 0.5 half), got {keep!r}")
    return float(keep)


def resolve_token_reduction(spec: "TokenReduction | dict | None") -> TokenReduction:
    """A :class:`TokenReduction` from itself, a dict of its fields (unknown ones refused) or None (off)."""
    if spec is None:
        return TokenReduction()
    if isinstance(spec, TokenReduction):
        return spec
    if not isinstance(spec, dict):
        raise TypeError(f"token_reduction is a dict of {list(TokenReduction.__dataclass_fields__)} or None, "
                        f"got {type(spec).__name__}")
    names = set(TokenReduction.__dataclass_fields__)
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ValueError(f"unknown token_reduction field(s) {unknown}; valid fields: {sorted(names)}")
    values = {k: (float(v) if k.endswith(("_keep", "_contextual")) and isinstance(v, int)
                  and not isinstance(v, bool) else v) for k, v in spec.items()}
    return TokenReduction(**values)


def kept_count(n: int, keep: float) -> int:
    """Tokens kept of ``n`` at fraction ``keep``: ``ceil(keep·n)`` (rounded to 6 decimals first, so
    0.3·10 is 3), at least 1, at most n; 0 of 0."""
    if n <= 0:
        return 0
    return max(1, min(n, math.ceil(round(keep * n, 6))))


def visionzip_split(tokens: int, keep: float, contextual: float, cls: bool) -> tuple[int, int, int]:
    """``(dominant patches, CLS kept (0/1), contextual)`` for a view of ``tokens`` patch tokens; they
    add up to :func:`kept_count`. ``cls``: whether the CLS token is one of the dominant ones."""
    k = kept_count(tokens, keep)
    n_ctx = min(int(round(k * contextual)), k - 1)
    n_dom = k - n_ctx
    use_cls = 1 if cls else 0
    return n_dom - use_cls, use_cls, n_ctx


# ---------------------------------------------------------------------------- VisionZip × methods
def visionzip_layout(method_name: str, connector_class: type | None = None) -> str:
    """How a method takes VisionZip's reduced views: ``"flat"`` (its connector projects any number of
    tokens per view) or ``"anyres"`` (``llava_hd``: the official VisionZip LLaVA-NeXT layout);
    a ValueError with the reason for every other method."""
    declared = getattr(connector_class, "visionzip_layout", None)
    if declared in ("flat", "anyres"):
        return declared
    if method_name == "llava":
        return "flat"
    if method_name == "llava_hd":
        return "anyres"
    why = VISIONZIP_REFUSALS.get(method_name, "its connector lays each view out as a g×g token map")
    raise ValueError(f"VisionZip (visionzip_keep < 1) cannot be combined with method {method_name!r}: {why}. "
                     "It works with 'llava' and 'llava_hd'; use FastV (fastv_keep), which works with every method, "
                     "or set visionzip_keep to 1.0")


def visionzip_visual_tokens(method_name: str, num_views: int, grid: int, reduction: TokenReduction,
                            connector_class: type | None = None) -> int:
    """Visual tokens of an image of ``num_views`` views under VisionZip (every view keeps the same
    number; the ``llava_hd`` layout has no newlines and no un-padding)."""
    visionzip_layout(method_name, connector_class)
    return num_views * kept_count(grid * grid, reduction.visionzip_keep)


def zipped_anyres_tokens(projected: torch.Tensor, dominant: torch.Tensor, n_cls: int, record,
                         grid: int) -> torch.Tensor:
    """One image's tokens in the official VisionZip LLaVA-NeXT layout.

    ``projected [v x k x dl]``: the image's views after VisionZip and the projector, each view
    ``[CLS?] [dominant patches, raster order] [contextual]``; ``dominant [v x n_dom]``: the patch
    index of each dominant token. Layout (VisionZip ``llava_arch.py``
    ``restore_image_features_sorted``): the base view's k tokens as they are; then the tiles'
    dominant tokens in raster order over the whole (rows·g)×(cols·g) grid — no un-padding, no
    newlines —; then each tile's CLS token; then each tile's contextual tokens.
    """
    base_i = record.index("global")
    tile_i = record.index("tile")
    parts = [projected[i] for i in base_i]
    if tile_i:
        cols, _ = record.grid
        tiles = projected[tile_i]  # [n x k x dl]
        n_dom = dominant.shape[1]
        dom = tiles[:, n_cls:n_cls + n_dom]  # [n x n_dom x dl]
        t = torch.arange(len(tile_i), device=dominant.device)[:, None]
        patch = dominant[tile_i]  # [n x n_dom]
        row = (t // cols) * grid + patch // grid
        col = (t % cols) * grid + patch % grid
        order = torch.argsort((row * (cols * grid) + col).flatten())
        parts.append(dom.reshape(-1, dom.shape[-1])[order])
        if n_cls:
            parts.append(tiles[:, 0])
        parts.append(tiles[:, n_cls + n_dom:].reshape(-1, tiles.shape[-1]))
    return torch.cat(parts, 0)


def reduction_report(info: dict, reduction: TokenReduction, num_views: int, grid: int,
                     visual_tokens: int) -> dict:
    """The fields ``hires-vlm inspect`` adds for a reduction: ``visionzip_visual_tokens`` (what enters
    the LM), ``fastv_visual_tokens`` (what layers ≥ K keep) and ``visual_tokens_after_reduction``.
    ``visual_tokens``: the count before reduction (after routing, when routed)."""
    out = {"token_reduction": reduction.to_dict()}
    n = visual_tokens
    if reduction.visionzip:
        n = visionzip_visual_tokens(info["method"], num_views, grid, reduction)
        out["visionzip_visual_tokens"] = n
    if reduction.fastv:
        n = kept_count(n, reduction.fastv_keep)
        out["fastv_visual_tokens"] = n
    out["visual_tokens_after_reduction"] = n
    return out
