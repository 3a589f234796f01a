"""AI2D (AI2 Diagrams, ``ai2d-all.zip``) → SMR: multiple-choice diagram questions.

Released layout (the zip's README lists ``images/``, ``annotations/``, ``questions/``,
``categories.json``; the test split is the separate ``ai2d_test_ids.csv``)::

    questions/<n>.png.json   {imageName: "<n>.png", questions: {"<question text>":
                              {answerTexts: [...], correctAnswer: <int>, abcLabel: <bool>,
                               questionId: "<n>.png-<k>"}}}
    images/<n>.png
    ai2d_test_ids.csv        one test image id per line (optional; test images are excluded)
    abc_images/<n>.png       (optional, not in the release) letter-labelled renderings

``abcLabel`` questions ask about letters that replace the diagram's text labels ("What is A in
the diagram?"). The released images show the original text, so such a question is only kept when
a letter-labelled rendering is supplied in ``abc_images/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import clean_text, multiple_choice_answer, multiple_choice_prompt
from ..records import (
    ABC_IMAGE_UNAVAILABLE,
    BAD_ANSWER,
    EXCLUDED_SPLIT,
    Candidate,
    Item,
    Note,
    Skipped,
)
from ._io import first_existing, guarded, load_json, natural_key

LAYOUT = (
    "questions/*.json, images/, optional ai2d_test_ids.csv (test images excluded) and "
    "abc_images/ (letter-labelled images for abcLabel questions)"
)


def convert(root: Path) -> Iterator[Item]:
    questions_dir = first_existing(root, ("questions", "ai2d/questions"), what="questions/ folder")
    return _iterate(questions_dir.parent, sorted(questions_dir.glob("*.json"), key=natural_key))


def _test_ids(base: Path) -> set[str] | None:
    path = base / "ai2d_test_ids.csv"
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.split(",")[0].strip().removesuffix(".png") for line in lines if line.strip()}


def _iterate(base: Path, files: list[Path]) -> Iterator[Item]:
    test_ids = _test_ids(base)
    if test_ids is None:
        yield Note("ai2d_test_ids.csv not found: AI2D test images are NOT excluded")
    for path in files:
        data = load_json(path)
        image_name = clean_text(data.get("imageName")) or path.name.removesuffix(".json")
        image_id = image_name.removesuffix(".png")
        for text, raw in (data.get("questions") or {}).items():
            qid = clean_text(raw.get("questionId")) if isinstance(raw, dict) else ""
            qid = qid or f"{image_id}-{text}"
            if test_ids is not None and image_id in test_ids:
                yield Skipped(EXCLUDED_SPLIT, qid)
                continue
            yield guarded(qid, lambda: _one(base, qid, image_name, text, raw))


def _one(base: Path, qid: str, image_name: str, text: str, raw: dict) -> Item:
    options = [clean_text(option) for option in raw["answerTexts"]]
    index = raw["correctAnswer"]
    if not isinstance(index, int) or not 0 <= index < len(options):
        return Skipped(BAD_ANSWER, qid)
    image = base / "images" / image_name
    if raw.get("abcLabel"):
        image = base / "abc_images" / image_name
        if not image.exists():
            return Skipped(ABC_IMAGE_UNAVAILABLE, qid)
    return Candidate(
        id=qid,
        image=image,
        question=multiple_choice_prompt(clean_text(text), options),
        answer=multiple_choice_answer(index, options),
    )
