"""Which parameters a stage trains: freezing by module prefix, LoRA on the language model, the log of it.

Every parameter is frozen, then each ``trainable`` prefix is unfrozen with its learning rate (the
longest prefix decides); the trainable/frozen state of every component is logged at the start of
each stage (``components.txt``).
"""

from __future__ import annotations

import logging

import torch

from .config import ConfigError

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


def apply_lora(model: torch.nn.Module, spec: dict) -> dict[str, float]:
    """Wrap ``model.language_model`` with peft LoRA adapters; returns {parameter name: lr} of the adapters.

    The language model's own weights stay frozen (a stage with ``lora`` must not also train
    ``language_model``); :func:`merge_lora` folds the adapters into them before the stage saves.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("a stage with 'lora' needs peft: pip install 'hires-vlm[lora]'") from None
    lm = model.language_model
    if any(p.requires_grad for p in lm.parameters()):
        raise ConfigError("a stage with 'lora' must not also list 'language_model' (or a part of it) in "
                          "'trainable': LoRA trains adapters on the frozen language model")
    targets = spec["target_modules"]
    config = LoraConfig(r=int(spec["r"]), lora_alpha=float(spec.get("alpha", spec["r"])),
                        lora_dropout=float(spec.get("dropout", 0.0)), bias="none",
                        target_modules=targets if isinstance(targets, str) else list(targets))
    model.language_model = get_peft_model(lm, config)
    lr = float(spec["lr"])
    return {n: lr for n, p in model.named_parameters() if p.requires_grad and n.startswith("language_model.")}


def merge_lora(model: torch.nn.Module) -> None:
    """Fold LoRA adapters into the language model's weights and drop the peft wrapper (no-op without one)."""
    lm = model.language_model
    if hasattr(lm, "merge_and_unload"):
        model.language_model = lm.merge_and_unload()


def component_table(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    """(component, parameters, trainable parameters) for the tower, each connector part and the LM."""
    groups: dict[str, list[int]] = {}
    for n, p in model.named_parameters():
        parts = n.split(".")
        key = ".".join(parts[:2]) if parts[0] == "connector" else parts[0]
        g = groups.setdefault(key, [0, 0])
        g[0] += p.numel()
        g[1] += p.numel() if p.requires_grad else 0
    return [(k, v[0], v[1]) for k, v in groups.items()]


def log_components(model, stage: str) -> str:
    rows = component_table(model)
    lines = [f"stage {stage!r}: trainable / frozen components"]
    for name, total, train in rows:
        state = "trainable" if train == total else ("frozen" if train == 0 else "partly trainable")
        lines.append(f"  {name:<32} {state:<17} {train:>12,} / {total:,} params")
    text = "\n".join(lines)
    logger.info(text)
    return text
