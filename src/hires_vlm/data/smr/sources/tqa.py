"""TextbookQA (AI2 ``tqa_train_val_test.zip``) → SMR: diagram questions and diagram descriptions.

Released layout (the zip's ``train/`` folder; ``imagePath`` is relative to it)::

    train/tqa_v1_train.json    [lesson, ...]; lesson = {globalID, lessonName,
        questions: {diagramQuestions: {DQ_id: {beingAsked: {rawText, processedText},
                    answerChoices: {"a": {rawText, processedText, idStructural}, ...},
                    correctAnswer: {processedText: "b", rawText}, imagePath, questionType}},
                    nonDiagramQuestions: {...}},
        instructionalDiagrams: {name: {imagePath, imageName, rawText, processedText}}, ...}
    train/question_images/, train/teaching_images/, ...

SliME uses the diagram questions as VQA and the instructional diagrams' descriptions as answers
to a Table 5 description prompt. Non-diagram questions have no image and are not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..prompts import (
    clean_text,
    describe_prompt,
    letter_index,
    multiple_choice_answer,
    multiple_choice_prompt,
    strip_option_prefix,
)
from ..records import BAD_ANSWER, EMPTY_TEXT, NO_IMAGE, Candidate, Item, Skipped
from ._io import first_existing, guarded, load_json

LAYOUT = (
    "train/tqa_v1_train.json with the images it names under train/ "
    "(question_images/, teaching_images/, ...)"
)


def convert(root: Path) -> Iterator[Item]:
    path = first_existing(
        root,
        (
            "train/tqa_v1_train.json",
            "tqa_v1_train.json",
            "tqa_train_val_test/train/tqa_v1_train.json",
        ),
        what="tqa_v1_train.json",
    )
    return _iterate(path.parent, path)


def _text(field: dict | None) -> str:
    field = field or {}
    return clean_text(field.get("rawText")) or clean_text(field.get("processedText"))


def _iterate(base: Path, path: Path) -> Iterator[Item]:
    for lesson in load_json(path):
        questions = (lesson.get("questions") or {}).get("diagramQuestions") or {}
        for qid, question in questions.items():
            yield guarded(qid, lambda: _question(base, qid, question))
        diagrams = lesson.get("instructionalDiagrams") or {}
        for name, diagram in diagrams.items():
            did = f"desc_{clean_text(diagram.get('globalID')) or name}"
            yield guarded(did, lambda: _description(base, did, diagram))


def _question(base: Path, qid: str, raw: dict) -> Item:
    if not raw.get("imagePath"):
        return Skipped(NO_IMAGE, qid)
    keys = sorted(raw["answerChoices"])
    choices = raw["answerChoices"]
    options = [strip_option_prefix(_text(choices[key]), i) for i, key in enumerate(keys)]
    correct = raw["correctAnswer"]
    index = _answer_index(clean_text(correct.get("processedText")), keys, options)
    if index is None:
        index = _answer_index(clean_text(correct.get("rawText")), keys, options)
    if index is None:
        return Skipped(BAD_ANSWER, qid)
    text = _text(raw["beingAsked"])
    if not text:
        return Skipped(EMPTY_TEXT, qid)
    return Candidate(
        id=qid,
        image=base / raw["imagePath"],
        question=multiple_choice_prompt(text, options),
        answer=multiple_choice_answer(index, options),
    )


def _answer_index(answer: str, keys: list[str], options: list[str]) -> int | None:
    # The released correctAnswer is usually the choice key ("b"); fall back to the option text.
    if answer.lower() in keys:
        return keys.index(answer.lower())
    lowered = [option.casefold() for option in options]
    if answer.casefold() in lowered:
        return lowered.index(answer.casefold())
    return letter_index(answer, len(options)) if len(answer) <= 3 else None


def _description(base: Path, did: str, raw: dict) -> Item:
    if not raw.get("imagePath"):
        return Skipped(NO_IMAGE, did)
    description = _text(raw)
    if not description:
        return Skipped(EMPTY_TEXT, did)
    return Candidate(
        id=did, image=base / raw["imagePath"], question=describe_prompt(did), answer=description
    )
