"""TabMWP (lupantech/PromptPG ``data/tabmwp/``) → SMR: table math word problems with solutions.

Released layout (the repo's ``run_gpt3/`` reads ``problems_<split>.json`` and builds prompts from
``question``, ``unit``, ``choices``, ``table``, ``table_title``, ``answer``, ``solution``)::

    problems_train.json    {pid: {question, choices (list|null), answer, unit, table,
                                  table_title, solution, ques_type, ...}}
    tables/<pid>.png       the table rendered as an image (the visual context)

The table is given as the image only (its text form is not put in the prompt). A
multi-choice answer is the text of one of ``choices``; the solution is the reasoning path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import (
    clean_text,
    free_form_answer,
    multiple_choice_answer,
    multiple_choice_prompt,
    short_answer_prompt,
)
from ..records import BAD_ANSWER, EMPTY_TEXT, Candidate, Item, Skipped
from ._io import first_existing, guarded, load_json

LAYOUT = "problems_train.json, tables/<pid>.png (also accepted under data/tabmwp/)"


def convert(root: Path) -> Iterator[Item]:
    path = first_existing(
        root, ("problems_train.json", "data/tabmwp/problems_train.json"), what="problems_train.json"
    )
    return _iterate(path.parent, path)


def _iterate(base: Path, path: Path) -> Iterator[Item]:
    for pid, problem in load_json(path).items():
        yield guarded(str(pid), lambda: _one(base, str(pid), problem))


def _one(base: Path, pid: str, problem: dict) -> Item:
    question, answer = clean_text(problem["question"]), clean_text(problem["answer"])
    if not question or not answer:
        return Skipped(EMPTY_TEXT, pid)
    unit = clean_text(problem.get("unit"))
    if unit:
        question = f"{question} (Unit: {unit})"
    solution = clean_text(problem.get("solution"))
    choices = [clean_text(choice) for choice in problem.get("choices") or []]
    if choices:
        if answer not in choices:
            return Skipped(BAD_ANSWER, pid)
        prompt = multiple_choice_prompt(question, choices)
        text = multiple_choice_answer(choices.index(answer), choices, reasoning=solution)
    else:
        prompt = question if solution else short_answer_prompt(question)
        text = free_form_answer(answer, reasoning=solution)
    return Candidate(id=pid, image=base / "tables" / f"{pid}.png", question=prompt, answer=text)
