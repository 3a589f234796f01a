"""ChartQA (vis-nlp/ChartQA, ``ChartQA Dataset/``) → SMR: human-written chart questions.

Released layout (repo README: each split folder has ``png/``, ``tables/``, ``<split>_human.json``
and ``<split>_augmented.json``; ``test/test_human.json`` rows read
``{"imgname": "41699051005347.png", "query": "...", "label": "14"}``)::

    train/train_human.json    [{imgname, query, label}, ...]
    train/png/<imgname>

SliME keeps only the human-authored pairs (ChartQA-H); the machine-generated
``train_augmented.json`` is not read. Only the train split is used: the paper's 9.6K equals
human train + val + test, but ChartQA test is one of SliME's evaluation benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import clean_text, short_answer_prompt
from ..records import EMPTY_TEXT, Candidate, Item, Skipped
from ._io import first_existing, guarded, load_json

LAYOUT = "train/train_human.json, train/png/ (also accepted: ChartQA Dataset/train/...)"


def convert(root: Path) -> Iterator[Item]:
    path = first_existing(
        root,
        ("train/train_human.json", "ChartQA Dataset/train/train_human.json"),
        what="train_human.json",
    )
    return _iterate(path.parent, path)


def _iterate(split_dir: Path, path: Path) -> Iterator[Item]:
    for index, row in enumerate(load_json(path)):
        rid = f"train_human_{index}"
        yield guarded(rid, lambda: _one(split_dir, rid, row))


def _one(split_dir: Path, rid: str, row: dict) -> Item:
    query, label = clean_text(row["query"]), clean_text(row["label"])
    if not query or not label:
        return Skipped(EMPTY_TEXT, rid)
    return Candidate(
        id=rid,
        image=split_dir / "png" / row["imgname"],
        question=short_answer_prompt(query),
        answer=label,
    )
