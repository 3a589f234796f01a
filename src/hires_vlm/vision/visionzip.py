"""VisionZip (Yang et al. 2024, arXiv 2412.04467; official code dvlab-research/VisionZip): fewer
tokens per view, chosen by the tower's own attention, before any connector.

Per view, at the layer that makes the features (the tower's ``vision_feature_layer``; LLaVA's −2
is the official choice, which reads ``attentions[-2]`` and ``hidden_states[-2]``):

1. **scores** — with a CLS token (CLIP): the attention of the CLS query to every patch, averaged
   over heads (the official code sums over heads: the same ranking). A tower *without* CLS
   (SigLIP) has no such row: a patch's score is then the mean attention it *receives* over all
   queries and heads (the no-CLS variant of PruMerge / VisionZip);
2. **dominant tokens** — the top-scoring patches, kept in raster order, after the CLS token's
   own feature when ``cls`` (official: the CLS token counts as one of the dominant tokens);
3. **contextual tokens** — among the remaining patches (raster order), every ``step``-th one is a
   target (``step = max(1, remaining // contextual)``, the first ``contextual`` of them); every
   other remaining patch goes to the target whose key is most similar (cosine of the layer's keys
   averaged over heads), and a contextual token is its target's feature **plus the mean** of the
   features assigned to it (the official formula; a target nobody joins stays as it is).

Output per view: ``[CLS?] [dominant] [contextual]``. The attention and keys are computed here
from the layer's ``q_proj`` / ``k_proj`` on the layer's input (a forward pre-hook), so the tower
keeps running with SDPA; nothing in it changes. The frozen tower's feature cache is bypassed
(it holds features, not attentions).

Shapes: views ``[v x c x S x S]`` → features ``[v x t x d]`` (t = g²), scores ``[v x t]``, keys
``[v x t x dh]`` → tokens ``[v x k x d]``, dominant patch indices ``[v x n_dom]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tower import VisionTower


@dataclass
class TowerProbe:
    """What VisionZip reads from one tower forward (see the module docstring for the shapes)."""

    features: torch.Tensor  # [v x t x d] patch features (CLS dropped), as the tower gives them
    scores: torch.Tensor  # [v x t] float32: CLS→patch attention, or mean attention received without CLS
    keys: torch.Tensor  # [v x t x dh] float32: the layer's keys of the patches, averaged over heads
    cls: torch.Tensor | None  # [v x d] the CLS token's feature, None for a tower without CLS


@dataclass
class ZippedViews:
    tokens: torch.Tensor  # [v x k x d]: [CLS?] [dominant] [contextual]
    dominant: torch.Tensor  # [v x n_dom] patch indices of the dominant tokens, ascending
    n_cls: int  # 1 when the CLS token leads every view, else 0
    n_contextual: int


def _attention_layer(tower: VisionTower):
    _, layers = tower._encoder_layers()
    if layers is None:
        raise ValueError("VisionZip reads the tower's attention and needs a tower with encoder.layers "
                         f"(CLIP, SigLIP); {type(tower.model).__name__} has none")
    k = tower.feature_layer_index
    if k < 1:
        raise ValueError("VisionZip reads the attention of the layer that makes the features; vision_feature_layer "
                         "0 is the embeddings, which no attention layer makes: use a layer ≥ 1 (LLaVA: −2)")
    layer = layers[k - 1]
    attn = getattr(layer, "self_attn", None)
    if attn is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "num_heads", "head_dim")):
        raise ValueError(f"VisionZip needs a ViT layer with self_attn.q_proj/k_proj (CLIP, SigLIP); "
                         f"{type(layer).__name__} has none")
    return layer, attn


def _scores_and_keys(attn, hidden: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(scores [v x t], keys [v x t x dh], has_cls)`` of a layer's input ``hidden [v x N x d]``."""
    v, n, _ = hidden.shape
    if n == num_patches + 1:
        has_cls = True
    elif n == num_patches:
        has_cls = False
    else:
        raise ValueError(f"VisionZip: the tower's layer sees {n} tokens for {num_patches} patches; only towers with "
                         "no or one (CLS) extra token are supported")
    heads, hd = int(attn.num_heads), int(attn.head_dim)
    scale = float(getattr(attn, "scale", hd ** -0.5))
    q = attn.q_proj(hidden).float().view(v, n, heads, hd).transpose(1, 2)  # [v x H x N x hd]
    k = attn.k_proj(hidden).float().view(v, n, heads, hd).transpose(1, 2)
    if has_cls:
        probs = torch.softmax((q[:, :, :1] @ k.transpose(-1, -2)) * scale, dim=-1)  # [v x H x 1 x N]
        scores = probs[:, :, 0, 1:].mean(1)
    else:  # the mean attention each patch receives, one view at a time to bound memory
        scores = torch.stack([torch.softmax((q[i] @ k[i].transpose(-1, -2)) * scale, dim=-1).mean((0, 1))
                              for i in range(v)])
    keys = k.mean(1)  # [v x N x hd], averaged over heads as the official ``metric``
    return scores, keys[:, 1:] if has_cls else keys, has_cls


def probe_tower(tower: VisionTower, pixel_values: torch.Tensor) -> TowerProbe:
    """One (chunked) tower forward that also returns the feature layer's scores, keys and CLS feature."""
    layer, attn = _attention_layer(tower)
    stats: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    cls_rows: list[torch.Tensor] = []

    def before_attention(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        with torch.no_grad():
            stats.append(_scores_and_keys(module, hidden, tower.num_tokens))

    def after_layer(module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if out.shape[1] == tower.num_tokens + 1:
            cls_rows.append(out[:, 0])

    handles = [attn.register_forward_pre_hook(before_attention, with_kwargs=True),
               layer.register_forward_hook(after_layer)]
    try:
        features = tower._encode_all(pixel_values)  # not the feature cache: it holds no attention
    finally:
        for h in handles:
            h.remove()
    if not stats:
        raise RuntimeError("VisionZip: the tower's attention layer did not run")
    has_cls = stats[0][2]
    return TowerProbe(features=features, scores=torch.cat([s[0] for s in stats]),
                      keys=torch.cat([s[1] for s in stats]),
                      cls=torch.cat(cls_rows).to(features.dtype) if has_cls and cls_rows else None)


def zip_views(probe: TowerProbe, n_dominant: int, n_contextual: int, use_cls: bool) -> ZippedViews:
    """Dominant + contextual tokens of every view (the module docstring's steps 2–3).

    ``n_dominant`` patches are kept by score; with ``use_cls`` (and a tower with CLS) the CLS
    feature leads the view; ``n_contextual`` tokens are merged from the rest.
    """
    feats = probe.features
    v, t, d = feats.shape
    if n_dominant < 0 or n_contextual < 0 or n_dominant + n_contextual > t:
        raise ValueError(f"VisionZip: {n_dominant} dominant + {n_contextual} contextual tokens from {t} per view")
    dominant = torch.topk(probe.scores, n_dominant, dim=1).indices.sort(dim=1).values  # [v x n_dom]
    rows = torch.arange(v, device=feats.device)[:, None]
    parts = []
    n_cls = 0
    if use_cls and probe.cls is not None:
        parts.append(probe.cls[:, None].to(feats.dtype))
        n_cls = 1
    parts.append(feats[rows, dominant])
    if n_contextual:
        taken = torch.zeros(v, t, dtype=torch.bool, device=feats.device)
        taken[rows, dominant] = True
        rest = torch.argsort(taken.to(torch.int8), dim=1, stable=True)[:, : t - n_dominant]  # raster order
        r = rest.shape[1]
        step = max(1, r // n_contextual)
        pick = torch.arange(0, r, step, device=feats.device)[:n_contextual]
        is_target = torch.zeros(r, dtype=torch.bool, device=feats.device)
        is_target[pick] = True
        targets, others = rest[:, pick], rest[:, ~is_target]  # [v x c], [v x r−c]
        metric = F.normalize(probe.keys, dim=-1)
        sim = metric[rows, others] @ metric[rows, targets].transpose(1, 2)  # [v x r−c x c]
        assign = F.one_hot(sim.argmax(-1), n_contextual).to(feats.dtype)  # [v x r−c x c]
        counts = assign.sum(1).clamp(min=1)[..., None]  # [v x c x 1]
        merged = (assign.transpose(1, 2) @ feats[rows, others]) / counts
        parts.append(feats[rows, targets] + merged)
    return ZippedViews(torch.cat(parts, 1), dominant, n_cls, n_contextual)
