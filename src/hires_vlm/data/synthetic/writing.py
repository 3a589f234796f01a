"""Writing the benchmark: items drawn in parallel, files written atomically into a folder the generator owns."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hires_vlm import fsio

from .drawing import (
    _PNG_LEVEL,
    _SPLIT_CODE,
    _TAG_SCHEDULE,
    ASPECTS,
    DEFAULT_SIZE_RANGE,
    DEFAULT_TILE_SIZE,
    JSON_FILES,
    OWNER,
    SPLITS,
    VERSION,
)
from .captions import image_caption
from .families import FAMILIES, _check_families, _check_size_range, _draw_item, _family_code, _min_long, _Opts
from .probes import lowres_separability
from .scoring import _answer_of


# --------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class BenchmarkInfo:
    """Where a generated benchmark lies and what ``benchmark.json`` says about it."""

    out_dir: Path
    meta: dict
    regenerated: bool

    @property
    def train_json(self) -> Path:
        return self.out_dir / "train.json"

    @property
    def test_json(self) -> Path:
        return self.out_dir / "test.json"

    @property
    def families(self) -> list[str]:
        return list(self.meta["params"]["families"])

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.meta["counts"]


def read_records(path: str | os.PathLike) -> list[dict]:
    """A split file (``train.json`` / ``test.json``) as a list of records."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _image_path(split: str, family: str, index: int) -> str:
    return f"images/{split}/{family}/{family}-{split}-{index:05d}.png"


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _image_hash(img: np.ndarray) -> str:
    h = hashlib.sha1(f"{img.shape}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


# (out_dir, seed, split, family, index, attempt, qtype, answer, size_range, min_long, tile_size)
_Task = tuple


def _make_item(task: _Task) -> dict:
    out_dir, seed, split, family, index, attempt, qtype, answer, size_range, min_long, tile_size = task
    fam = FAMILIES[family]
    s = _draw_item(fam, seed, split, index, attempt, qtype, answer, size_range, min_long, _Opts(tile_size=tile_size))
    rid = f"{family}-{split}-{index:05d}"
    rel = _image_path(split, family, index)
    fsio.atomic_write(Path(out_dir) / rel, _png_bytes(s.image), durable=False)  # redrawn if lost
    record = {
        "id": rid,
        "image": rel,
        "conversations": [
            {"from": "human", "value": "<image>\n" + s.question},
            {"from": "gpt", "value": s.answer},
        ],
        "family": family,
        "qtype": qtype,
        "caption": image_caption(s),
    }
    return {"record": record, "hash": _image_hash(s.image), "size": list(s.size)}


def caption_records(records: list[dict]) -> list[dict]:
    """Stage-1 alignment data: each training image with its caption (LLaVA's pretraining format)."""
    return [{"id": r["id"] + "-caption", "image": r["image"],
             "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": r["caption"]}],
             "family": r["family"], "qtype": "caption"} for r in records]


def _run(tasks: list[_Task], num_workers: int) -> list[dict]:
    if num_workers <= 1 or len(tasks) < 16:
        return [_make_item(t) for t in tasks]
    methods = multiprocessing.get_all_start_methods()
    # fork: workers need no re-import (torch is slow to import); they only use numpy and Pillow.
    ctx = multiprocessing.get_context("fork") if "fork" in methods else None
    chunk = max(1, min(64, len(tasks) // (4 * num_workers)))
    with cf.ProcessPoolExecutor(num_workers, mp_context=ctx) as ex:
        return list(ex.map(_make_item, tasks, chunksize=chunk))


def _size_summary(sizes: list[list[int]]) -> dict:
    if not sizes:
        return {}
    arr = np.asarray(sizes)
    aspects = Counter()
    for w, h in sizes:
        best = min(ASPECTS, key=lambda ab: abs(math.log((w / h) / (ab[0] / ab[1]))))
        aspects[f"{best[0]}:{best[1]}"] += 1
    return {
        "width": [int(arr[:, 0].min()), int(arr[:, 0].max())],
        "height": [int(arr[:, 1].min()), int(arr[:, 1].max())],
        "long_side": [int(arr.max(1).min()), int(arr.max(1).max())],
        "aspects": dict(sorted(aspects.items())),
    }


def _is_complete(out_dir: Path, meta: dict) -> bool:
    try:
        for split in SPLITS:
            recs = read_records(out_dir / f"{split}.json")
            if len(recs) != sum(meta["counts"][split].values()):
                return False
            if not all((out_dir / r["image"]).is_file() for r in recs):
                return False
        return (out_dir / "captions.json").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate_benchmark(out_dir: str | os.PathLike, *, train_per_family: int, test_per_family: int, seed: int = 0,
                       families: Iterable[str] | None = None, size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                       min_long_side: int | None = None, tile_size: int = DEFAULT_TILE_SIZE,
                       num_workers: int | None = None, separability_samples: int = 300,
                       force: bool = False) -> BenchmarkInfo:
    """Draw the benchmark into ``out_dir`` (skipped when ``benchmark.json`` matches the request).

    Writes ``images/{train,test}/<family>/<id>.png``, ``train.json`` and ``test.json`` (LLaVA
    conversation JSON plus ``family``, ``qtype`` and the image's ``caption``; image paths relative
    to ``out_dir``), ``captions.json`` (the training images with their captions: stage-1
    alignment data, LLaVA's pretraining format) and last
    ``benchmark.json`` (parameters, counts, sizes, answers, chance levels, version and the
    :func:`lowres_separability` measurement). ``min_long_side`` (default 2·``tile_size``) keeps
    the low-resolution path a reduction by at least 2, where the fine patterns vanish exactly.
    Every file is written to a temporary name and renamed, so an interrupted run leaves no torn
    file and no ``benchmark.json``. The folder is the generator's own (``fsio.OwnedFolder``): a
    folder holding files it did not write is refused, and of an earlier, larger request only the
    images it wrote itself are removed.
    The output does not depend on ``num_workers``.
    """
    for name, n in (("train_per_family", train_per_family), ("test_per_family", test_per_family)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if tile_size < 14:
        raise ValueError(f"tile_size must be at least 14, got {tile_size}")
    names = _check_families(families)
    min_long = _min_long(min_long_side, tile_size)
    size_range = _check_size_range(size_range, min_long)
    seed = int(seed)
    out_dir = Path(out_dir)
    params = {
        "version": VERSION, "seed": seed, "families": names, "train_per_family": int(train_per_family),
        "test_per_family": int(test_per_family), "size_range": list(size_range), "min_long_side": min_long,
        "tile_size": int(tile_size), "separability_samples": int(separability_samples),
    }
    meta_path = out_dir / "benchmark.json"
    folder = fsio.OwnedFolder(out_dir, OWNER, adopt=_files_of_an_earlier_version)
    folder.claim()  # refuses a folder holding files the generator did not write
    if not force and meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("params") == params and _is_complete(out_dir, old):
            return BenchmarkInfo(out_dir, old, regenerated=False)
    if meta_path.exists():
        meta_path.unlink()  # the directory is about to change: never leave a stale description
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    folder.record(JSON_FILES + tuple(_image_path(split, fam, i) for split, n in
                                     (("train", train_per_family), ("test", test_per_family))
                                     for fam in names for i in range(n)))

    counts = {"train": int(train_per_family), "test": int(test_per_family)}
    results: dict[str, list[dict]] = {}
    seen: set[tuple[str, str]] = set()
    for split in SPLITS:
        tasks = []
        for fam in names:
            (out_dir / "images" / split / fam).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, _TAG_SCHEDULE, _SPLIT_CODE[split], _family_code(fam)])
            for i, (qtype, answer) in enumerate(FAMILIES[fam].schedule(counts[split], rng)):
                tasks.append((str(out_dir), seed, split, fam, i, 0, qtype, answer, size_range, min_long, tile_size))
        items = _run(tasks, num_workers)
        if split == "test":  # an item the training split already holds is drawn again
            for k, (task, item) in enumerate(zip(tasks, items)):
                attempt = 0
                while (item["hash"], item["record"]["conversations"][0]["value"]) in seen:
                    attempt += 1
                    if attempt > 20:
                        raise RuntimeError(f"cannot draw a test item unlike the training set: {task[3]} #{task[4]}")
                    item = _make_item(task[:5] + (attempt,) + task[6:])
                items[k] = item
        seen |= {(it["hash"], it["record"]["conversations"][0]["value"]) for it in items}
        results[split] = items

    train_pairs = {(it["hash"], it["record"]["conversations"][0]["value"]) for it in results["train"]}
    test_pairs = {(it["hash"], it["record"]["conversations"][0]["value"]) for it in results["test"]}
    assert not train_pairs & test_pairs

    for split in SPLITS:
        fsio.atomic_write(out_dir / f"{split}.json", _json_bytes([it["record"] for it in results[split]]))
    fsio.atomic_write(out_dir / "captions.json", _json_bytes(caption_records([it["record"] for it in results["train"]])))
    keep = {it["record"]["image"] for split in SPLITS for it in results[split]}
    folder.prune(keep | set(JSON_FILES))  # images of an earlier, larger request; never a file of anyone else

    fams = {fam: FAMILIES[fam] for fam in names}
    meta = {
        "version": VERSION,
        "params": params,
        "counts": {split: {fam: counts[split] for fam in names} for split in SPLITS},
        "sizes": {split: _size_summary([it["size"] for it in results[split]]) for split in SPLITS},
        "families": {
            fam: {"description": f.description, "answers": {q: list(a) for q, a in f.answers.items()},
                  "chance": f.chance}
            for fam, f in fams.items()
        },
        "answer_counts": {
            split: {fam: dict(sorted(Counter(_answer_of(it["record"]) for it in results[split]
                                             if it["record"]["family"] == fam).items())) for fam in names}
            for split in SPLITS
        },
        "train_test_overlap": len(train_pairs & test_pairs),
        "separability": (lowres_separability(separability_samples, seed=seed, tile_size=tile_size,
                                             size_range=size_range, min_long_side=min_long)
                         if separability_samples > 0 else None),
        "files": {"train": "train.json", "test": "test.json", "images": "images"},
    }
    fsio.atomic_write(meta_path, _json_bytes(meta))
    return BenchmarkInfo(out_dir, meta, regenerated=True)


def _files_of_an_earlier_version(out_dir: Path) -> set[str] | None:
    """The files a generator older than the ownership marker wrote into ``out_dir`` (or ``None``):
    its three JSON files and the images they name."""
    try:
        meta = json.loads((out_dir / "benchmark.json").read_text(encoding="utf-8"))
        if not (isinstance(meta, dict) and "params" in meta and "version" in meta):
            return None
        images = {r["image"] for split in SPLITS for r in read_records(out_dir / f"{split}.json")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return set(JSON_FILES) | images
