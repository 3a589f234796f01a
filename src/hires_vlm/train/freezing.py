"""Which parameters a stage trains: freezing by module prefix, and the log of it.

Every parameter is frozen, then each ``trainable`` prefix is unfrozen with its learning rate (the
longest prefix decides); LoRA adapters (lora.py) go on afterwards, onto frozen layers. The
trainable/frozen state of every component is logged at the start of each stage (``components.txt``).
"""

from __future__ import annotations

import logging

import torch

from .arguments import ConfigError
from .lora import apply_lora, merge_lora  # noqa: F401  (re-exported: they were defined here)

logger = logging.getLogger("hires_vlm.train")


def set_trainable(model: torch.nn.Module, trainable: dict[str, float]) -> dict[str, float]:
    """Freeze everything, then unfreeze each prefix. Returns {parameter name: lr} of trainable ones."""
    names = [n for n, _ in model.named_parameters()]
    lrs: dict[str, float] = {}
    for prefix, lr in trainable.items():
        hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            tops = sorted({n.split(".")[0] for n in names} | {".".join(n.split(".")[:2]) for n in names if
                                                              n.startswith("connector.")})
            raise ConfigError(f"trainable prefix {prefix!r} matches no parameter; known modules: {tops}")
        for n in hits:
            # The longest (most specific) prefix decides the learning rate.
            if n not in lrs or len(prefix) > lrs[n][1]:
                lrs[n] = (lr, len(prefix))  # type: ignore[assignment]
    for n, p in model.named_parameters():
        p.requires_grad_(n in lrs)
    return {n: v[0] for n, v in lrs.items()}  # type: ignore[index]


def component_table(model: torch.nn.Module, lora: bool = False) -> list[tuple]:
    """(component, parameters, trainable parameters) for the tower, each connector part and the LM;
    with ``lora``, a fourth number: the trainable parameters that are LoRA adapters."""
    groups: dict[str, list[int]] = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        key = ".".join(parts[:2]) if parts[0] == "connector" else parts[0]
        g = groups.setdefault(key, [0, 0, 0])
        g[0] += p.numel()
        g[1] += p.numel() if p.requires_grad else 0
        g[2] += p.numel() if p.requires_grad and ".lora_" in n else 0
    return [(k, *v) if lora else (k, v[0], v[1]) for k, v in groups.items()]


def log_components(model, stage: str) -> str:
    rows = component_table(model, lora=True)
    lines = [f"stage {stage!r}: trainable / frozen components"]
    for name, total, train, adapters in rows:
        state = "trainable" if train == total else ("frozen" if train == 0 else "partly trainable")
        state = "LoRA adapters" if train and adapters == train else state
        lines.append(f"  {name:<32} {state:<17} {train:>12,} / {total:,} params")
    text = "\n".join(lines)
    logger.info(text)
    return text
