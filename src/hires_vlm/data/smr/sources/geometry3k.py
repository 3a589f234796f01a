"""Geometry3K (lupantech/InterGPS ``data/geometry3k``) → SMR: SAT-style geometry multiple choice.

Released layout (``train.zip`` / ``val.zip`` / ``test.zip`` from the InterGPS site)::

    train/<id>/data.json        {id, problem_text, choices: [4], answer: "A".."D",
                                 problem_type_graph, problem_type_goal, data_type, ...}
    train/<id>/img_diagram.png
    train/<id>/logic_form.json  {text_logic_form, diagram_logic_form, line_instances,
                                 point_positions, circle_instances, ...}
    val/<id>/..., test/<id>/...

SliME's tree flattens this to ``Geometry3K/<id>/`` for ids 0-2400 (train 0-2100 and val
2101-2400); both layouts are read. ``data_type`` (else the split folder) decides the split:
test problems are skipped. Geometry3K has no worked solutions; its formal diagram annotation
(``diagram_logic_form``, "dense descriptions in formal language" in the SliME paper) is written
before the answer as what the diagram shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import clean_text, letter_index, multiple_choice_answer, multiple_choice_prompt
from ..records import (
    BAD_ANSWER,
    EMPTY_TEXT,
    EXCLUDED_SPLIT,
    Candidate,
    Item,
    Skipped,
    SourceLayoutError,
)
from ._io import guarded, load_json, natural_key

LAYOUT = "{train,val}/<id>/data.json + img_diagram.png (+ logic_form.json); or <id>/... directly"

_TRAIN_SPLITS = ("train", "val")


def convert(root: Path) -> Iterator[Item]:
    files = sorted(root.glob("*/data.json"), key=lambda p: natural_key(p.parent))
    for split in ("train", "val", "test"):
        files += sorted((root / split).glob("*/data.json"), key=lambda p: natural_key(p.parent))
    if not files:
        raise SourceLayoutError(f"{root}: no <id>/data.json under train/, val/ or the folder")
    return _iterate(root, files)


def _iterate(root: Path, files: list[Path]) -> Iterator[Item]:
    for path in files:
        folder = path.parent
        split_dir = folder.parent.name if folder.parent != root else ""
        rid = folder.name  # InterGPS ids are global: train 0-2100, val 2101-2400, test 2401+
        yield guarded(rid, lambda: _one(rid, folder, split_dir, load_json(path)))


def _one(rid: str, folder: Path, split_dir: str, raw: dict) -> Item:
    split = clean_text(raw.get("data_type")) or split_dir or "train"
    if split not in _TRAIN_SPLITS:
        return Skipped(EXCLUDED_SPLIT, rid)
    question = clean_text(raw["problem_text"])
    options = [clean_text(choice) for choice in raw["choices"]]
    if not question or not options:
        return Skipped(EMPTY_TEXT, rid)
    index = letter_index(raw["answer"], len(options))
    if index is None:
        return Skipped(BAD_ANSWER, rid)
    return Candidate(
        id=rid,
        image=folder / "img_diagram.png",
        question=multiple_choice_prompt(question, options),
        answer=multiple_choice_answer(index, options, reasoning=_diagram_facts(folder)),
    )


def _diagram_facts(folder: Path) -> str:
    path = folder / "logic_form.json"
    if not path.exists():
        return ""
    forms = [clean_text(form) for form in load_json(path).get("diagram_logic_form") or []]
    forms = [form for form in forms if form]
    return f"The diagram shows: {'; '.join(forms)}." if forms else ""
