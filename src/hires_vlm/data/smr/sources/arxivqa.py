"""ArxivQA (HF dataset MMInstruction/ArxivQA) → SMR: figure questions answered with a rationale.

Released layout (dataset repo files ``arxivqa.jsonl`` and ``images.tgz``; a row reads
``{"id": ..., "image": "images/1810.10511_0.jpg", "question": ..., "options": ["A. ...",
"B. ..."], "label": "A", "rationale": ...}``)::

    arxivqa.jsonl
    images/<paper>_<k>.jpg     (images.tgz unpacked in place)

"For ArxivQA, we utilize rationales as answers" (SliME appendix B): the rationale is the
reasoning path before the lettered answer. The release's own ``A.`` prefixes are replaced by
ours; ``label`` may be ``"A"``, ``"(A)"`` or ``"A. text"``, or the option text itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import (
    clean_text,
    letter_index,
    multiple_choice_answer,
    multiple_choice_prompt,
    strip_option_prefix,
)
from ..records import BAD_ANSWER, EMPTY_TEXT, NO_IMAGE, Candidate, Item, Skipped
from ._io import first_existing, guarded, iter_jsonl

LAYOUT = "arxivqa.jsonl, images/ (images.tgz unpacked)"


def convert(root: Path) -> Iterator[Item]:
    path = first_existing(root, ("arxivqa.jsonl",), what="arxivqa.jsonl")
    return _iterate(root, path)


def _iterate(root: Path, path: Path) -> Iterator[Item]:
    for index, row in enumerate(iter_jsonl(path)):
        rid = clean_text(row.get("id")) or f"row_{index}"
        yield guarded(rid, lambda: _one(root, rid, row))


def _one(root: Path, rid: str, row: dict) -> Item:
    if not row.get("image"):
        return Skipped(NO_IMAGE, rid)
    question = clean_text(row["question"])
    options = [strip_option_prefix(clean_text(o), i) for i, o in enumerate(row["options"])]
    if not question or not options:
        return Skipped(EMPTY_TEXT, rid)
    index = _answer_index(clean_text(row["label"]), options)
    if index is None:
        return Skipped(BAD_ANSWER, rid)
    return Candidate(
        id=rid,
        image=root / row["image"],
        question=multiple_choice_prompt(question, options),
        answer=multiple_choice_answer(index, options, reasoning=clean_text(row.get("rationale"))),
    )


def _answer_index(label: str, options: list[str]) -> int | None:
    lowered = [option.casefold() for option in options]
    if label.casefold() in lowered:  # the label is the option text itself
        return lowered.index(label.casefold())
    return letter_index(label, len(options))
