"""Training configs: one YAML file, named stages, ``--set key=value`` overrides.

A run is::

    run:      {output_dir, seed}
    model:    {source: tiny | pretrained, path, method, template, tiny: {sizes}, foundation, image_resampler}
    data:     {train: FILE | synthetic, image_folder, synthetic: {...}, max_length}
    training: {defaults for every stage: HF TrainingArguments names}
    stages:   [{name, template, trainable: {module prefix: lr}, method_runtime: {...}, training: {...},
                lora: {r, alpha, dropout, target_modules, lr}}]

``trainable`` maps parameter-name prefixes of ``HiResVLM`` (``connector``, ``connector.projector``,
``language_model``, ``vision_tower``, …) to their learning rate; everything else is frozen.
``method_runtime`` changes the method's run-time fields for the stage (SliME's branches, γ, …).
``lora`` (optional) trains LoRA adapters (peft) on the language model's ``target_modules`` at
learning rate ``lr``; they are merged into the weights when the stage saves.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

TRAINING_KEYS = {
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "logging_steps", "save_steps",
    "save_total_limit", "gradient_checkpointing", "bf16", "fp16", "tf32", "dataloader_num_workers", "deepspeed",
    "fsdp", "fsdp_config", "max_grad_norm", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "report_to",
    "ddp_find_unused_parameters", "torch_compile", "group_by_length", "seed", "data_seed", "use_cpu", "disable_tqdm",
}


LORA_KEYS = {"r", "alpha", "dropout", "target_modules", "lr"}

_INT, _NUM, _BOOL = "an integer", "a number", "true or false"
#: The type each training key must have (checked when the config is read, before any model is built).
TRAINING_TYPES = {
    **dict.fromkeys(["per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "logging_steps",
                     "save_steps", "save_total_limit", "dataloader_num_workers", "seed", "data_seed"], _INT),
    **dict.fromkeys(["num_train_epochs", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm",
                     "adam_beta1", "adam_beta2", "adam_epsilon"], _NUM),
    **dict.fromkeys(["gradient_checkpointing", "bf16", "fp16", "tf32", "torch_compile", "group_by_length",
                     "use_cpu", "disable_tqdm", "ddp_find_unused_parameters"], _BOOL),
}


class ConfigError(ValueError):
    pass


def _check_keys(where: str, d: dict, allowed: set[str]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(allowed)}")


def _check_training(where: str, d: dict) -> dict:
    """Keys and value types of a ``training`` mapping; numbers written as strings are read as numbers."""
    _check_keys(where, d, TRAINING_KEYS)
    out = {}
    for key, value in d.items():
        kind = TRAINING_TYPES.get(key)
        value = _number(value) if kind in (_INT, _NUM) else value
        ok = {_INT: isinstance(value, int) and not isinstance(value, bool),
              _NUM: isinstance(value, (int, float)) and not isinstance(value, bool),
              _BOOL: isinstance(value, bool) or value is None, None: True}[kind]
        if not ok:
            raise ConfigError(f"{where}.{key} must be {kind}, got {value!r}")
        out[key] = value
    return out


@dataclass
class ModelSpec:
    source: str = "tiny"  # tiny | pretrained
    path: str | None = None
    method: Any = "llava_hd"  # preset name or dict; "keep" (pretrained only): the saved model's method
    template: str | None = None  # None: the model's own (tiny: chatml)
    tiny: dict = field(default_factory=dict)
    foundation: str | None = None  # tiny only: "shipped" or a foundation directory (None: random weights)
    max_length: int | None = None
    image_resampler: str | None = None  # None: the model's own (tiny: pillow); pillow | torch


@dataclass
class DataSpec:
    train: str = "synthetic"
    image_folder: str | None = None
    synthetic: dict = field(default_factory=dict)
    max_length: int | None = None


@dataclass
class StageSpec:
    name: str
    trainable: dict[str, float]
    template: str | None = None
    method_runtime: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # per-stage overrides of DataSpec fields
    lora: dict = field(default_factory=dict)  # LoRA on the language model: {r, alpha, dropout, target_modules, lr}


@dataclass
class TrainConfig:
    output_dir: str
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: dict = field(default_factory=dict)
    stages: list[StageSpec] = field(default_factory=list)
    source_file: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {
            "run": {"output_dir": d["output_dir"], "seed": d["seed"]},
            "model": d["model"], "data": d["data"], "training": d["training"], "stages": d["stages"],
        }

    def stage_training(self, stage: StageSpec) -> dict:
        merged = dict(self.training)
        merged.update(stage.training)
        return merged

    def stage_data(self, stage: StageSpec) -> DataSpec:
        return dataclasses.replace(self.data, **stage.data) if stage.data else self.data


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalar/list/mapping syntax (``1e-3``, ``true``, ``[1, 2]``, ``null``)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _number(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``2e-5`` (no dot) as a string; take it as the number it obviously is."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.0.c=value`` to a nested dict/list structure in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set needs key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ConfigError(f"--set {key}: {part!r} is not a valid index into a list of {len(node)}") from None
        elif isinstance(node, dict):
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i]) or 'the config'} is {node!r}, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = parse_value(value)
        except (ValueError, IndexError):
            raise ConfigError(f"--set {key}: {last!r} is not a valid index") from None
    elif isinstance(node, dict):
        node[last] = parse_value(value)
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def from_dict(raw: dict, source_file: str | None = None) -> TrainConfig:
    _check_keys("the config", raw, {"run", "model", "data", "training", "stages"})
    run = raw.get("run") or {}
    _check_keys("run", run, {"output_dir", "seed"})
    if not run.get("output_dir") or not isinstance(run["output_dir"], (str, os.PathLike)):
        raise ConfigError("run.output_dir is required: a folder (where checkpoints and the resolved config go)")
    seed = _number(run.get("seed", 0))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"run.seed must be an integer, got {run.get('seed')!r}")
    model = raw.get("model") or {}
    _check_keys("model", model, {f.name for f in dataclasses.fields(ModelSpec)})
    mspec = ModelSpec(**model)
    if mspec.source not in ("tiny", "pretrained"):
        raise ConfigError(f"model.source={mspec.source!r} is not valid; choose 'tiny' or 'pretrained'")
    if mspec.source == "pretrained" and not mspec.path:
        raise ConfigError("model.source 'pretrained' needs model.path (a directory saved by hires-vlm)")
    if mspec.foundation is not None and mspec.source == "pretrained":
        # e.g. `--set model.source=pretrained` on a tiny config: the saved model has its own weights
        logging.getLogger(__name__).warning("model.foundation=%r is ignored: model.source is 'pretrained' (%s has "
                                            "its own weights)", mspec.foundation, mspec.path)
        mspec.foundation = None
    if mspec.foundation is not None:
        if not isinstance(mspec.foundation, (str, os.PathLike)) or not str(mspec.foundation):
            raise ConfigError(f"model.foundation must be 'shipped' or a foundation directory, got {mspec.foundation!r}")
        sized = sorted(set(mspec.tiny or {}) & {"tile_size", "patch_size", "vision_hidden", "vision_layers",
                                                 "text_hidden", "text_layers", "vocab_size"})
        if sized:
            raise ConfigError(f"model.tiny sets {sized}, but a foundation fixes the sizes; drop them or the foundation")
    if mspec.image_resampler not in (None, "pillow", "torch"):
        raise ConfigError(f"model.image_resampler={mspec.image_resampler!r} is not valid; choose 'pillow' (the "
                          "official code's pixels) or 'torch' (faster; transformers' fast processors' pixels)")
    data = raw.get("data") or {}
    _check_keys("data", data, {f.name for f in dataclasses.fields(DataSpec)})
    dspec = DataSpec(**data)
    training = _check_training("training", raw.get("training") or {})
    stages_raw = raw.get("stages")
    if not stages_raw:
        raise ConfigError("the config needs at least one entry in 'stages'")
    stages, names = [], set()
    stage_keys = {f.name for f in dataclasses.fields(StageSpec)}
    for i, s in enumerate(stages_raw):
        _check_keys(f"stages[{i}]", s, stage_keys)
        if not s.get("name"):
            raise ConfigError(f"stages[{i}] needs a name")
        if s["name"] in names:
            raise ConfigError(f"stage name {s['name']!r} is used twice")
        names.add(s["name"])
        trainable = s.get("trainable")
        if not isinstance(trainable, dict) or not trainable:
            raise ConfigError(f"stage {s['name']!r} needs 'trainable': {{module prefix: learning rate}}")
        trainable = {k: _number(v) for k, v in trainable.items()}
        for k, v in trainable.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"stage {s['name']!r}: learning rate of {k!r} must be a positive number, got {v!r}")
        stage_training = _check_training(f"stages[{i}].training", s.get("training") or {})
        _check_keys(f"stages[{i}].data", s.get("data") or {}, {f.name for f in dataclasses.fields(DataSpec)})
        lora = dict(s.get("lora") or {})
        if lora:
            _check_lora(s["name"], lora)
        stages.append(StageSpec(name=s["name"], trainable={k: float(v) for k, v in trainable.items()},
                                template=s.get("template"), method_runtime=dict(s.get("method_runtime") or {}),
                                training=stage_training, data=dict(s.get("data") or {}), lora=lora))
    return TrainConfig(output_dir=str(run["output_dir"]), seed=seed, model=mspec, data=dspec,
                       training=dict(training), stages=stages, source_file=source_file)


def _check_lora(stage: str, lora: dict) -> None:
    _check_keys(f"stage {stage!r} lora", lora, LORA_KEYS)
    for key in ("r", "lr", "target_modules"):
        if key not in lora:
            raise ConfigError(f"stage {stage!r}: lora needs {key!r} (keys: {sorted(LORA_KEYS)})")
    if not isinstance(lora["r"], int) or isinstance(lora["r"], bool) or lora["r"] < 1:
        raise ConfigError(f"stage {stage!r}: lora.r must be a positive integer, got {lora['r']!r}")
    for key in ("lr", "alpha"):
        v = lora.get(key, 1)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"stage {stage!r}: lora.{key} must be a positive number, got {v!r}")
    d = lora.get("dropout", 0.0)
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d < 1:
        raise ConfigError(f"stage {stage!r}: lora.dropout must be in [0, 1), got {d!r}")
    tm = lora["target_modules"]
    if not (isinstance(tm, str) or (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm))):
        raise ConfigError(f"stage {stage!r}: lora.target_modules must be a module name list (or 'all-linear')")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as err:  # malformed YAML, and tags such as !!python/object (safe_load refuses them)
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path!r} is not a valid config{at}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path!r} is not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path!r} must hold a YAML mapping")
    raw = copy.deepcopy(raw)
    for o in overrides or []:
        apply_override(raw, o)
    return from_dict(raw, source_file=path)


def validate(cfg: TrainConfig) -> None:
    """Deeper checks that need the library: the method and templates resolve."""
    from ..methods import resolve_method_config
    from ..text import get_template

    if cfg.model.method not in (None, "keep"):
        resolve_method_config(cfg.model.method)
    elif cfg.model.source == "tiny":
        raise ConfigError("model.method is required for a tiny model")
    if cfg.model.template:
        get_template(cfg.model.template)
    for s in cfg.stages:
        if s.template:
            get_template(s.template)


def config_differences(a, b, where: str = "") -> list[str]:
    """Where two resolved configs (nested dicts and lists) differ: ``"path: old then, new now"`` each."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += config_differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += config_differences(x, y, f"{where}.{i}")
        return out
    return [] if a == b else [f"{where}: {a!r} then, {b!r} now"]
