"""AI2D loader: the released AI2D folder, or VLMEvalKit's ``AI2D_TEST.tsv``.

Released layout (``ai2d/``): ``questions/<image>.json`` = ``{"imageName": "0.png", "questions":
{"<question text>": {"answerTexts": [..], "correctAnswer": int, "questionId": "0.png-0",
"abcLabel": bool}}}``, ``images/<image>``, and the test split list ``ai2d_test_ids.csv`` (one image
id per line, ``123`` or ``123.png``; looked for in the folder and its parent). With
``split="test"`` (default) the list is required; ``split="all"`` reads every question.

Prompt: ``<question>\\nA. …\\nAnswer with the option's letter from the given choices directly.``
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..scorers.choice import LETTERS, ChoiceAnnotation, score_ai2d
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample
from .prompts import multiple_choice_prompt
from .tsv import load_tsv_mcq

TEST_IDS = "ai2d_test_ids.csv"


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _test_ids(root: Path) -> set[str]:
    for where in (root / TEST_IDS, root.parent / TEST_IDS):
        if where.is_file():
            ids = set()
            for line in where.read_text(encoding="utf-8").splitlines():
                token = line.split(",")[0].strip()
                if token:
                    ids.add(token[: -len(".png")] if token.endswith(".png") else token)
            return ids
    raise BenchmarkDataError(
        f"ai2d: the test split list {TEST_IDS} is in neither {root} nor {root.parent}; "
        "put it there or pass split='all'"
    )


def _load_released(root: Path, split: str) -> Benchmark:
    qdir = root / "questions"
    if not qdir.is_dir():
        raise BenchmarkDataError(f"ai2d: expected the folder questions/ (one JSON per image) in {root}")
    keep = _test_ids(root) if split == "test" else None
    c = Collector()
    for qfile in sorted(qdir.glob("*.json"), key=_natural_key):
        try:
            data = json.loads(qfile.read_text(encoding="utf-8"))
            image_name = need(data, "imageName")
            questions = need(data, "questions", dict)
        except (json.JSONDecodeError, UnicodeDecodeError):
            c.skip("question file is not valid JSON")
            continue
        except Malformed as err:
            c.skip(str(err))
            continue
        stem = image_name.rsplit(".", 1)[0]
        if keep is not None and stem not in keep:
            continue
        for text, q in questions.items():
            try:
                choices = need(q, "answerTexts", list)
                answer = need(q, "correctAnswer", int)
                qid = need(q, "questionId")
                if not 2 <= len(choices) <= len(LETTERS) or not 0 <= answer < len(choices):
                    raise Malformed("'correctAnswer' is not an index into 'answerTexts'")
            except Malformed as err:
                c.skip(str(err))
                continue
            options = tuple(str(x) for x in choices)
            meta = {"image_name": image_name, "abc_label": q.get("abcLabel")}
            c.add(
                EvalSample(qid, root / "images" / image_name, multiple_choice_prompt(text, options), meta),
                ChoiceAnnotation(options, LETTERS[answer]),
            )
    return c.build("ai2d", root, score_ai2d)


def load_ai2d(path: str | Path, *, split: str = "test") -> Benchmark:
    """AI2D. ``path``: the released ``ai2d/`` folder, or a ``.tsv`` file (VLMEvalKit layout)."""
    path = Path(path)
    if split not in ("test", "all"):
        raise ValueError(f"ai2d: split must be 'test' or 'all', got {split!r}")
    if path.is_file() or (path.is_dir() and not (path / "questions").is_dir() and any(path.glob("*.tsv"))):
        return load_tsv_mcq(path, "ai2d", score_ai2d, file_hint="AI2D_TEST.tsv (VLMEvalKit layout)")
    if not path.is_dir():
        raise BenchmarkDataError(f"ai2d: {path} does not exist; expected the ai2d/ folder or AI2D_TEST.tsv")
    return _load_released(path, split)
