"""A stage's ``training:`` block: any ``transformers.TrainingArguments`` field, checked when the config
is read, and the ``TrainingArguments`` the runner builds from it.

A training block takes three kinds of key:

* every field of the installed ``TrainingArguments`` (``dataclasses.fields``), its value checked
  against the field's annotation (an ``int`` field given ``"abc"`` is an error naming the block and
  the key) and, for fields with a closed set of strings (an enum such as ``lr_scheduler_type`` or
  ``eval_strategy``, or ``choices``), against that set;
* the project's own keys (:data:`PROJECT_KEYS`), which are not, or no longer, fields:
  ``warmup_ratio`` (transformers 5 takes a ratio < 1 in ``warmup_steps``), ``logging_dir`` (the
  TensorBoard folder, relative to the stage folder; transformers 5 reads it from the environment),
  activation checkpointing under either release's name (``compat``), ``packing`` (padding-free
  batches: the samples in one row after image expansion, ``model/packing.py``) and
  ``group_by_modality_length`` (LLaVA's batches of one modality and similar lengths,
  ``data/sampling.py``; it replaces ``train_sampling_strategy``, so the two are not combined) with
  ``length_grouping_batches`` (how many batches are drawn together and sorted by length; null:
  one optimizer step's, ranks × ``gradient_accumulation_steps``, LLaVA's choice), and
  ``feature_cache: {dir, max_gb}`` (the frozen tower's features kept on disk, ``vision/feature_cache.py``;
  ``dir`` relative to ``run.output_dir`` unless absolute, ``max_gb`` its bound, default 10);
* keys the runner owns (:data:`RUNNER_KEYS`), refused with the reason.

The runner's defaults (:data:`RUNNER_DEFAULTS`) apply where a config is silent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import functools
import os
import types
import typing
from typing import Any

import torch

from .. import compat
from .trainer import is_main_process


class ConfigError(ValueError):
    pass


#: Keys the runner sets itself, and why a config may not.
RUNNER_KEYS = {
    "output_dir": "each stage writes to <run.output_dir>/<stage name>; set run.output_dir (or --output-dir)",
    "learning_rate": "learning rates come from the stage's 'trainable' mapping (one per module prefix) and lora.lr",
    "remove_unused_columns": "the collator's batches carry pixel_values and image_sizes, which the runner "
                             "always keeps (false)",
    "label_names": "the model's loss reads 'labels'; the runner sets it",
    "resume_from_checkpoint": "an interrupted stage resumes by itself from the newest complete checkpoint-N in "
                              "its folder (delete them to start the stage over)",
    "local_rank": "the launcher (torchrun) sets it",
}

_CHECKPOINTING = ("gradient_checkpointing", "activation_checkpointing")
#: Keys that are not ``TrainingArguments`` fields on every supported release: {key: kinds}.
PROJECT_KEYS = {
    "warmup_ratio": frozenset({"float"}),
    "logging_dir": frozenset({"str", "none"}),
    **dict.fromkeys(_CHECKPOINTING, frozenset({"bool", "none"})),
    **dict.fromkeys([f"{n}_kwargs" for n in _CHECKPOINTING], frozenset({"dict", "none"})),
    "packing": frozenset({"bool", "none"}),
    "group_by_modality_length": frozenset({"bool", "none"}),
    "length_grouping_batches": frozenset({"int", "none"}),
    "feature_cache": frozenset({"dict", "none"}),
}
#: Project keys the runner reads itself (collator, sampler, tower cache), never handed to ``TrainingArguments``.
OWN_KEYS = ("packing", "group_by_modality_length", "length_grouping_batches", "feature_cache")
FEATURE_CACHE_KEYS = {"dir", "max_gb"}

#: transformers 4 names that transformers 5 dropped, with what to write instead.
RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "group_by_length": "train_sampling_strategy: group_by_length",
    "no_cuda": "use_cpu",
    "overwrite_output_dir": "nothing: a finished stage is skipped and an interrupted one resumes",
}

#: What the runner uses where a config says nothing.
RUNNER_DEFAULTS = {
    "per_device_train_batch_size": 4, "num_train_epochs": 1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.03,
    "weight_decay": 0.0, "logging_steps": 10, "save_steps": 500, "save_total_limit": 2, "report_to": "none",
    "dataloader_num_workers": 0, "save_strategy": "steps", "logging_strategy": "steps",
}


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    """What a key accepts: kinds among int, float, bool, str, dict, list, none, any; a closed set of strings."""

    kinds: frozenset
    choices: tuple | None = None


def _spec_of(tp: Any) -> tuple[set, tuple | None]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds, choices = set(), None
        for arg in typing.get_args(tp):
            k, c = _spec_of(arg)
            kinds |= k
            choices = choices or c
        return kinds, choices
    if origin is typing.Literal:
        return {{bool: "bool", int: "int", str: "str"}.get(type(a), "any") for a in typing.get_args(tp)}, None
    simple = {type(None): "none", bool: "bool", int: "int", float: "float", str: "str", dict: "dict", list: "list"}
    if tp in simple:
        return {simple[tp]}, None
    if origin in (dict, list):
        return {simple[origin]}, None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"str"}, tuple(str(e.value) for e in tp)
    return {"any"}, None  # a type no YAML value can be (ParallelismConfig, …): left to transformers


@functools.lru_cache(maxsize=1)
def argument_specs() -> dict[str, ArgSpec]:
    """{key: ArgSpec} of every key a training block accepts (the installed release's fields + ours)."""
    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except (NameError, TypeError):  # an annotation that does not resolve: take the raw ones
        hints = {}
    specs = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.init and not f.name.startswith("_") and f.name not in RUNNER_KEYS:
            kinds, choices = _spec_of(hints.get(f.name, f.type))
            choices = tuple(f.metadata["choices"]) if f.metadata.get("choices") else choices
            specs[f.name] = ArgSpec(frozenset(kinds), choices)
    for key, kinds in PROJECT_KEYS.items():
        specs[key] = ArgSpec(frozenset(kinds))
    return specs


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "a mapping", "list": "a list"}


def _describe(kinds: frozenset) -> str:
    if "int" in kinds and "float" in kinds:
        kinds = kinds - {"int"}
    words = [w for k, w in _KIND_WORDS.items() if k in kinds]
    text = " or ".join(words) or "null"
    return f"{text} or null" if words and "none" in kinds else text


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``2e-5`` (no dot) as a string; take it as the number it obviously is."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def _close(word: str, options) -> str:
    near = difflib.get_close_matches(word, sorted(options), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""


def check_value(where: str, key: str, value: Any, spec: ArgSpec) -> Any:
    """``value`` as the key takes it (numbers written as strings read as numbers), or a ConfigError."""
    kinds = spec.kinds
    if "any" in kinds:
        return value
    if kinds & {"int", "float"}:
        value = _number(value)
    if value is False and spec.choices and "no" in spec.choices:
        value = "no"  # YAML 1.1 reads the bare word `no` (eval_strategy: no) as false
    if isinstance(value, float) and value.is_integer() and "int" in kinds and "float" not in kinds:
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kinds == {"str"} | (kinds & {"none"}):
        value = str(value)  # run_name: 2024
    ok = {bool: "bool" in kinds, int: bool(kinds & {"int", "float"}), float: "float" in kinds, str: "str" in kinds,
          type(None): "none" in kinds, dict: "dict" in kinds, list: "list" in kinds}.get(type(value), False)
    if not ok:
        raise ConfigError(f"{where}.{key} must be {_describe(kinds)}, got {value!r}")
    if isinstance(value, str) and spec.choices and value not in spec.choices:
        raise ConfigError(f"{where}.{key}={value!r} is not valid{_close(value, spec.choices)}; "
                          f"choose one of {list(spec.choices)}")
    return value


def check_training(where: str, d: Any, stage: str | None = None) -> dict:
    """Keys and values of a ``training`` mapping (``where``: its place in the config, e.g. ``stages[0].training``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    at = f"stage {stage!r}: " if stage else ""
    refused = [k for k in d if k in RUNNER_KEYS]
    if refused:
        raise ConfigError(f"{at}{where} may not set {', '.join(f'{k!r} ({RUNNER_KEYS[k]})' for k in refused)}")
    specs = argument_specs()
    unknown = [k for k in d if k not in specs]
    if unknown:
        def hint(k):
            if k in RENAMED:
                return f" (transformers 5: write {RENAMED[k]})"
            near = difflib.get_close_matches(str(k), sorted(set(specs) | set(RUNNER_KEYS)), n=3, cutoff=0.6)
            owned = [n for n in near if n in RUNNER_KEYS]
            return _close(str(k), near) + (f"; {owned[0]!r} is the runner's: {RUNNER_KEYS[owned[0]]}" if owned else "")

        raise ConfigError(f"{at}unknown key(s) in {where}: {', '.join(repr(k) + hint(k) for k in unknown)}; a "
                          "training block takes any transformers.TrainingArguments field, and "
                          f"{sorted(PROJECT_KEYS)}")
    out = {}
    for key, value in d.items():
        try:
            out[key] = check_value(where, key, value, specs[key])
        except ConfigError as err:
            raise ConfigError(f"{at}{err}") from None
    given = [k for k in _CHECKPOINTING if k in out]
    if len(given) > 1:
        raise ConfigError(f"{at}{where} sets both {given}: they are one switch (transformers 5.23 renamed it); keep one")
    for new in ("activation_checkpointing", "activation_checkpointing_kwargs"):  # one name, so stages override
        if new in out:
            out[new.replace("activation", "gradient")] = out.pop(new)
    ratio = out.get("warmup_ratio")
    if ratio is not None and not 0 <= ratio < 1:
        raise ConfigError(f"{at}{where}.warmup_ratio must be in [0, 1), got {ratio!r}")
    check_sampling(f"{at}{where}", out, merged=False)
    if out.get("feature_cache") is not None:
        out["feature_cache"] = check_feature_cache(f"{at}{where}.feature_cache", out["feature_cache"])
    return out


def check_feature_cache(where: str, value: dict) -> dict:
    """``{dir: folder, max_gb: bound}`` with ``max_gb`` defaulted to 10."""
    unknown = sorted(set(value) - FEATURE_CACHE_KEYS, key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(FEATURE_CACHE_KEYS)}")
    folder = value.get("dir")
    if not isinstance(folder, (str, os.PathLike)) or not str(folder):
        raise ConfigError(f"{where}.dir must be a folder (relative to run.output_dir, or absolute), got {folder!r}")
    size = _number(value.get("max_gb", 10))
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise ConfigError(f"{where}.max_gb must be a positive number of gigabytes, got {value.get('max_gb')!r}")
    return {"dir": str(folder), "max_gb": size}


def check_sampling(where: str, training: dict, merged: bool = True) -> None:
    """``group_by_modality_length`` is a sampling strategy of its own: refuse it next to another one, and
    ``length_grouping_batches`` without it. ``merged``: ``training`` is a stage's whole view (the run's
    block and the stage's); a single block may leave the switch to the other."""
    strategy = training.get("train_sampling_strategy")
    if training.get("group_by_modality_length") and strategy not in (None, "random"):
        raise ConfigError(f"{where}: group_by_modality_length draws its own batches (one modality, similar "
                          f"lengths) and cannot be combined with train_sampling_strategy={strategy!r}; keep one")
    group = training.get("length_grouping_batches")
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ConfigError(f"{where}.length_grouping_batches must be a positive number of batches (or null), "
                              f"got {group!r}")
        if merged and not training.get("group_by_modality_length"):
            raise ConfigError(f"{where}: length_grouping_batches={group} sizes the groups of "
                              "group_by_modality_length, which is off; set group_by_modality_length: true or drop it")


def resolve_config_path(path: str, config_file: str | None) -> str:
    """A path as given, else relative to the config file, else inside the packaged ``configs/``."""
    candidates = [path]
    if config_file:
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(config_file)), path))
    pkg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    candidates.append(os.path.join(pkg, path.removeprefix("configs/")))
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise ConfigError(f"file {path!r} not found (looked in {candidates})")


def logging_dir(stage_training: dict, stage_dir: str) -> str | None:
    """The stage's TensorBoard folder: ``logging_dir`` relative to the stage folder (None: transformers'
    default, ``<stage folder>/runs/<time>``)."""
    path = stage_training.get("logging_dir")
    return None if path is None else os.path.join(stage_dir, os.path.expanduser(path))


@contextlib.contextmanager
def tensorboard_dir(path: str | None):
    """transformers 5 dropped ``TrainingArguments.logging_dir``: its ``TensorBoardCallback`` reads the
    folder from ``TENSORBOARD_LOGGING_DIR`` when it is made (with the ``Trainer``). Set for the stage only."""
    if path is None:
        yield
        return
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def training_arguments(cfg, stage, stage_dir: str, lrs: dict[str, float], has_eval: bool = False):
    """The stage's ``TrainingArguments``: the runner's defaults, the run's ``training``, the stage's."""
    from transformers import TrainingArguments

    t = dict(RUNNER_DEFAULTS, **({"eval_strategy": "steps"} if has_eval else {}))
    t.update(cfg.stage_training(stage))
    if has_eval:
        t.setdefault("per_device_eval_batch_size", t["per_device_train_batch_size"])
    t.setdefault("seed", cfg.seed)
    t.pop("logging_dir", None)  # see tensorboard_dir
    for key in OWN_KEYS:  # the runner's: collator, sampler, tower cache
        t.pop(key, None)
    gc = bool(t.pop("gradient_checkpointing", False))
    gc_kwargs = {"use_reentrant": False, **(t.pop("gradient_checkpointing_kwargs", None) or {})}
    if isinstance(t.get("deepspeed"), str):
        t["deepspeed"] = resolve_config_path(t["deepspeed"], cfg.source_file)
    ratio = t.pop("warmup_ratio", None)
    if "warmup_steps" not in t and ratio:
        t["warmup_steps"] = float(ratio)  # transformers ≥5 takes a ratio < 1 in warmup_steps
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    t.setdefault("dataloader_pin_memory", cuda)
    t.setdefault("ddp_backend", None if cuda else ("gloo" if world > 1 else None))
    t.setdefault("ddp_find_unused_parameters", True if world > 1 else None)
    t["disable_tqdm"] = bool(t.get("disable_tqdm")) or not is_main_process()
    try:
        return TrainingArguments(output_dir=stage_dir, learning_rate=max(lrs.values()), remove_unused_columns=False,
                                 label_names=["labels"], **compat.checkpointing_arguments(gc, **gc_kwargs), **t)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"stage {stage.name!r}: transformers refuses the training arguments: {err}") from err
