"""Run a model over a benchmark: batched greedy answers, written as they come, resumable, scored.

:func:`evaluate` is the library entry point (``hires-vlm eval`` and the demo call it). It loads a
benchmark with :func:`~hires_vlm.eval.benchmarks.load_benchmark`, answers its questions in batches
of ``batch_size`` and appends one LLaVA answer-file row (``question_id, prompt, text, model_id``)
per answer to ``<out_dir>/predictions.jsonl``; each batch is written with one ``write``, then
flushed and fsync'd, so a killed run loses at most the batch in flight. At the end it scores the
answers and writes ``<out_dir>/scores.json`` atomically.

Resume: a second call with the same ``out_dir`` reads the answer file, truncates it to its last
complete line (a run killed mid-write leaves a partial one), and answers only the questions whose
id is not there yet. Batches are cut from the full, ordered question list, never from what is
left, and a batch that was half written is recomputed whole (only its missing rows are written):
the resumed file holds the same rows, in the same order, as an uninterrupted run with the same
batch size. ``<out_dir>/run.json`` records what the answers belong to (benchmark, data, model id,
``max_new_tokens``, loader options); a resume that differs in one of those is refused.

Bad samples — an image that is missing or unreadable, a prompt that does not fit ``max_length`` —
are skipped and counted by reason (``skipped_samples`` in the report), never a crash; they get no
row, so they count as unanswered (wrong) in the scores and are retried by a resume.

The helpers :func:`encode_request`, :func:`collate_for_generation` and :func:`generate_texts`
turn ``(prompt, images)`` pairs into left-padded generation inputs; the lmms-eval wrapper
(:mod:`.lmms_plugin`) uses them too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.loading import DTYPES, load_model  # noqa: F401  (re-exported for the lmms-eval plugin)
from .benchmarks import get_benchmark, prediction_row
from .benchmarks.base import BenchmarkDataError, EvalSample
from .score import read_predictions

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from ..model import HiResVLM, HiResVLMProcessor

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
SCORES_FILE = "scores.json"
RUN_FILE = "run.json"
REPLACED_PREFIX = ".replaced-"  # an --overwrite run's predecessor, kept until the new run completes
# Fields of run.json that must match for a resume: answers of another model, benchmark or
# decoding budget must not be mixed into one file.
# ``model_fingerprint`` (``hires_vlm.model.loading``) tells two models apart whatever their folders are
# called; the batch size is part of the identity because padding changes the numbers.
RUN_IDENTITY = ("benchmark", "data", "model_fingerprint", "method_runtime", "dtype", "max_new_tokens",
                "batch_size", "benchmark_options")
MAX_SKIP_EXAMPLES = 20


class SampleError(ValueError):
    """One question cannot be asked (bad image, prompt too long); ``reason`` is the count key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- inputs ---------------------------------------------------------------------------------------


@dataclass
class EncodedRequest:
    """One prompt ready for batching: its token ids (``<image>`` placeholders unexpanded) and views."""

    input_ids: list[int]
    pixel_values: "torch.Tensor | None"  # [v x c x S x S], all views of all its images
    image_sizes: list[tuple[int, int]]  # (width, height) per image


def encode_request(processor: "HiResVLMProcessor", prompt: str, images: Sequence["Image.Image"] = ()) -> EncodedRequest:
    """Token ids and pixel values of a one-turn prompt with any number of images.

    The processor's ``__call__`` takes one image per prompt; multi-image questions (MMMU) need
    this. One ``<image>`` placeholder per image is put in front of the prompt unless it has them.
    Raises :class:`SampleError` when the prompt does not fit the model's ``max_length``.
    """
    import torch

    from ..text.conversation import ConversationError, SequenceTooLongError

    tensors, sizes, counts = [], [], []
    for image in images:
        pixels, record = processor.image_processor.preprocess_one(image)
        tensors.append(pixels)
        sizes.append(tuple(int(x) for x in record.image_size))
        counts.append(processor.method_config.max_visual_tokens(record, processor.grid))
    try:
        ids = processor.encoder.encode_prompt(prompt, len(counts), counts)
    except SequenceTooLongError as err:
        raise SampleError("prompt does not fit max_length", str(err)) from err
    except ConversationError as err:
        raise SampleError("prompt cannot be encoded", str(err)) from err
    return EncodedRequest(list(ids), torch.cat(tensors, 0) if tensors else None, sizes)


def collate_for_generation(processor: "HiResVLMProcessor",
                           requests: Sequence[EncodedRequest]) -> dict[str, "torch.Tensor"]:
    """Left-padded ``input_ids``/``attention_mask`` plus ``pixel_values``/``image_sizes`` (if any image)."""
    import torch

    pad = processor.tokenizer.pad_token_id
    width = max(len(r.input_ids) for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):
        ids[i, width - len(r.input_ids):] = torch.tensor(r.input_ids, dtype=torch.long)
        mask[i, width - len(r.input_ids):] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    pixels = [r.pixel_values for r in requests if r.pixel_values is not None]
    if pixels:
        out["pixel_values"] = torch.cat(pixels, 0)
        out["image_sizes"] = torch.tensor([s for r in requests for s in r.image_sizes], dtype=torch.long)
    return out


def generate_texts(model: "HiResVLM", processor: "HiResVLMProcessor", requests: Sequence[EncodedRequest],
                   **generate_kwargs: Any) -> list[str]:
    """Decoded answers (special tokens dropped, stripped) for a batch of encoded requests."""
    import torch

    inputs = collate_for_generation(processor, requests)
    device = model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    generate_kwargs.setdefault("do_sample", False)
    with torch.inference_mode():
        out = model.generate(**inputs, **generate_kwargs)
    return processor.batch_decode(out)


def load_sample_images(sample: EvalSample) -> list["Image.Image"]:
    """The sample's images as RGB; :class:`SampleError` (reason ``missing image`` / ``unreadable image``)."""
    from ..imaging import ImageLoadError, load_image, to_rgb

    sources = ([sample.image] if sample.image is not None else []) + list(sample.extra_images)
    images = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            if not Path(source).is_file():
                raise SampleError("missing image", f"question {sample.question_id!r}: image file not found: {source}")
            try:
                images.append(load_image(source))
            except ImageLoadError as err:
                raise SampleError("unreadable image", f"question {sample.question_id!r}: {err}") from err
        else:
            try:
                images.append(to_rgb(source()))
            except (ValueError, OSError) as err:
                raise SampleError("unreadable image", f"question {sample.question_id!r}: {err}") from err
    return images


# --- the answer file ------------------------------------------------------------------------------


def read_answered(path: Path) -> tuple[set[str], int]:
    """Truncate ``path`` to its last complete line; return the answered ids and the bytes cut.

    A complete line that is not a valid answer row is left in place (the scorer counts it as
    malformed) and its question is answered again.
    """
    if not path.exists():
        return set(), 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        cut = len(data) - keep
        if cut:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return answered_ids(path), cut


def answered_ids(path: Path) -> set[str]:
    """The ids answered in ``path``, read only (another process may still be writing it)."""
    from .distributed import read_rows

    return {str(r["question_id"]).strip() for r in read_rows(path) if isinstance(r.get("text"), str)}


def append_rows(f, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as JSON Lines with one ``write``, then flush and fsync (durable per batch)."""
    if not rows:
        return
    f.write("".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
    f.flush()
    os.fsync(f.fileno())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON to ``path`` atomically (``fsio.atomic_write_json``)."""
    from .. import fsio

    fsio.atomic_write_json(path, obj)


# --- the run --------------------------------------------------------------------------------------


def _check_resume(out_dir: Path, identity: dict[str, Any]) -> None:
    run_file = out_dir / RUN_FILE
    if not run_file.exists() and not (out_dir / PREDICTIONS_FILE).exists():
        return
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        previous = {}
    if "model_fingerprint" not in previous:
        raise ValueError(f"{out_dir} holds answers of a run that did not record which model wrote them (an earlier "
                         "hires-vlm); use another output folder, or --overwrite to start afresh")
    differ = [k for k in RUN_IDENTITY if previous.get(k) != identity[k]]
    if differ:
        details = "; ".join(f"{k}: {previous[k]!r} there, {identity[k]!r} now" for k in differ)
        raise ValueError(
            f"{out_dir} holds answers of another run ({details}); use another output folder or overwrite=True "
            "(--overwrite) to start afresh"
        )


def evaluate(
    model: "str | os.PathLike | tuple[HiResVLM, HiResVLMProcessor]",
    benchmark: str,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    device: str | None = None,
    dtype: str | None = None,
    model_id: str | None = None,
    benchmark_options: Mapping[str, Any] | None = None,
    method_runtime: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Answer the questions of ``benchmark`` (data at ``data``) and score them; returns the report.

    ``model``: a saved model directory, or a ``(model, processor)`` pair (then ``device``, if given,
    moves the model). ``limit``: only the first ``limit`` questions, in file order; they alone are
    scored. ``benchmark_options`` go to the loader (e.g. ``{"split": "all"}`` for AI2D).
    ``method_runtime`` changes the method's run-time fields for this run (SliME's ``gamma``,
    INF-LLaVA's ``canvas_source``, …). A folder that already holds answers is continued only when
    the model (its fingerprint), benchmark, data and generation settings are the same; otherwise the
    run is refused naming the difference.
    ``on_batch(k, rows)`` is called after batch ``k`` (0-based) is on disk. Files written under
    ``out_dir``: ``predictions.jsonl``, ``run.json`` and, at the end, ``scores.json`` (the report).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    start = time.time()
    spec = get_benchmark(benchmark)
    options = dict(benchmark_options or {})
    bench = spec.load(data, **options)

    if isinstance(model, (str, os.PathLike)):
        model_path = os.path.abspath(os.fspath(model))
        model_id = model_id or default_model_id(model_path)
    else:
        model_path = None
        name_or_path = getattr(model[0].config, "name_or_path", None)
        model_id = model_id or (default_model_id(name_or_path) if name_or_path else "hires-vlm")

    out = Path(out_dir)
    pred_path = out / PREDICTIONS_FILE
    runtime = dict(method_runtime or {})

    # Every input is checked (benchmark data above, the model here) before an old result is touched.
    from ..model import HiResVLMProcessor
    from ..model.loading import model_fingerprint, state_fingerprint

    from . import distributed as dist

    rank, world = dist.rank_world()
    device = device or dist.local_device()
    if model_path is not None:
        net, processor = load_model(model_path, device, dtype)
        fingerprint = model_fingerprint(model_path)
    else:
        net, processor = model
        if device is not None:
            net = net.to(device)
        if dtype is not None:
            import torch

            net = net.to(getattr(torch, dtype))
        net.eval()
        fingerprint = state_fingerprint(net)
    if runtime:
        net.set_method_runtime(**runtime)
        processor = HiResVLMProcessor(processor.tokenizer, net.config)
    identity = {"benchmark": benchmark, "data": os.path.abspath(os.fspath(data)), "model_id": model_id,
                "model_fingerprint": fingerprint, "method_runtime": runtime,
                "dtype": str(net.dtype).removeprefix("torch."), "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "benchmark_options": options}
    dist.ensure_group(str(net.device))
    if not overwrite:
        _check_resume(out, identity)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _set_aside(out)  # deleted only once this run has written its scores
        write_json_atomic(out / RUN_FILE, {**identity, "model": model_path, "limit": limit})
    dist.barrier()

    own = pred_path if world == 1 else dist.shard_path(out, rank)
    answered, cut = read_answered(own)  # this process's file: a partial last line is cut
    if cut:
        logger.warning("%s: dropped a partial last line (%d bytes) left by an interrupted run", own, cut)
    for other in [pred_path, *dist.shards(out)]:  # what other processes (or an earlier run) answered
        if other != own:
            answered |= answered_ids(other)
    selected = list(bench.samples(limit))
    n_resumed = sum(1 for s in selected if s.question_id in answered)
    todo_total = len(selected) - n_resumed
    skipped: Counter = Counter()
    skip_examples: list[dict[str, str]] = []
    n_generated = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=todo_total, desc=f"{benchmark}", unit="q", disable=not progress or todo_total == 0 or rank > 0)
    with open(own, "a", encoding="utf-8") as f:
        for k, batch in enumerate(bench.batches(batch_size, limit)):
            if k % world != rank:  # batch k belongs to rank k mod N: the batches of one process, shared out
                continue
            todo = [s for s in batch if s.question_id not in answered]
            if not todo:
                continue
            # The whole batch is recomputed (not just ``todo``) so that its padding, hence its
            # numbers, are those of an uninterrupted run.
            ready: list[tuple[EvalSample, EncodedRequest]] = []
            for sample in batch:
                try:
                    ready.append((sample, encode_request(processor, sample.prompt, load_sample_images(sample))))
                except SampleError as err:
                    if sample.question_id not in answered:
                        skipped[err.reason] += 1
                        if len(skip_examples) < MAX_SKIP_EXAMPLES:
                            skip_examples.append({"question_id": sample.question_id, "reason": err.reason,
                                                  "message": str(err)})
                        if skipped[err.reason] <= 3:  # the report counts them all
                            logger.warning("skipping %s%s", err, " (further ones of this kind: counted only)"
                                           if skipped[err.reason] == 3 else "")
            rows = []
            if any(sample.question_id not in answered for sample, _ in ready):
                texts = generate_texts(net, processor, [r for _, r in ready], max_new_tokens=max_new_tokens)
                for (sample, _), text in zip(ready, texts):
                    if sample.question_id in answered:
                        continue
                    answered.add(sample.question_id)  # a repeated id in the data gets one row
                    rows.append(prediction_row(sample, text, model_id))
            append_rows(f, rows)
            n_generated += len(rows)
            bar.update(len(todo) * world)
            bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
            if on_batch is not None:
                on_batch(k, rows)
    bar.close()
    parts = dist.gather({"skipped": dict(skipped), "examples": skip_examples, "generated": n_generated,
                         "answered": sorted(answered)})
    dist.barrier()  # every shard is complete
    skipped = Counter()
    skip_examples = []
    for part in parts:
        skipped.update(part["skipped"])
        skip_examples += part["examples"]
    skip_examples = skip_examples[:MAX_SKIP_EXAMPLES]
    n_generated = sum(part["generated"] for part in parts)
    answered = set().union(*(set(part["answered"]) for part in parts))
    if rank != 0:
        dist.barrier()  # rank 0 merges and scores
        return dist.broadcast(None)
    dist.merge(out, pred_path, [s.question_id for s in selected])

    report = {
        "benchmark": benchmark,
        "model_id": model_id,
        "model": model_path,
        "data": identity["data"],
        "predictions": str(pred_path),
        "headline": None,
        "metrics": None,
        "note": None,  # why there are no metrics, when there are none
        "counts": {
            "n_questions": len(selected),
            "n_answered": sum(1 for s in selected if s.question_id in answered),
            "n_generated": n_generated,
            "n_resumed": n_resumed,
            "n_skipped_samples": sum(skipped.values()),
            "n_skipped_records": bench.n_skipped,
        },
        "skipped_samples": dict(skipped),
        "skipped_examples": skip_examples,
        "skipped_records": dict(bench.skipped),
        "settings": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "limit": limit,
                     "device": str(net.device), "dtype": str(net.dtype).removeprefix("torch."),
                     "benchmark_options": options},
        "seconds": None,
    }
    report.update(_score(spec, bench, selected, pred_path))
    report["seconds"] = round(time.time() - start, 3)
    write_json_atomic(out / SCORES_FILE, report)
    for old in out.glob(f"{REPLACED_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()
        dist.broadcast(report)
    return report


def _set_aside(out: Path) -> None:
    """Move an earlier run's files into ``out/.replaced-<time>/`` (``--overwrite``); the run that
    completes deletes them, so a run that fails or is killed loses nothing."""
    present = [name for name in (PREDICTIONS_FILE, SCORES_FILE, RUN_FILE) if (out / name).exists()]
    if not present:
        return
    aside = out / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.mkdir()
    for name in present:
        os.replace(out / name, aside / name)
    logger.warning("--overwrite: the earlier results are in %s until this run completes", aside)


def _score(spec, bench, selected: list[EvalSample], pred_path: Path) -> dict[str, Any]:
    """Metrics over the selected questions that have a ground truth; unanswered ones count as wrong."""
    try:
        annotations = bench.annotations()
    except BenchmarkDataError as err:
        return {"note": str(err)}
    ids = {s.question_id for s in selected}
    annotations = {k: v for k, v in annotations.items() if k in ids}
    if not annotations:
        return {"note": f"{spec.name}: none of the {len(ids)} selected questions has a ground-truth answer"}
    predictions, counts = read_predictions(pred_path, mmbench_rounds=spec.name == "mmbench")
    predictions = {k: v for k, v in predictions.items() if k in annotations}  # no-truth questions: not "extra"
    metrics = spec.scorer(predictions, annotations)
    metrics.update(n_duplicates=counts["n_duplicates"], n_malformed_lines=counts["n_malformed_lines"])
    return {"metrics": metrics, "headline": {"metric": spec.headline, "value": metrics.get(spec.headline)}}


def default_model_id(model_dir: str | os.PathLike) -> str:
    """A readable id for a checkpoint: its folder name, or the last three path parts for a training
    run's ``final`` / ``checkpoint-N`` folder.

    >>> default_model_id("/runs/tiny-llava_hd/sft/final")
    'tiny-llava_hd-sft-final'
    >>> default_model_id("/models/llava-1.5-7b")
    'llava-1.5-7b'
    """
    parts = [p for p in Path(os.path.abspath(os.fspath(model_dir))).parts[1:] if p]
    if not parts:
        return "model"
    if parts[-1] == "final" or parts[-1].startswith("checkpoint-"):
        return "-".join(parts[-3:])
    return parts[-1]
