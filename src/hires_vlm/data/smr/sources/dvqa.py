"""DVQA (kushalkafle/DVQA_dataset) → SMR: bar-chart reasoning questions.

Released layout (``qa/`` and ``images/`` from the dataset's download links)::

    qa/train_qa.json    [{question, question_id, template_id: "reasoning"|"data"|"structure",
                          answer, image: "bar_train_00000000.png", answer_bbox}, ...]
    images/<image>

SliME "randomly selected 100K data from the reasoning splits": only ``template_id ==
"reasoning"`` is kept here, and the builder's per-source cap (default 100 000 for DVQA, seeded)
does the random selection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import clean_text, short_answer_prompt
from ..records import EMPTY_TEXT, NOT_REASONING, Candidate, Item, Skipped
from ._io import first_existing, guarded, load_json

LAYOUT = "qa/train_qa.json, images/"

DEFAULT_LIMIT = 100_000


def convert(root: Path) -> Iterator[Item]:
    path = first_existing(root, ("qa/train_qa.json",), what="qa/train_qa.json")
    return _iterate(root, path)


def _iterate(root: Path, path: Path) -> Iterator[Item]:
    for index, row in enumerate(load_json(path)):
        rid = clean_text(row.get("question_id")) if isinstance(row, dict) else ""
        rid = rid or f"row_{index}"
        yield guarded(rid, lambda: _one(root, rid, row))


def _one(root: Path, rid: str, row: dict) -> Item:
    if row["template_id"] != "reasoning":
        return Skipped(NOT_REASONING, rid)
    question, answer = clean_text(row["question"]), clean_text(row["answer"])
    if not question or not answer:
        return Skipped(EMPTY_TEXT, rid)
    return Candidate(
        id=rid,
        image=root / "images" / row["image"],
        question=short_answer_prompt(question),
        answer=answer,
    )
