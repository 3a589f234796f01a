"""POPE loader (the released COCO files ``coco_pope_{random,popular,adversarial}.json``).

Layout: each file is JSON Lines, one ``{"question_id", "image", "text", "label": "yes"|"no"}`` per
line; ``image`` is a COCO val2014 file name, looked up in ``image_dir`` (default: ``val2014/``
inside the folder if it exists, else the folder itself). Question ids restart in every file, so
the sample id is ``"<split>/<question_id>"``. The splits present are read; at least one must be.

Prompt (LLaVA-1.5): ``<text>\\nAnswer the question using a single word or phrase.``
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.pope import SPLITS, PopeAnnotation, score_pope
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_jsonl, require_dir
from .prompts import short_answer_prompt


def load_pope(path: str | Path, *, image_dir: str | Path | None = None, splits: tuple[str, ...] = SPLITS) -> Benchmark:
    """POPE questions of the ``splits`` whose files exist in the folder ``path``."""
    root = require_dir(Path(path), "pope", "the folder holding coco_pope_<split>.json")
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
    return c.build("pope", root, score_pope)
