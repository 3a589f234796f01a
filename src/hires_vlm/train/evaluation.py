"""Evaluation during a stage: the eval set (``data.eval``, a LLaVA JSON file read by the training
data's loader), the answer accuracy of greedy generation on its first records (``data.eval_accuracy``)
and the eval curve a stage writes beside its loss curve (``eval_history.json``).

The Trainer computes the eval loss every ``eval_steps`` (the runner's default: ``eval_strategy:
steps``, ``eval_steps`` = ``logging_steps``) and the runner evaluates once more at the last step if
that step was not an eval step, so every curve ends where training ended. Evaluations are entries of
``trainer.state.log_history``, which checkpoints carry: a resumed stage keeps its earlier points.
"""

from __future__ import annotations

import logging
import os
from itertools import pairwise

from .trainer import is_main_process

logger = logging.getLogger("hires_vlm.train")


def eval_data(spec) -> tuple[str, str] | None:
    """(eval file, image folder) of a stage's data spec, or None when it has no eval set."""
    if not spec.eval:
        return None
    path = os.fspath(spec.eval)
    folder = spec.eval_image_folder or spec.image_folder or os.path.dirname(os.path.abspath(path))
    return path, os.fspath(folder)


def eval_dataset(spec, processor, template: str):
    """The stage's eval ``LlavaDataset`` (its first ``eval_limit`` records), or None."""
    from ..data.llava_json import LlavaDataset, read_records

    found = eval_data(spec)
    if found is None:
        return None
    path, folder = found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.eval file not found: {path!r}")
    records = read_records(path)[: spec.eval_limit] if spec.eval_limit else path
    return LlavaDataset(records, folder, processor, template=template, max_length=spec.max_length,
                        progress=is_main_process())


def _question_answer(record: dict) -> tuple[str, str] | None:
    turns = record.get("conversations") or []
    for a, b in pairwise(turns):
        if a.get("from") == "human" and b.get("from") == "gpt":
            return str(a.get("value", "")), str(b.get("value", ""))
    return None


class AnswerAccuracy:
    """Exact-match accuracy (after ``normalize_answer``: case, punctuation, articles, number words) of
    greedy answers to the first question of each of the first ``n`` usable records of an eval set.
    A record whose prompt or image fails counts as wrong."""

    def __init__(self, dataset, processor, n: int, batch_size: int = 8):
        from ..data.llava_json import record_images, resolve_image_path

        self.processor = processor
        self.batch_size = max(1, int(batch_size))
        self.items = []
        for i in dataset.index[:n]:
            rec = dataset.records[i]
            qa = _question_answer(rec)
            if qa is None:
                continue
            paths = [resolve_image_path(dataset.image_folder, r) for r in record_images(rec)]
            self.items.append((qa[0], paths, qa[1]))
        lengths = [len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for _, _, a in self.items]
        self.max_new_tokens = max(lengths, default=1) + 4

    def __call__(self, model) -> dict:
        import torch

        from ..data.synthetic.scoring import normalize_answer
        from ..eval.runner import SampleError, encode_request, generate_texts
        from ..imaging import ImageLoadError, load_image

        was_training = model.training
        model.eval()
        hits = failed = 0
        try:
            for start in range(0, len(self.items), self.batch_size):
                chunk, requests = [], []
                for prompt, paths, answer in self.items[start:start + self.batch_size]:
                    try:
                        requests.append(encode_request(self.processor, prompt, [load_image(p) for p in paths]))
                        chunk.append(answer)
                    except (SampleError, ImageLoadError, OSError):
                        failed += 1
                if not requests:
                    continue
                with torch.no_grad():
                    texts = generate_texts(model, self.processor, requests, max_new_tokens=self.max_new_tokens,
                                           do_sample=False)
                hits += sum(normalize_answer(t) == normalize_answer(a) for t, a in zip(texts, chunk))
        finally:
            model.train(was_training)
        n = len(self.items)
        if failed:
            logger.warning("eval accuracy: %d of %d records could not be asked (counted wrong)", failed, n)
        return {"accuracy": hits / n if n else float("nan"), "accuracy_records": n}


def eval_history(history: list[dict]) -> list[dict]:
    """The evaluation entries of a ``log_history`` (step, epoch, eval_* metrics)."""
    return [h for h in history if any(k.startswith("eval_") for k in h)]


def needs_final_eval(history: list[dict], step: int) -> bool:
    return not any(h.get("step") == step and "eval_loss" in h for h in history)
