"""ScienceQA (lupantech/ScienceQA) → SMR: multiple choice with lecture and solution as reasoning.

Released layout (``data/scienceqa/`` of the repo, images from ``tools/download.sh``)::

    problems.json      {pid: {question, choices, answer (int), hint, image ("image.png"|null),
                              lecture, solution, split, ...}}
    pid_splits.json    {"train": [pid, ...], "val": [...], "test": [...], ...}   (optional)
    images/<split>/<pid>/image.png        (or <split>/<pid>/image.png, as SliME's tree has it)

Only training problems with an image are kept; ScienceQA-IMG test is an evaluation benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import clean_text, join_reasoning, multiple_choice_answer, multiple_choice_prompt
from ..records import (
    BAD_ANSWER,
    EXCLUDED_SPLIT,
    NO_IMAGE,
    Candidate,
    Item,
    Skipped,
    SourceLayoutError,
)
from ._io import first_existing, guarded, load_json

LAYOUT = (
    "problems.json (+ optional pid_splits.json), images/<split>/<pid>/image.png "
    "(also accepted: data/scienceqa/problems.json, <split>/<pid>/image.png)"
)


def convert(root: Path) -> Iterator[Item]:
    problems_path = first_existing(
        root, ("problems.json", "data/scienceqa/problems.json"), what="problems.json"
    )
    base = problems_path.parent
    splits_path = base / "pid_splits.json"
    train = None
    if splits_path.exists():
        splits = load_json(splits_path)
        if not isinstance(splits, dict) or "train" not in splits:
            raise SourceLayoutError(f"{splits_path}: no 'train' list")
        train = set(map(str, splits["train"]))
    return _iterate(base, problems_path, train)


def _iterate(base: Path, problems_path: Path, train: set[str] | None) -> Iterator[Item]:
    for pid, problem in load_json(problems_path).items():
        yield guarded(pid, lambda: _one(base, str(pid), problem, train))


def _one(base: Path, pid: str, problem: dict, train: set[str] | None) -> Item:
    split = clean_text(problem.get("split"))
    is_train = pid in train if train is not None else split == "train"
    if not is_train:
        return Skipped(EXCLUDED_SPLIT, pid)
    image_name = problem.get("image")
    if not image_name:
        return Skipped(NO_IMAGE, pid)
    choices = [clean_text(choice) for choice in problem["choices"]]
    answer = problem["answer"]
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        return Skipped(BAD_ANSWER, pid)
    question = multiple_choice_prompt(
        clean_text(problem["question"]), choices, context=clean_text(problem.get("hint"))
    )
    reasoning = join_reasoning(problem.get("lecture"), problem.get("solution"))
    return Candidate(
        id=pid,
        image=_image_path(base, split or "train", pid, image_name),
        question=question,
        answer=multiple_choice_answer(answer, choices, reasoning=reasoning),
    )


def _image_path(base: Path, split: str, pid: str, name: str) -> Path:
    candidates = (base / "images" / split / pid / name, base / split / pid / name)
    return next((path for path in candidates if path.exists()), candidates[0])
