"""Pixel shuffle (space-to-depth) of a view's token map: InternVL's token merge before its projector.

Each f×f block of neighbouring tokens becomes one token holding their features side by side, so a
g×g map of d-dim tokens becomes (g/f)×(g/f) tokens of f²·d (InternVL: f = 2, ``downsample_ratio
= 0.5``; ``internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py``,
``InternVLChatModel.pixel_shuffle`` called from ``extract_feature``). Channel order inside a merged
token: block rows outer, block columns next, features innermost — for f = 2,
``[x(2i, 2j), x(2i, 2j+1), x(2i+1, 2j), x(2i+1, 2j+1)]``. ``ps_version``: ``"v2"`` (InternVL 1.5 and
later) gives the merged map row-major; ``"v1"`` (InternVL 1.1/1.2) leaves it transposed, so the
tokens come out column by column. Parameter-free.

Shapes: ``[v x g·g x d]`` → ``[v x (g/f)² x f²·d]``.
"""

from __future__ import annotations

import torch

PS_VERSIONS = ("v2", "v1")


def check_shuffle_grid(g: int, factor: int, what: str = "pixel shuffle") -> int:
    """(g/f): the merged map's side; a clear error when ``factor`` does not divide ``g``."""
    if factor < 1:
        raise ValueError(f"{what}: the shuffle factor must be at least 1, got {factor}")
    if g % factor:
        raise ValueError(
            f"{what} merges {factor}x{factor} neighbouring tokens, so the tower's token grid must be a multiple of "
            f"{factor} per side; this tower gives {g}x{g} tokens per view (e.g. SigLIP-384/14: 27). Use a tower "
            f"whose image_size/patch_size is a multiple of {factor} (CLIP-L/14-336: 24, InternViT-448/14: 32, "
            f"the tiny 112/14: 8), or a shuffle factor that divides {g} (1 turns the merge off)")
    return g // factor


def pixel_shuffle(features: torch.Tensor, factor: int = 2, ps_version: str = "v2") -> torch.Tensor:
    """Merge every ``factor``×``factor`` block of each view's square token map into one token."""
    if ps_version not in PS_VERSIONS:
        raise ValueError(f"ps_version {ps_version!r} is not supported; choose one of {list(PS_VERSIONS)}")
    v, t, d = features.shape
    g = int(round(t ** 0.5))
    if g * g != t:
        raise ValueError(f"pixel shuffle needs a square token map per view, got {t} tokens")
    side = check_shuffle_grid(g, factor)
    if factor == 1:
        return features
    # [v, (I, m), (J, k), d] → [v, I, J, m, k, d]: block (I, J), offsets (m, k) inside it
    blocks = features.reshape(v, side, factor, side, factor, d).permute(0, 1, 3, 2, 4, 5)
    if ps_version == "v1":
        blocks = blocks.transpose(1, 2)
    return blocks.reshape(v, side * side, factor * factor * d)
