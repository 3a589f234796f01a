"""LoRA adapters (peft) of a stage: which layers get them, training them on frozen weights, and saving
them folded into the weights (``lora.save: merged``, the default) or alone (``lora.save: adapter``),
with :func:`load_lora_output` to put them back onto their base model.

``target_modules`` resolution (:func:`resolve_targets`):

* a name whose first part is a component of ``HiResVLM`` (``vision_tower``, ``connector``,
  ``language_model``) is matched against the model's module names from the root;
* any other name is matched inside the language model the way peft matches (a module called
  ``q_proj``, or whose name ends in ``.q_proj``) — what ``lora`` meant before it reached further;
* ``*`` and ``?`` are wildcards (``*`` also crosses dots: ``vision_tower.*.q_proj``);
  ``all-linear`` is every linear layer of the language model but its output layer (peft's meaning).

A name selects the modules it matches and everything under them; the linear layers among those get
adapters (``connector`` or ``connector.*``: every linear layer of the connector; the output
projection of ``nn.MultiheadAttention`` is left out, since that module reads its weight directly).
A name that selects no linear layer is an error that shows close module names.

Freezing: the layers that get adapters must be frozen (a stage may not also list them in
``trainable``), and injecting the adapters leaves every other parameter as ``set_trainable`` left it
(peft itself would freeze everything but the adapters), so ``trainable: {connector: …}`` with LoRA on
the language model trains both, and LoRA on the frozen tower trains only the tower's adapters.

An adapter output (``save: adapter``) holds the model's ``config.json`` and processor files,
``adapter_config.json`` + ``adapter_model.safetensors`` (peft's format, keys relative to
``HiResVLM``), ``non_lora_trainables.safetensors`` (every other parameter the stage trained) and
``hires_lora.json``, which names the base model directory the adapters go onto.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
import os
import re

from torch import nn

from .arguments import ConfigError

COMPONENTS = ("vision_tower", "connector", "language_model")
ADAPTER_INFO = "hires_lora.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("a stage with 'lora' needs peft: pip install 'hires-vlm[lora]'") from None
    return peft


def _linear_layers(model: nn.Module) -> list[str]:
    inside_mha = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inside_mha]


def _output_layer(model: nn.Module) -> str | None:
    out = model.language_model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is out), None) if out is not None else None


def _matches(pattern: str, names: list[str]) -> list[str]:
    if pattern.split(".", 1)[0] in COMPONENTS:
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    inner = [n for n in names if n.startswith("language_model.")]
    return [n for n in inner if fnmatch.fnmatchcase(n.removeprefix("language_model."), pattern)
            or fnmatch.fnmatchcase(n, "*." + pattern)]


def _near(pattern: str, names: list[str]) -> list[str]:
    if pattern.split(".", 1)[0] in COMPONENTS:
        pool = {re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names}  # one entry per repeated layer
    else:
        pool = {n.rsplit(".", 1)[-1] for n in names if n.startswith("language_model.")} | set(COMPONENTS)
    return difflib.get_close_matches(pattern, sorted(pool), n=4, cutoff=0.5)


def resolve_targets(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Full module names (from the ``HiResVLM`` root) of the linear layers ``target_modules`` selects."""
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    names = [n for n, _ in model.named_modules() if n]
    linear = _linear_layers(model)
    output = _output_layer(model)
    chosen: list[str] = []
    for pattern in patterns:
        if pattern == "all-linear":
            hits = [n for n in linear if n.startswith("language_model.") and n != output]
        else:
            matched = _matches(pattern, names)
            if not matched:
                near = _near(pattern, names)
                raise ConfigError(f"lora.target_modules {pattern!r} matches no module of the model"
                                  + (f"; close names: {near}" if near else "")
                                  + ". Plain names (q_proj) are looked for in the language model; start with "
                                  "'connector.' or 'vision_tower.' to reach those (e.g. 'vision_tower.*.q_proj')")
            # The output layer only when named itself (it is often tied to the input embeddings).
            hits = [n for n in linear if n in matched or (n != output and any(n.startswith(m + ".") for m in matched))]
            if not hits:
                kinds = sorted({type(model.get_submodule(m)).__name__ for m in matched})
                raise ConfigError(f"lora.target_modules {pattern!r} selects {len(matched)} module(s) ({kinds}) but no "
                                  "linear layer; LoRA adapts linear layers")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def apply_lora(model: nn.Module, spec: dict) -> dict[str, float]:
    """Put LoRA adapters on the layers ``spec['target_modules']`` selects, in place; returns {parameter
    name: lr} of the adapters. Call after ``set_trainable``: the trainable state of every other
    parameter is kept. :func:`merge_lora` folds the adapters into the weights before a merged save."""
    peft = _peft()
    targets = resolve_targets(model, spec["target_modules"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    clash = [t for t in targets if f"{t}.weight" in trained]
    if clash:
        raise ConfigError(f"a stage with 'lora' must not also train the layers that get adapters: {clash[:3]}"
                          f"{' …' if len(clash) > 3 else ''} are in 'trainable' (e.g. 'language_model'). LoRA trains "
                          "adapters on frozen weights: drop them from 'trainable' or from lora.target_modules")
    config = peft.LoraConfig(r=int(spec["r"]), lora_alpha=float(spec.get("alpha", spec["r"])),
                             lora_dropout=float(spec.get("dropout", 0.0)), bias="none", target_modules=targets)
    peft.inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():  # peft froze everything but the adapters
        p.requires_grad_(n in trained or ".lora_" in n)
    lr = float(spec["lr"])
    return {n: lr for n, p in model.named_parameters() if ".lora_" in n}


def _lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def merge_lora(model: nn.Module) -> None:
    """Fold the LoRA adapters into their layers' weights and put the plain layers back (no-op without)."""
    for name, layer in _lora_layers(model):
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


def is_adapter_output(path: str | os.PathLike) -> bool:
    """Whether a stage output holds adapters to put onto a base model (``save: adapter``)."""
    return os.path.isfile(os.path.join(path, ADAPTER_INFO))


def save_adapter(model: nn.Module, out_dir: str, base_dir: str, final_dir: str, state_dict: dict | None = None) -> None:
    """Write the adapter form of a stage output into ``out_dir`` (renamed to ``final_dir`` afterwards).

    ``state_dict``: the model's full state (gathered from every rank under DeepSpeed/FSDP).
    ``base_dir`` is recorded relative to ``final_dir`` when both lie in one run folder, else absolute.
    """
    peft = _peft()
    from safetensors.torch import save_file

    state = model.state_dict() if state_dict is None else state_dict
    adapter = peft.get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    others = [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    os.makedirs(out_dir, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out_dir)
    model.language_model.generation_config.save_pretrained(out_dir)
    lcfg = copy.deepcopy(model.peft_config["default"])
    lcfg.base_model_name_or_path = os.path.abspath(base_dir)
    lcfg.save_pretrained(out_dir)

    def tensors(d):
        return {k: v.detach().to("cpu").contiguous() for k, v in d.items()}

    save_file(tensors(adapter), os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    save_file(tensors({n: state[n] for n in others}), os.path.join(out_dir, NON_LORA_WEIGHTS), metadata={"format": "pt"})
    base = os.path.abspath(base_dir)
    run = os.path.dirname(os.path.dirname(os.path.abspath(final_dir)))
    rel = os.path.relpath(base, os.path.abspath(final_dir))
    inside = os.path.commonpath([base, run]) == run
    with open(os.path.join(out_dir, ADAPTER_INFO), "w", encoding="utf-8") as f:
        json.dump({"base": rel if inside else base, "adapter": ADAPTER_WEIGHTS, "non_lora_trainables": NON_LORA_WEIGHTS,
                   "adapted_layers": len(model.peft_config["default"].target_modules),
                   "non_lora_parameters": len(others)}, f, indent=2)


def base_of(path: str | os.PathLike) -> str:
    """The base model directory an adapter output goes onto."""
    with open(os.path.join(path, ADAPTER_INFO), encoding="utf-8") as f:
        base = json.load(f)["base"]
    return base if os.path.isabs(base) else os.path.normpath(os.path.join(os.fspath(path), base))


def load_lora_output(path: str | os.PathLike, merge: bool = True, **from_pretrained_kwargs):
    """The model of an adapter output: its base (itself possibly an adapter output) with the stage's config,
    the adapters and the other trained parameters put back; ``merge`` folds the adapters in."""
    peft = _peft()
    from safetensors.torch import load_file

    from ..model import HiResVLM, HiResVLMConfig

    path = os.fspath(path)
    base = base_of(path)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{path!r} holds LoRA adapters for the base model {base!r}, which is not there")
    config = HiResVLMConfig.from_pretrained(path)
    if is_adapter_output(base):  # a chain of adapter stages: each base is the one before, merged
        inner = load_lora_output(base, merge=True, **from_pretrained_kwargs)
        model = HiResVLM(config).to(inner.dtype)
        model.load_state_dict(inner.state_dict())
    else:
        model = HiResVLM.from_pretrained(base, config=config, **from_pretrained_kwargs)
    lcfg = peft.LoraConfig.from_pretrained(path)
    peft.inject_adapter_in_model(lcfg, model)
    adapter = load_file(os.path.join(path, ADAPTER_WEIGHTS))
    expected = set(peft.get_peft_model_state_dict(model, save_embedding_layers=False))
    if set(adapter) != expected:
        raise ValueError(f"{path!r}: the adapter weights do not fit the base model {base!r} "
                         f"(missing {sorted(expected - set(adapter))[:3]}, unexpected {sorted(set(adapter) - expected)[:3]})")
    peft.set_peft_model_state_dict(model, adapter)
    others = load_file(os.path.join(path, NON_LORA_WEIGHTS))
    unexpected = model.load_state_dict(others, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{path!r}: trained parameters the model does not have: {unexpected[:5]}")
    if merge:
        merge_lora(model)
    model.requires_grad_(True)
    model.vision_tower.requires_grad_(False)  # as HiResVLM.from_pretrained leaves it
    return model.eval()


def load_stage_output(path: str | os.PathLike, **from_pretrained_kwargs):
    """A stage's ``final/`` as one model, whichever way it was saved (adapters merged in)."""
    from ..model import HiResVLM

    if is_adapter_output(path):
        return load_lora_output(path, merge=True, **from_pretrained_kwargs)
    return HiResVLM.from_pretrained(path, **from_pretrained_kwargs)


__all__ = ["apply_lora", "base_of", "is_adapter_output", "load_lora_output", "load_stage_output", "merge_lora",
           "resolve_targets", "save_adapter"]

