"""Run a training config stage by stage on the transformers ``Trainer``.

Each stage loads the previous stage's ``final/`` output (or builds/loads the model for the first),
sets which modules train and at what learning rate, logs the trainable/frozen state of every
component, trains, and writes ``<output_dir>/<stage>/final`` atomically. A stage whose ``final``
exists is skipped; an interrupted stage resumes from its newest *complete* checkpoint (optimizer,
scheduler, RNG and data position — the Trainer's exact resume). Multi-process runs go through
``torchrun`` (gloo on CPU, NCCL on GPU); DeepSpeed ZeRO / FSDP through the stage's ``training``
keys ``deepspeed`` / ``fsdp``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch
import yaml

from .. import compat
from .config import ConfigError, StageSpec, TrainConfig, config_differences, validate
from .freezing import apply_lora, log_components, merge_lora, set_trainable  # noqa: F401  (re-exported)
from .trainer import (  # noqa: F401  (re-exported)
    COMPLETE_MARKER,
    _make_trainer_class,
    atomic_write_text,
    barrier,
    data_skips,
    is_main_process,
    latest_complete_checkpoint,
)

logger = logging.getLogger("hires_vlm.train")

# ---------------------------------------------------------------------- data
def _synthetic_data(cfg: TrainConfig, spec) -> tuple[str, str]:
    from ..data import synthetic

    params = dict(spec.synthetic)
    out = params.pop("dir", None) or os.path.join(cfg.output_dir, "data")
    if is_main_process():
        synthetic.generate_benchmark(out, **params)
    barrier()
    return os.path.join(out, "train.json"), out


def resolve_data(cfg: TrainConfig, stage: StageSpec) -> tuple[str, str]:
    spec = cfg.stage_data(stage)
    if spec.train == "synthetic":
        return _synthetic_data(cfg, spec)
    folder = spec.image_folder or os.path.dirname(os.path.abspath(spec.train))
    return spec.train, folder


def corpus_from_records(path: str, limit: int = 20000) -> list[str]:
    from ..data.llava_json import read_records

    texts = []
    for rec in read_records(path)[:limit]:
        turns = rec.get("conversations") if isinstance(rec, dict) else None  # bad records: the dataset counts them
        for turn in turns if isinstance(turns, list) else []:
            if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                try:
                    texts.append(turn["value"].replace("<image>", " ").encode("utf-8").decode("utf-8"))
                except UnicodeEncodeError:
                    continue
    return texts


# ---------------------------------------------------------------------- model
def load_stage_model(cfg: TrainConfig, stage_index: int, train_file: str):
    from ..model import HiResVLM, HiResVLMProcessor
    from ..tiny import build_tiny

    if stage_index > 0:
        prev = os.path.join(cfg.output_dir, cfg.stages[stage_index - 1].name, "final")
        if not os.path.isdir(prev):
            raise FileNotFoundError(f"stage {cfg.stages[stage_index].name!r} needs the previous stage's output {prev!r}")
        return HiResVLM.from_pretrained(prev), HiResVLMProcessor.from_pretrained(prev)
    m = cfg.model
    if m.source == "pretrained":
        model = HiResVLM.from_pretrained(m.path)
        proc = HiResVLMProcessor.from_pretrained(m.path)
        if m.method not in (None, "keep"):
            from ..methods import resolve_method_config

            wanted = resolve_method_config(m.method)
            if wanted.to_dict() != model.config.method:
                runtime = {k: v for k, v in wanted.to_dict().items() if model.config.method.get(k) != v and k != "name"}
                model.set_method_runtime(**runtime)
        if m.image_resampler and m.image_resampler != model.config.image_resampler:
            model.config.image_resampler = m.image_resampler
            proc = HiResVLMProcessor(proc.tokenizer, model.config)
        return model, proc
    kwargs = dict(m.tiny)
    kwargs.setdefault("template", m.template or "chatml")
    if m.max_length is not None:
        kwargs.setdefault("max_length", m.max_length)
    if m.image_resampler:
        kwargs.setdefault("image_resampler", m.image_resampler)
    if m.foundation:
        found = str(m.foundation)
        if found != "shipped" and not os.path.isabs(found) and not os.path.isdir(found) and cfg.source_file:
            found = os.path.join(os.path.dirname(os.path.abspath(cfg.source_file)), found)  # beside the config
        return build_tiny(m.method, seed=cfg.seed, foundation=found, **kwargs)
    return build_tiny(m.method, seed=cfg.seed, corpus=corpus_from_records(train_file), **kwargs)


def base_template(cfg: TrainConfig) -> str:
    """The template of a stage that names none: the run's ``model.template``, else the starting model's
    own (a stage's saved template, e.g. ``plain`` after pretraining, must not leak into the next stage)."""
    if cfg.model.template:
        return cfg.model.template
    if cfg.model.source == "pretrained":
        from ..model import HiResVLMConfig

        return HiResVLMConfig.from_pretrained(cfg.model.path).template
    return "chatml"


# ---------------------------------------------------------------------- run
@dataclass
class StageResult:
    name: str
    final_dir: str
    skipped: bool = False
    train_loss: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    steps: int = 0
    seconds: float = 0.0
    data_skips: dict = field(default_factory=dict)


def save_loss_plot(history: list[dict], path: str, title: str) -> None:
    pts = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not pts:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


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


def training_arguments(cfg: TrainConfig, stage: StageSpec, stage_dir: str, lrs: dict[str, float]):
    from transformers import TrainingArguments

    t = {
        "per_device_train_batch_size": 4, "num_train_epochs": 1, "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.03, "weight_decay": 0.0, "logging_steps": 10, "save_steps": 500, "save_total_limit": 2,
        "report_to": "none", "dataloader_num_workers": 0,
    }
    t.update(cfg.stage_training(stage))
    gc = bool(t.pop("gradient_checkpointing", False))
    if isinstance(t.get("deepspeed"), str):
        t["deepspeed"] = resolve_config_path(t["deepspeed"], cfg.source_file)
    if "warmup_ratio" in t:
        ratio = t.pop("warmup_ratio")
        if "warmup_steps" not in t and ratio:
            t["warmup_steps"] = float(ratio)  # transformers ≥5 takes a ratio < 1 in warmup_steps
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=stage_dir,
        learning_rate=max(lrs.values()),
        seed=cfg.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        save_strategy="steps",
        logging_strategy="steps",
        **compat.checkpointing_arguments(gc, use_reentrant=False),
        dataloader_pin_memory=cuda,
        ddp_backend=None if cuda else ("gloo" if world > 1 else None),
        ddp_find_unused_parameters=t.pop("ddp_find_unused_parameters", True if world > 1 else None),
        disable_tqdm=bool(t.pop("disable_tqdm", False)) or not is_main_process(),
        **t,
    )
    return args


def run_stage(cfg: TrainConfig, index: int, callbacks: list | None = None) -> StageResult:
    from ..data.llava_json import LlavaCollator, LlavaDataset

    stage = cfg.stages[index]
    stage_dir = os.path.join(cfg.output_dir, stage.name)
    final_dir = os.path.join(stage_dir, "final")
    if os.path.isfile(os.path.join(final_dir, "config.json")):
        logger.info("stage %r already finished (%s); skipping", stage.name, final_dir)
        return StageResult(stage.name, final_dir, skipped=True)
    os.makedirs(stage_dir, exist_ok=True)
    train_file, image_folder = resolve_data(cfg, stage)
    model, processor = load_stage_model(cfg, index, train_file)
    spec = cfg.stage_data(stage)
    if spec.max_length is not None and model.config.max_length is not None and spec.max_length > model.config.max_length:
        raise ConfigError(f"stage {stage.name!r}: data.max_length={spec.max_length} is more than the model accepts "
                          f"(max_length={model.config.max_length}); lower it (or build the model with a larger one)")
    template = stage.template or base_template(cfg)
    model.config.template = template
    processor.config.template = template
    model.set_method_runtime(**stage.method_runtime)
    processor.config.method = model.config.method
    from ..model import HiResVLMProcessor

    processor = HiResVLMProcessor(processor.tokenizer, model.config)
    lrs = set_trainable(model, stage.trainable)
    if stage.lora:
        lrs.update(apply_lora(model, stage.lora))
    frozen = [m for m in ("vision_tower", "connector", "language_model")
              if not any(p.requires_grad for p in getattr(model, m).parameters())]
    # The saved config says how the model was made: each stage's trainable prefixes and frozen parts.
    model.config.training_stages = [s for s in (getattr(model.config, "training_stages", None) or [])
                                    if s.get("stage") != stage.name] + [
        {"stage": stage.name, "trainable": sorted(stage.trainable), "frozen": frozen}]
    table = log_components(model, stage.name)
    if is_main_process():
        atomic_write_text(os.path.join(stage_dir, "components.txt"), table + "\n")
        print(table, flush=True)
    dataset = LlavaDataset(train_file, image_folder, processor, template=model.config.template,
                           max_length=spec.max_length, progress=is_main_process())
    args = training_arguments(cfg, stage, stage_dir, lrs)
    trainer_cls = _make_trainer_class()
    trainer_cls.module_lrs = lrs
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset,
                          data_collator=LlavaCollator(processor.tokenizer.pad_token_id, dataset), callbacks=callbacks)
    ckpt = latest_complete_checkpoint(stage_dir)
    trainer.load_skips(ckpt)
    barrier()
    if ckpt:
        logger.info("resuming stage %r from %s", stage.name, ckpt)
        if is_main_process():
            print(f"resuming stage {stage.name!r} from {ckpt}", flush=True)
    start = time.time()
    result = trainer.train(resume_from_checkpoint=ckpt)
    seconds = time.time() - start
    history = trainer.state.log_history
    skips = data_skips(dataset, trainer.gathered_skips())
    tmp = f"{final_dir}.tmp"
    if is_main_process() and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    barrier()
    merge_lora(model)
    trainer.save_model(tmp)
    if is_main_process():
        processor.save_pretrained(tmp)
        atomic_write_text(os.path.join(tmp, "training_stage.json"), json.dumps(
            {"stage": stage.name, "trainable": stage.trainable, "method_runtime": stage.method_runtime,
             "lora": stage.lora, "template": model.config.template, "data_skips": skips}, indent=2))
        os.replace(tmp, final_dir)
        atomic_write_text(os.path.join(stage_dir, "log_history.json"), json.dumps(history, indent=2))
        save_loss_plot(history, os.path.join(stage_dir, "loss.png"), f"{stage.name}")
    barrier()
    losses = [h["loss"] for h in history if "loss" in h]
    if skips["records_skipped"] and is_main_process():
        print(f"stage {stage.name!r}: {skips['records_skipped']} of {skips['records']} records skipped "
              f"(screened {skips['screened']}, at load {skips['at_load']})", flush=True)
    return StageResult(stage.name, final_dir, train_loss=getattr(result, "training_loss", None),
                       first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                       steps=trainer.state.global_step, seconds=seconds, data_skips=skips)


def write_resolved_config(cfg: TrainConfig) -> str:
    """Write ``<run>/config.yaml``. On a run that has finished stages, the config must describe what
    they were trained with: a change to a finished stage (or to the model, data or seed) is refused
    rather than recorded over the truth."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, "config.yaml")
    new = cfg.to_dict()
    if os.path.isfile(path):
        with open(path) as f:
            old = yaml.safe_load(f) or {}
        changes = _finished_stage_changes(cfg, old, new)
        if changes:
            raise ConfigError(
                f"{cfg.output_dir} holds finished stages trained with another config ({'; '.join(changes[:4])}); "
                "rerunning would train nothing and misrecord it. Use a new run.output_dir, or delete the "
                "finished stages' 'final' folders to train them again"
            )
    if is_main_process():
        atomic_write_text(path, yaml.safe_dump(new, sort_keys=False))
    return path


def _finished_stage_changes(cfg: TrainConfig, old: dict, new: dict) -> list[str]:
    done = [i for i, s in enumerate(cfg.stages)
            if os.path.isfile(os.path.join(cfg.output_dir, s.name, "final", "config.json"))]
    if not done:
        return []
    changes = []
    for key in ("model", "data", "training"):
        changes += config_differences(old.get(key), new.get(key), key)
    changes += config_differences((old.get("run") or {}).get("seed"), new["run"]["seed"], "run.seed")
    old_stages = {s.get("name"): s for s in old.get("stages") or [] if isinstance(s, dict)}
    for i in done:
        name = cfg.stages[i].name
        changes += config_differences(old_stages.get(name), new["stages"][i], f"stages.{i} ({name})")
    return changes


def run_training(cfg: TrainConfig, stages: list[str] | None = None, callbacks: list | None = None) -> list[StageResult]:
    """Run every stage (or the named ones, in config order). Returns one result per stage.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects for every stage.
    """
    validate(cfg)
    from transformers import set_seed

    set_seed(cfg.seed)
    write_resolved_config(cfg)
    names = [s.name for s in cfg.stages]
    if stages:
        unknown = sorted(set(stages) - set(names))
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; the config has {names}")
    results = []
    for i, s in enumerate(cfg.stages):
        if stages and s.name not in stages:
            continue
        results.append(run_stage(cfg, i, callbacks))
    if is_main_process():
        summary = [r.__dict__ for r in results]
        atomic_write_text(os.path.join(cfg.output_dir, "summary.json"),
                          json.dumps(summary, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return results
