"""Run a training config stage by stage on the transformers ``Trainer``.

Each stage loads the previous stage's ``final/`` output (or builds/loads the model for the first),
sets which modules train and at what learning rate, logs the trainable/frozen state of every
component, trains, and writes ``<output_dir>/<stage>/final`` atomically. A stage whose ``final``
exists is skipped; an interrupted stage resumes from its newest *complete* checkpoint (optimizer,
scheduler, RNG and data position — the Trainer's exact resume). Multi-process runs go through
``torchrun`` (gloo on CPU, NCCL on GPU); DeepSpeed ZeRO / FSDP through the stage's ``training``
keys ``deepspeed`` / ``fsdp`` (any ``TrainingArguments`` field goes there: arguments.py).

A stage whose ``training`` says ``packing: true`` trains padding-free: the collator marks its batches
and the model packs each into one row after image expansion (``model/packing.py``; an LM that
cannot keep packed samples apart is refused before training starts). ``group_by_modality_length:
true`` draws LLaVA's batches of one modality and similar lengths (``data/sampling.py``).
``feature_cache: {dir, max_gb}`` keeps the frozen tower's features on disk, so every view goes through
the tower once across epochs, stages and reruns (``vision/feature_cache.py``); a stage that trains
the tower is refused it.

A stage with an eval set (``data.eval``) evaluates during training and writes ``eval_history.json``
beside ``log_history.json``; ``loss.png`` shows both curves (evaluation.py, plots.py). A LoRA stage
with ``lora.save: adapter`` writes its adapters, not the merged weights, into ``final/``; the next
stage, and :func:`~hires_vlm.train.lora.load_lora_output`, put them back onto the base (lora.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import yaml

from .arguments import logging_dir, resolve_config_path, tensorboard_dir, training_arguments  # noqa: F401  (re-exported)
from .config import ConfigError, StageSpec, TrainConfig, config_differences, validate
from .evaluation import AnswerAccuracy, eval_dataset, eval_history, needs_final_eval
from .freezing import log_components, set_trainable
from .lora import apply_lora, is_adapter_output, load_lora_output, merge_lora, save_adapter
from .plots import save_loss_plot
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
        model = load_lora_output(prev) if is_adapter_output(prev) else HiResVLM.from_pretrained(prev)
        return model, HiResVLMProcessor.from_pretrained(prev)
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
    eval_loss: float | None = None  # the last evaluation's (None: the stage has no eval set)


def stage_base(cfg: TrainConfig, index: int, stage_dir: str, model, processor) -> str:
    """The model directory a ``lora.save: adapter`` stage's adapters go onto: the previous stage's
    output, the pretrained model, or (a tiny model built in memory) ``<stage>/base``, saved once."""
    if index > 0:
        return os.path.join(cfg.output_dir, cfg.stages[index - 1].name, "final")
    if cfg.model.source == "pretrained":
        return os.path.abspath(cfg.model.path)
    base = os.path.join(stage_dir, "base")
    if is_main_process() and not os.path.isfile(os.path.join(base, "config.json")):
        tmp = base + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        shutil.rmtree(base, ignore_errors=True)
        os.replace(tmp, base)
    barrier()
    return base


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
    lora_save = stage.lora.get("save", "merged") if stage.lora else None
    base_dir = stage_base(cfg, index, stage_dir, model, processor) if lora_save == "adapter" else None
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
        try:
            lrs.update(apply_lora(model, stage.lora))
        except ConfigError as err:
            raise ConfigError(f"stage {stage.name!r}: {err}") from None
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
    stage_training = cfg.stage_training(stage)
    packing = bool(stage_training.get("packing"))
    if packing:
        from ..model.packing import PackingError, enable_packing

        try:
            impl = enable_packing(model)
        except PackingError as err:
            raise ConfigError(f"stage {stage.name!r}: training.packing: {err}") from None
        logger.info("stage %r trains packed (language model attention: %s)", stage.name, impl)
    if stage_training.get("feature_cache"):
        attach_stage_cache(cfg, stage, model, stage_training["feature_cache"])
    dataset = LlavaDataset(train_file, image_folder, processor, template=model.config.template,
                           max_length=spec.max_length, progress=is_main_process())
    evalset = eval_dataset(spec, processor, model.config.template)
    args = training_arguments(cfg, stage, stage_dir, lrs, has_eval=evalset is not None)
    trainer_cls = _make_trainer_class()
    trainer_cls.module_lrs = lrs
    trainer_cls.group_by_modality_length = bool(stage_training.get("group_by_modality_length"))
    trainer_cls.length_grouping_batches = stage_training.get("length_grouping_batches")
    if evalset is not None and spec.eval_accuracy:
        trainer_cls.generation_eval = AnswerAccuracy(evalset, processor, spec.eval_accuracy, args.per_device_eval_batch_size)
    with tensorboard_dir(logging_dir(stage_training, stage_dir)):
        collator = LlavaCollator(processor.tokenizer.pad_token_id, dataset, packing=packing)
        trainer = trainer_cls(model=model, args=args, train_dataset=dataset, eval_dataset=evalset,
                              data_collator=collator, callbacks=callbacks)
        ckpt = latest_complete_checkpoint(stage_dir)
        trainer.load_skips(ckpt)
        barrier()
        if ckpt:
            logger.info("resuming stage %r from %s", stage.name, ckpt)
            if is_main_process():
                print(f"resuming stage {stage.name!r} from {ckpt}", flush=True)
        start = time.time()
        result = trainer.train(resume_from_checkpoint=ckpt)
        if evalset is not None and args.eval_strategy != "no" and needs_final_eval(trainer.state.log_history,
                                                                                   trainer.state.global_step):
            trainer.evaluate()  # the curve ends where training ended
        seconds = time.time() - start
    history = trainer.state.log_history
    skips = data_skips(dataset, trainer.gathered_skips())
    tmp = f"{final_dir}.tmp"
    if is_main_process() and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    barrier()
    if lora_save == "adapter":
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every rank: a collective under ZeRO-3
        if is_main_process():
            save_adapter(model, tmp, base_dir, final_dir, state)
    else:
        merge_lora(model)
        trainer.save_model(tmp)
    evals = eval_history(history)
    if is_main_process():
        processor.save_pretrained(tmp)
        atomic_write_text(os.path.join(tmp, "training_stage.json"), json.dumps(
            {"stage": stage.name, "trainable": stage.trainable, "method_runtime": stage.method_runtime,
             "lora": stage.lora, "template": model.config.template, "data_skips": skips,
             "training": stage_training, "eval": evals[-1] if evals else None}, indent=2, default=str))
        os.replace(tmp, final_dir)
        atomic_write_text(os.path.join(stage_dir, "log_history.json"), json.dumps(history, indent=2))
        if evalset is not None:
            atomic_write_text(os.path.join(stage_dir, "eval_history.json"), json.dumps(evals, indent=2))
        save_loss_plot(history, os.path.join(stage_dir, "loss.png"), f"{stage.name}")
    barrier()
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in evals if "eval_loss" in h]
    if skips["records_skipped"] and is_main_process():
        print(f"stage {stage.name!r}: {skips['records_skipped']} of {skips['records']} records skipped "
              f"(screened {skips['screened']}, at load {skips['at_load']})", flush=True)
    return StageResult(stage.name, final_dir, train_loss=getattr(result, "training_loss", None),
                       first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                       steps=trainer.state.global_step, seconds=seconds, data_skips=skips,
                       eval_loss=eval_losses[-1] if eval_losses else None)


def attach_stage_cache(cfg: TrainConfig, stage: StageSpec, model, spec: dict):
    """The stage's tower feature cache (``training.feature_cache``); refused when the stage trains the tower."""
    from ..vision import attach_feature_cache

    folder = os.path.join(cfg.output_dir, os.path.expanduser(spec["dir"]))  # an absolute dir stays as it is
    try:
        cache = attach_feature_cache(model, folder, int(spec["max_gb"] * 2**30))
    except ValueError as err:
        raise ConfigError(f"stage {stage.name!r}: training.feature_cache: {err}") from None
    logger.info("stage %r reads the frozen tower's features from %s (namespace %s…)", stage.name, folder,
                cache.namespace[:12])
    return cache


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
        a, b = old.get(key), new.get(key)
        if key == "training":  # where the frozen tower's features are kept changes no result
            a, b = ({k: v for k, v in (x or {}).items() if k != "feature_cache"} for x in (a, b))
        changes += config_differences(a, b, key)
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
