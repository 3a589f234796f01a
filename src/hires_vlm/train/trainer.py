"""The transformers ``Trainer`` of a stage: per-module learning rates, checkpoints marked complete
only when whole (incomplete ones set aside, the newest kept), the count of records that failed
to load, kept in every checkpoint so a resumed run reports the same numbers, answer accuracy
added to each evaluation when the stage asks for it, and LLaVA's modality-length grouping of the
training batches when the stage asks for it (``data/sampling.py``). Training steps ask the model for
the loss alone: the LM head runs only where a label is predicted (``labelled_logits_only``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import torch

from .. import fsio

logger = logging.getLogger("hires_vlm.train")

COMPLETE_MARKER = ".complete"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def atomic_write_text(path: str, text: str) -> None:
    fsio.atomic_write(path, text)


def _make_trainer_class():
    from transformers import Trainer

    class HiResTrainer(Trainer):
        """Trainer with per-module learning rates and checkpoints marked complete only when whole."""

        module_lrs: dict[str, float] = {}
        generation_eval = None  # callable(model) -> {metric: value}, added to every evaluation (evaluation.py)
        group_by_modality_length = False  # batches of one modality and similar lengths (data/sampling.py)
        length_grouping_batches: int | None = None  # batches sorted together (None: one optimizer step's)
        SKIPS_FILE = "skipped_records.json"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.skipped_records: dict[int, str] = {}  # record index → reason, failed at load (all ranks)

        def compute_loss(self, model, inputs, *args, **kwargs):
            for index, kind in inputs.pop("skipped_records", ()):
                self.skipped_records[int(index)] = kind
            if model.training and inputs.get("labels") is not None:
                # A training step reads the loss only: the LM head runs on the labelled positions alone
                # (HiResVLM.forward; the same loss, without the logits of image and prompt tokens).
                inputs["labelled_logits_only"] = True
            return super().compute_loss(model, inputs, *args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop("skipped_records", None)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def evaluation_loop(self, *args, **kwargs):
            output = super().evaluation_loop(*args, **kwargs)
            if self.generation_eval is not None:  # every rank answers the same records (ZeRO-3 needs all)
                prefix = kwargs.get("metric_key_prefix", "eval")
                output.metrics.update({f"{prefix}_{k}": v for k, v in self.generation_eval(self.model).items()})
            return output

        def gathered_skips(self) -> dict[int, str]:
            """The records every rank skipped at load so far (a collective under DDP)."""
            mine = dict(self.skipped_records)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                parts = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(parts, mine)
                for part in parts:
                    mine.update(part or {})
            return mine

        def load_skips(self, checkpoint: str | None) -> None:
            """Counts carried over from the checkpoint a resumed run starts from."""
            path = os.path.join(checkpoint, self.SKIPS_FILE) if checkpoint else None
            if path and os.path.isfile(path):
                with open(path) as f:
                    self.skipped_records.update({int(k): v for k, v in json.load(f).items()})

        def modality_length_sampler(self):
            """The rank's :class:`ModalityLengthGroupedBatchSampler` over the training set."""
            from ..data.sampling import ModalityLengthGroupedBatchSampler

            measure = getattr(self.train_dataset, "modality_lengths", None)
            if measure is None:
                raise TypeError(f"group_by_modality_length needs a dataset that knows its samples' lengths and "
                                f"modalities (LlavaDataset); {type(self.train_dataset).__name__} does not")
            ml = measure(progress=is_main_process())
            args = self.args
            seed = args.data_seed if args.data_seed is not None else args.seed
            step = max(1, args.world_size) * args.gradient_accumulation_steps
            return ModalityLengthGroupedBatchSampler(
                ml.lengths, ml.has_image, self._train_batch_size, group=self.length_grouping_batches or step,
                num_replicas=max(1, args.world_size), rank=args.process_index, seed=seed,
                drop_last=args.dataloader_drop_last)

        def get_train_dataloader(self):
            if not self.group_by_modality_length:
                return super().get_train_dataloader()
            from functools import partial

            from torch.utils.data import DataLoader
            from transformers.trainer_utils import seed_worker

            sampler = self.modality_length_sampler()
            args = self.args
            params = {"batch_sampler": sampler, "collate_fn": self.data_collator,
                      "num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
                      "persistent_workers": args.dataloader_persistent_workers,
                      "multiprocessing_context": args.dataloader_multiprocessing_context,
                      "prefetch_factor": args.dataloader_prefetch_factor, "in_order": args.dataloader_in_order,
                      "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers,
                                                rank=args.process_index)}
            loader = self.accelerator.prepare(DataLoader(self.train_dataset, **params))
            # The sampler already yields this rank's batches; accelerate's shard wrapper must pass them
            # through (what transformers does for its own rank-aware BatchRebalanceSampler).
            shard = getattr(loader, "batch_sampler", None)
            if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
                shard.num_processes, shard.process_index = 1, 0
            return loader

        def create_optimizer(self, model=None):
            if self.optimizer is not None:
                return self.optimizer
            model = self.model if model is None else model
            opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            opt_kwargs.pop("lr", None)
            groups: dict[tuple[float, bool], list] = {}
            for n, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                lr = self.module_lrs.get(n.removeprefix("module."), self.args.learning_rate)
                decay = p.ndim >= 2 and "norm" not in n.lower()
                groups.setdefault((lr, decay), []).append(p)
            params = [{"params": ps, "lr": lr, "weight_decay": self.args.weight_decay if decay else 0.0}
                      for (lr, decay), ps in groups.items()]
            self.optimizer = opt_cls(params, **opt_kwargs)
            return self.optimizer

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            skips = self.gathered_skips()
            barrier()
            if self.args.should_save:
                ckpt = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
                if os.path.isdir(ckpt):
                    atomic_write_text(os.path.join(ckpt, self.SKIPS_FILE), json.dumps(skips))
                    atomic_write_text(os.path.join(ckpt, COMPLETE_MARKER), str(self.state.global_step))

    return HiResTrainer


def latest_complete_checkpoint(stage_dir: str) -> str | None:
    """Newest ``checkpoint-N`` holding the completion marker; incomplete ones are set aside."""
    if not os.path.isdir(stage_dir):
        return None
    best, best_step = None, -1
    for name in os.listdir(stage_dir):
        if not name.startswith("checkpoint-"):
            continue
        path = os.path.join(stage_dir, name)
        try:
            step = int(name.split("-", 1)[1])
        except ValueError:
            continue
        if not os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            if is_main_process():
                _set_aside_incomplete(stage_dir, name)
            continue
        if step > best_step:
            best, best_step = path, step
    return best


INCOMPLETE_PREFIX = "incomplete-"


def _set_aside_incomplete(stage_dir: str, name: str) -> None:
    """Move an interrupted ``checkpoint-N`` to ``incomplete-checkpoint-N-<time>``, keeping only the newest
    such folder (an earlier one is deleted, and the log says so)."""
    old = sorted(n for n in os.listdir(stage_dir) if n.startswith(INCOMPLETE_PREFIX))
    for n in old:
        shutil.rmtree(os.path.join(stage_dir, n), ignore_errors=True)
        logger.warning("deleted %s, an older incomplete checkpoint (only the newest is kept)", n)
    aside = f"{INCOMPLETE_PREFIX}{name}-{int(time.time())}"
    shutil.move(os.path.join(stage_dir, name), os.path.join(stage_dir, aside))
    logger.warning("set aside the incomplete checkpoint %s (interrupted while saving) as %s", name, aside)



def data_skips(dataset, at_load: dict[int, str]) -> dict:
    """What a stage's data left out: records screened out up front, and records that failed at load
    (each counted once, however often the epoch met it), by reason."""
    from collections import Counter

    load_counts = Counter(at_load.values())
    return {"records": len(dataset.records), "records_skipped": sum(dataset.screened.values()) + len(at_load),
            "screened": dict(dataset.screened), "at_load": dict(load_counts),
            "examples": dataset.screen_examples[:10]}
