"""MathVista loader (the released ``testmini.json`` layout).

Layout: a JSON object ``{pid: {question, image: "images/<pid>.jpg", choices: [..] | null, unit,
precision, answer, question_type: "multi_choice" | "free_form", answer_type: "text" | "integer" |
"float" | "list", metadata: {task, …}}}`` (a list of such records with a ``pid`` field is also
read); images are relative to the JSON's folder.

Prompt (lmms-eval's ``format-prompt`` style, suited to rule-based scoring): the question (with
``" (Unit: u)"`` when there is a unit), the lettered choices, and an answer-format line:
the option letter; a single integer; a floating-point number with one/two decimal places; or a
Python list.
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.choice import format_options
from ..scorers.mathvista import MathVistaAnnotation, score_mathvista
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_json, resolve_file
from .prompts import OPTION_LETTER

FILES = ("testmini.json", "test.json")
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("text", "integer", "float", "list")


def answer_instruction(question_type: str, answer_type: str, precision: int | None) -> str:
    if question_type == "multi_choice":
        return OPTION_LETTER
    if answer_type == "integer":
        return "Answer the question using a single integer number."
    if answer_type == "float" and precision == 1:
        return "Answer the question using a single floating-point number with one decimal place."
    if answer_type == "float" and precision == 2:
        return "Answer the question using a single floating-point number with two decimal places."
    if answer_type == "float":
        return "Answer the question using a single floating-point number."
    if answer_type == "list":
        return "Answer the question using a Python list."
    return "Answer the question using a single word or phrase."


def _record(rec: dict) -> tuple[str, MathVistaAnnotation | None, str, str, str]:
    question = need(rec, "question")
    image = need(rec, "image")
    qtype = need(rec, "question_type")
    atype = need(rec, "answer_type")
    if qtype not in QUESTION_TYPES or atype not in ANSWER_TYPES:
        raise Malformed("unknown question_type or answer_type")
    precision = rec.get("precision")
    try:
        precision = int(precision) if precision is not None else None
    except (TypeError, ValueError) as err:
        raise Malformed("'precision' is not a number") from err
    choices = rec.get("choices")
    if qtype == "multi_choice" and (not isinstance(choices, list) or len(choices) < 2):
        raise Malformed("a multi_choice question without choices")
    choices = tuple(str(x) for x in choices) if isinstance(choices, list) and choices else None
    answer = rec.get("answer")  # absent from the test split: a sample without annotation
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise Malformed("'answer' has the wrong type")
    if answer is not None and atype in ("integer", "float"):
        try:
            float(answer)
        except ValueError as err:
            raise Malformed("numeric answer is not a number") from err
    metadata = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    ann = (
        MathVistaAnnotation(str(answer), qtype, atype, precision, choices, metadata.get("task"))
        if answer is not None
        else None
    )
    text = question.strip()
    if rec.get("unit"):
        text += f" (Unit: {rec['unit']})"
    if choices and qtype == "multi_choice":
        text += "\n" + format_options(choices)
    text += "\n" + answer_instruction(qtype, atype, precision)
    return image, ann, text, qtype, atype


def load_mathvista(path: str | Path) -> Benchmark:
    """MathVista. ``path``: testmini.json (or test.json) or its folder."""
    file = resolve_file(path, FILES, "mathvista", "the MathVista problems JSON")
    data = read_json(file, "mathvista", "an object pid → problem")
    if isinstance(data, list):
        data = {str(r.get("pid", i)) if isinstance(r, dict) else str(i): r for i, r in enumerate(data)}
    if not isinstance(data, dict):
        raise BenchmarkDataError(f"mathvista: {file} is neither an object nor a list of problems")
    root = file.parent
    c = Collector()
    for pid, rec in data.items():
        try:
            image, ann, prompt, qtype, atype = _record(rec)
        except Malformed as err:
            c.skip(str(err))
            continue
        metadata = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
        meta = {"question_type": qtype, "answer_type": atype, **metadata}
        c.add(EvalSample(str(pid), root / image, prompt, meta), ann)
    return c.build("mathvista", root, score_mathvista)
