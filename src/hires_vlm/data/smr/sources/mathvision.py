"""MATH-Vision (mathllm/MATH-V, formerly mathvision-cuhk/MathVision) → SMR, test-mini held out.

Released layout (repo ``data/`` and ``images/``; a ``testmini.jsonl`` row reads
``{"id": "4", "question": "How many different digits ...?\\n<image1>", "options": [],
"answer": "6", "solution": null, "level": 1, "subject": "counting", "image": "images/4.jpg"}``)::

    data/test.jsonl        all 3,040 problems
    data/testmini.jsonl    the 304-problem test-mini subset (required: it defines the exclusion)
    images/<id>.jpg

SliME trains on MATH-Vision without test-mini ("Our data will not include the images from
test-mini split"), so every id listed in ``testmini.jsonl`` is skipped. ``<imageN>`` markers in
the question are removed (the whole figure is the one image). When the options are only the
letters ``A``-``E`` (the choices are drawn in the figure) the answer is the letter alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..prompts import (
    clean_text,
    free_form_answer,
    letter_index,
    multiple_choice_answer,
    multiple_choice_prompt,
    short_answer_prompt,
    tidy_lines,
)
from ..records import (
    BAD_ANSWER,
    EMPTY_TEXT,
    MATHVISION_TESTMINI,
    Candidate,
    Item,
    Skipped,
    SourceLayoutError,
)
from ._io import first_existing, guarded, iter_jsonl

LAYOUT = "data/test.jsonl and data/testmini.jsonl (or both at the top), images/<id>.jpg"

_IMAGE_MARKER = re.compile(r"<image\d*>")


def convert(root: Path) -> Iterator[Item]:
    test = first_existing(root, ("data/test.jsonl", "test.jsonl"), what="test.jsonl")
    testmini = first_existing(
        test.parent, ("testmini.jsonl",), what="testmini.jsonl (needed to hold test-mini out)"
    )
    held_out = {clean_text(row.get("id")) for row in iter_jsonl(testmini)}
    if not held_out or "" in held_out:
        raise SourceLayoutError(f"{testmini}: every row needs an id")
    return _iterate(root, test, held_out)


def _iterate(root: Path, test: Path, held_out: set[str]) -> Iterator[Item]:
    for index, row in enumerate(iter_jsonl(test)):
        rid = clean_text(row.get("id")) or f"row_{index}"
        if rid in held_out:
            yield Skipped(MATHVISION_TESTMINI, rid)
            continue
        yield guarded(rid, lambda: _one(root, rid, row))


def _one(root: Path, rid: str, row: dict) -> Item:
    question = tidy_lines(_IMAGE_MARKER.sub(" ", clean_text(row["question"])))
    answer = clean_text(row["answer"])
    if not question or not answer:
        return Skipped(EMPTY_TEXT, rid)
    solution = clean_text(row.get("solution"))
    options = [clean_text(option) for option in row.get("options") or []]
    if options:
        index = letter_index(answer, len(options))
        if index is None:
            return Skipped(BAD_ANSWER, rid)
        prompt = multiple_choice_prompt(question, options)
        text = multiple_choice_answer(index, options, reasoning=solution)
    else:
        prompt = question if solution else short_answer_prompt(question)
        text = free_form_answer(answer, reasoning=solution)
    return Candidate(id=rid, image=root / row["image"], question=prompt, answer=text)
