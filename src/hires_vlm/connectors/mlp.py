"""The MLP projector from the tower's width to the LM's width (LLaVA-1.5's ``mlp2x_gelu``).

``Linear(dv, dl) → GELU → Linear(dl, dl)``; sub-module names ``0`` and ``2`` follow LLaVA's
``mm_projector`` so that official weights map one to one. ``[... x dv]`` → ``[... x dl]``.

``ln_mlp2x_gelu`` is InternVL's ``mlp1``: ``LayerNorm(dv) → Linear(dv, dl) → GELU → Linear(dl, dl)``
(dv there is the pixel-shuffled width, 4× the tower's), sub-modules ``0``, ``1``, ``3`` as in
``modeling_internvl_chat.py``.
"""

from __future__ import annotations

from torch import nn

PROJECTOR_TYPES = ("linear", "mlp2x_gelu", "mlp3x_gelu", "ln_mlp2x_gelu")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    if kind == "ln_mlp2x_gelu":
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    depth = {"mlp2x_gelu": 2, "mlp3x_gelu": 3}.get(kind)
    if depth is None:
        raise ValueError(f"projector {kind!r} is not supported; choose one of {PROJECTOR_TYPES}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)
