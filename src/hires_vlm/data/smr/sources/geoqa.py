"""GeoQA3 (chen-judge/GeoQA) and GeoQA+ (SCNU203/GeoQA-Plus) → SMR: geometry multiple choice.

Both releases are a ``data.zip`` holding the problems twice: as per-problem JSON files with a
PNG diagram each, and as pickled split files (``train.pk`` / ``dev.pk`` / ``test.pk``; GeoQA+:
``GeoQA-train.pk``, ``Mix-train.pk``, ``new-test.pk``) that the official code loads with
``pickle.load``. Pickles are never unpickled here (loading one runs arbitrary code), so only the
JSON form is read::

    GeoQA3/json/<id>.json + GeoQA3/image/<id>.png          (SliME's tree: GeoQA3/{image,json})
    GeoQA+/json-image_files/<id>.json + <id>.png           (GeoQA+ README: "json-image_files
                                                            contains all original problems")
    split_ids.json   optional, {"train": [id, ...]}: restricts to training problems

A problem JSON has ``subject`` (the question, Chinese in the release), ``choices`` (four
values), ``label`` (index of the answer; a letter is accepted too) and ``id``; the annotated
``manual_program`` is solver-program tokens, not prose, so it is not used. A worked
explanation is used as the reasoning path when the file has one (``comment`` or
``explanation``). Because the official split lives only in the pickles, a folder without
``split_ids.json`` contributes every problem, test ones included; the report notes it.
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
    Note,
    Skipped,
    SourceLayoutError,
)
from ._io import guarded, load_json, natural_key

LAYOUT_GEOQA3 = "json/<id>.json + image/<id>.png (optional split_ids.json); *.pk never read"
LAYOUT_GEOQA_PLUS = (
    "json-image_files/<id>.json + <id>.png, or json/ + image/ (optional split_ids.json); "
    "*.pk never read"
)

_JSON_DIRS = ("json", "json-image_files", "GeoQA3/json", "GeoQA+/json-image_files", ".")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def convert(root: Path) -> Iterator[Item]:
    for name in _JSON_DIRS:
        folder = (root / name) if name != "." else root
        files = sorted(
            (p for p in folder.glob("*.json") if p.name != "split_ids.json"), key=natural_key
        )
        if files:
            return _iterate(root, folder, files, _train_ids(root, folder))
    raise SourceLayoutError(
        f"{root}: no problem JSON files (looked in {', '.join(_JSON_DIRS)}); "
        "pickled splits (*.pk) are not read"
    )


def _train_ids(root: Path, folder: Path) -> set[str] | None:
    for path in (root / "split_ids.json", folder / "split_ids.json"):
        if path.exists():
            splits = load_json(path)
            if not isinstance(splits, dict) or not isinstance(splits.get("train"), list):
                raise SourceLayoutError(f"{path}: expected {{\"train\": [id, ...]}}")
            return {str(i) for i in splits["train"]}
    return None


def _iterate(
    root: Path, folder: Path, files: list[Path], train: set[str] | None
) -> Iterator[Item]:
    if train is None:
        yield Note(
            "no split_ids.json: the official split ships only as pickles (not read), "
            "so every problem is used, test ones included"
        )
    for path in files:
        pid = path.stem
        if train is not None and pid not in train:
            yield Skipped(EXCLUDED_SPLIT, pid)
            continue
        yield guarded(pid, lambda: _one(root, folder, pid, load_json(path)))


def _image(root: Path, folder: Path, pid: str) -> Path:
    dirs = (folder.parent / "image", root / "image", folder)
    candidates = [d / f"{pid}{suffix}" for d in dirs for suffix in _IMAGE_SUFFIXES]
    return next((path for path in candidates if path.exists()), candidates[0])


def _one(root: Path, folder: Path, pid: str, raw: dict) -> Item:
    question = clean_text(raw["subject"])
    options = [clean_text(choice) for choice in raw["choices"]]
    if not question or not options:
        return Skipped(EMPTY_TEXT, pid)
    label = raw["label"]
    index = label if isinstance(label, int) else letter_index(label, len(options))
    if index is None or not 0 <= index < len(options):
        return Skipped(BAD_ANSWER, pid)
    reasoning = clean_text(raw.get("comment")) or clean_text(raw.get("explanation"))
    return Candidate(
        id=pid,
        image=_image(root, folder, pid),
        question=multiple_choice_prompt(question, options),
        answer=multiple_choice_answer(index, options, reasoning=reasoning),
    )
