"""POPE loader (the released COCO files ``coco_pope_{random,popular,adversarial}.json``).

Layout: each file is JSON Lines, one ``{"question_id", "image", "text", "label": "yes"|"no"}`` per
line; ``image`` is a COCO val2014 file name, looked up in ``image_dir`` (default: ``val2014/``
inside the folder if it exists, else the folder itself). Question ids restart in every file, so
the sample id is ``"<split>/<question_id>"``. The splits present are read; at least one must be.

Prompt (LLaVA-1.5): ``<text>\\nAnswer the question using a single word or phrase.``
"""

from __future__ import annotations

import json
from pathlib import Path

from ..scorers.pope import SPLITS, PopeAnnotation, score_pope
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_jsonl, require_dir
from .prompts import short_answer_prompt


LLAVA_QUESTION_FILE = "llava_pope_test.jsonl"


def load_pope(path: str | Path, *, image_dir: str | Path | None = None, splits: tuple[str, ...] = SPLITS,
              question_file: str | Path | None = None) -> Benchmark:
    """POPE questions of the ``splits`` whose files exist in the folder ``path`` (or of the one file ``path``)."""
    path = Path(path)
    if isinstance(splits, str):
        splits = (splits,)
    if path.is_file():
        split = path.name.removeprefix("coco_pope_").removesuffix(".json")
        if not path.name.startswith("coco_pope_") or split not in SPLITS:
            raise BenchmarkDataError(f"pope: {path} is not a coco_pope_<split>.json file (splits {', '.join(SPLITS)})")
        path, splits = path.parent, (split,)
    root = require_dir(path, "pope", "the folder holding coco_pope_<split>.json")
    files = {s: root / f"coco_pope_{s}.json" for s in splits}
    present = {s: f for s, f in files.items() if f.is_file()}
    if not present:
        names = ", ".join(f.name for f in files.values())
        raise BenchmarkDataError(f"pope: expected at least one of {names} in {root}, found none")
    if image_dir:
        images = Path(image_dir)
    else:
        images = root / "val2014" if (root / "val2014").is_dir() else root
    c = Collector()
    for split, file in present.items():
        for rec in read_jsonl(file, "pope", "POPE question lines", c.skipped):
            try:
                qid = need(rec, "question_id", (int, str))
                image = need(rec, "image")
                text = need(rec, "text")
                label = need(rec, "label").strip().lower()
                if label not in ("yes", "no"):
                    raise Malformed("'label' is neither yes nor no")
            except Malformed as err:
                c.skip(str(err))
                continue
            meta = {"split": split, "image": image}
            c.add(
                EvalSample(f"{split}/{qid}", images / image, short_answer_prompt(text), meta),
                PopeAnnotation(label, split),
            )
    qfile = Path(question_file) if question_file else next(
        (p for p in (root / LLAVA_QUESTION_FILE, root.parent / LLAVA_QUESTION_FILE) if p.is_file()), None)
    if question_file and not qfile.is_file():
        raise BenchmarkDataError(f"pope: question_file {qfile} does not exist (LLaVA's {LLAVA_QUESTION_FILE})")

    def align(bench, predictions):
        return align_answers(bench, predictions, qfile)

    return c.build("pope", root, score_pope, align=align)


def align_answers(bench: Benchmark, predictions: dict[str, str], question_file: Path | None) -> dict[str, str]:
    """Answer-file ids → ``<split>/<question_id>`` (see the module docstring); ids already in that
    form, or that cannot be placed, are returned as they are (the scorer then says what is wrong)."""
    if not predictions or all("/" in k for k in predictions):
        return predictions
    order: dict[str, list[str]] = {}
    for sample in bench.samples():
        order.setdefault(sample.meta["split"], []).append(sample.question_id)
    if question_file is not None:
        category = {}
        for line in question_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                category[str(q["question_id"]).strip()] = q.get("category")
        if all(k in category for k in predictions):
            out = {}
            for split, ids in order.items():
                texts = [t for k, t in predictions.items() if category[k] == split]
                out.update(zip(ids, texts))  # eval_pope.py: zip(answers of the category, labels in file order)
            return out
    if len(order) == 1:
        (split,) = order
        return {f"{split}/{k}": t for k, t in predictions.items()}
    return predictions
