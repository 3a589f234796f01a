"""Evaluation across processes: ``torchrun --nproc_per_node N -m hires_vlm.cli eval …``.

The benchmark's batches are cut from the whole ordered question list exactly as in one process,
and rank r answers batches r, r + N, r + 2N, … — so every batch has the same members, padding and
numbers as in a single-process run. Each rank appends its answers to its own shard
(``predictions.rank<r>.jsonl``, one fsync'd write per batch); when every rank is done, rank 0 merges
the shards into ``predictions.jsonl`` in question order (atomically) and removes them, then scores.
A run killed at any point resumes from the shards and the merged file, with any number of
processes: the result is the file one uninterrupted process writes.

Ranks talk through ``torch.distributed`` (gloo on CPU, NCCL on GPU), started here when torchrun's
environment says so and nobody started it yet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SHARD_PREFIX = "predictions.rank"


def rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun's ``RANK`` / ``WORLD_SIZE``)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_device() -> str | None:
    """``cuda:$LOCAL_RANK`` when several processes share a machine with GPUs, else ``None`` (the default)."""
    import torch

    if rank_world()[1] > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def ensure_group(device: str) -> None:
    import torch.distributed as dist

    if rank_world()[1] > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard_path(out: Path, rank: int) -> Path:
    return out / f"{SHARD_PREFIX}{rank}.jsonl"


def shards(out: Path) -> list[Path]:
    return sorted(out.glob(f"{SHARD_PREFIX}*.jsonl"))


def read_rows(path: Path) -> list[dict]:
    """The answer rows (objects with a ``question_id``) of a JSON Lines file; a partial or bad line is passed over."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a partial last line of a killed rank
        if isinstance(row, dict) and row.get("question_id") is not None:
            rows.append(row)
    return rows


def merge(out: Path, merged: Path, order: list[str]) -> None:
    """``merged`` ∪ every shard → ``merged``, rows in question ``order`` (first answer of an id wins;
    ids outside ``order`` keep their place at the end); then the shards are removed."""
    from .. import fsio

    parts = shards(out)
    if not parts:
        return
    seen: dict[str, dict] = {}
    extra: list[dict] = []
    for path in [merged, *parts]:
        for row in read_rows(path):
            qid = str(row["question_id"]).strip()
            if qid not in seen:
                seen[qid] = row
    rank = {qid: i for i, qid in enumerate(order)}
    known = sorted((q for q in seen if q in rank), key=rank.__getitem__)
    extra = [seen[q] for q in seen if q not in rank]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*(seen[q] for q in known), *extra])
    fsio.atomic_write(merged, text)
    for path in parts:
        path.unlink()
