"""Training configs: one YAML file, named stages, ``--set key=value`` overrides.

A run is::

    run:      {output_dir, seed}
    model:    {source: tiny | pretrained, path, method, template, tiny: {sizes}, foundation, image_resampler}
    data:     {train: FILE | synthetic, image_folder, synthetic: {...}, max_length,
               eval: FILE, eval_image_folder, eval_limit, eval_accuracy}
    training: {defaults for every stage: any transformers.TrainingArguments field (see arguments.py),
               packing, group_by_modality_length}
    stages:   [{name, template, trainable: {module prefix: lr}, method_runtime: {...}, training: {...},
                data: {...}, lora: {r, alpha, dropout, target_modules, lr, save}}]

``trainable`` maps parameter-name prefixes of ``HiResVLM`` (``connector``, ``connector.projector``,
``language_model``, ``vision_tower``, …) to their learning rate; everything else is frozen.
``method_runtime`` changes the method's run-time fields for the stage (SliME's branches, γ, …).
``data.eval`` (per run, or per stage in the stage's ``data``) is a LLaVA JSON file evaluated during
training (eval loss every ``eval_steps``; ``eval_accuracy: N`` also answers its first N questions).
``lora`` (optional) trains LoRA adapters (peft) at learning rate ``lr`` on ``target_modules``: plain
names (``q_proj``) inside the language model, names starting with a component (``connector.*``,
``vision_tower.*.q_proj``) anywhere in the model (see lora.py); ``save: merged`` (default) folds
them into the weights when the stage saves, ``save: adapter`` saves the adapter alone.
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

from .arguments import ConfigError, _number, check_sampling, check_training

__all__ = ["ConfigError", "DataSpec", "ModelSpec", "StageSpec", "TrainConfig", "apply_override", "from_dict",
           "load_config", "validate"]
LORA_KEYS = {"r", "alpha", "dropout", "target_modules", "lr", "save"}
LORA_SAVE = ("merged", "adapter")


def _check_keys(where: str, d: dict, allowed: set[str]) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed, key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(allowed)}")


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
    eval: str | None = None  # LLaVA JSON evaluated during training (None: no evaluation)
    eval_image_folder: str | None = None  # None: image_folder, else the eval file's folder
    eval_limit: int | None = None  # evaluate on the first N records only (None: all)
    eval_accuracy: int = 0  # at each evaluation, answer the first N records by generation (0: off)


@dataclass
class StageSpec:
    name: str
    trainable: dict[str, float]
    template: str | None = None
    method_runtime: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # per-stage overrides of DataSpec fields
    lora: dict = field(default_factory=dict)  # {r, alpha, dropout, target_modules, lr, save}


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
    _check_data("data", data)
    training = check_training("training", raw.get("training") or {})
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
        stage_training = check_training(f"stages[{i}].training", s.get("training") or {}, stage=s["name"])
        _check_keys(f"stages[{i}].data", s.get("data") or {}, {f.name for f in dataclasses.fields(DataSpec)})
        _check_data(f"stages[{i}].data", s.get("data") or {})
        lora = dict(s.get("lora") or {})
        if lora:
            _check_lora(s["name"], lora)
        stages.append(StageSpec(name=s["name"], trainable={k: float(v) for k, v in trainable.items()},
                                template=s.get("template"), method_runtime=dict(s.get("method_runtime") or {}),
                                training=stage_training, data=dict(s.get("data") or {}), lora=lora))
    cfg = TrainConfig(output_dir=str(run["output_dir"]), seed=seed, model=mspec, data=dspec,
                      training=dict(training), stages=stages, source_file=source_file)
    for i, stage in enumerate(cfg.stages):
        check_sampling(f"stage {stage.name!r} (run training + stages[{i}].training)", cfg.stage_training(stage))
        strategy = cfg.stage_training(stage).get("eval_strategy", "no")
        if strategy != "no" and not cfg.stage_data(stage).eval:
            raise ConfigError(f"stage {stage.name!r}: eval_strategy={strategy!r} needs an eval dataset; set data.eval "
                              f"(or stages[{i}].data.eval) to a LLaVA JSON file, or drop eval_strategy")
    return cfg


def _check_data(where: str, data: dict) -> None:
    """Types of the eval fields of a ``data`` mapping (the train fields are checked where they are read)."""
    for key in ("eval", "eval_image_folder"):
        v = data.get(key)
        if v is not None and not (isinstance(v, (str, os.PathLike)) and str(v)):
            raise ConfigError(f"{where}.{key} must be a file path (or null), got {v!r}")
    limit = data.get("eval_limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}.eval_limit must be a positive integer (or null: every record), got {limit!r}")
    acc = data.get("eval_accuracy", 0)
    if not isinstance(acc, int) or isinstance(acc, bool) or acc < 0:
        raise ConfigError(f"{where}.eval_accuracy must be a number of records (0: off), got {acc!r}")


def _check_lora(stage: str, lora: dict) -> None:
    _check_keys(f"stage {stage!r} lora", lora, LORA_KEYS)
    for key in ("r", "alpha", "dropout", "lr"):  # 1e-4 written without a dot is a string to YAML 1.1
        if key in lora:
            lora[key] = _number(lora[key])
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
    if not (isinstance(tm, str) or (isinstance(tm, list) and tm and all(isinstance(t, str) and t for t in tm))):
        raise ConfigError(f"stage {stage!r}: lora.target_modules must be a list of module names (q_proj, "
                          "connector.*, vision_tower.*.q_proj, …) or 'all-linear'")
    if lora.get("save", "merged") not in LORA_SAVE:
        raise ConfigError(f"stage {stage!r}: lora.save={lora['save']!r} is not valid; choose 'merged' (fold the "
                          "adapters into the weights; the default) or 'adapter' (save the adapter alone)")


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
