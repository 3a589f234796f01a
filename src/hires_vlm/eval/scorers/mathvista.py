"""MathVista (testmini) without an LLM answer extractor: the deterministic cases only.

MathVista's official pipeline asks GPT-4 to extract the answer from free text, then normalises it
by type. Here the extraction is rule-based:

* ``multi_choice`` (answer is the text of one choice): the answer is read with
  :func:`~hires_vlm.eval.scorers.choice.parse_choice` against the choices; right when the chosen
  choice's text equals the gold text. (The official normaliser falls back to the choice with the
  smallest edit distance; that fallback is not used — an unreadable answer is *unparsed*.)
* ``free_form`` with ``answer_type`` ``integer`` / ``float``: a number is taken from the answer
  (:func:`extract_number`). Integers compare as ``int(float(x))`` (the official truncation);
  floats are rounded to the question's ``precision`` on both sides before comparing.
* ``list``: the numbers of both lists compared in order.
* ``text`` (free form): exact match after stripping whitespace and a trailing period,
  case-insensitive.

Reported: ``accuracy`` overall, per ``question_type/``, ``answer_type/`` and ``task/`` (from the
record's ``metadata.task``), ``n_unparsed`` (no choice / number found) and the usual counts.

Worked examples: gold ``"1.2"`` (float, precision 1): ``"1.23"`` → 1.2 ✓, ``"The answer is 1.2 m"``
✓, ``"between 1 and 2"`` ✗ (two numbers: unparsed); gold ``"1000"`` (integer): ``"1,000 g"`` ✓.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .choice import option_letters, parse_choice
from .common import Lookup, pct, require_annotations, slug


@dataclass(frozen=True)
class MathVistaAnnotation:
    answer: str
    question_type: str  # "multi_choice" | "free_form"
    answer_type: str  # "text" | "integer" | "float" | "list"
    precision: int | None = None
    choices: tuple[str, ...] | None = None
    task: str | None = None


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(r"(?<![\w.])" + _NUMBER)  # "12cm" gives 12, "H2O" gives nothing
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_STATED = re.compile(r"(?i)(?:answer\s*(?:is|:)|=)\s*\**\s*(" + _NUMBER + r")")


def extract_number(text: str) -> float | None:
    """The one number an answer gives, or ``None``.

    Rules, first match wins: the whole answer (trailing period removed) is a number; the last
    number after ``answer is`` / ``answer:`` / ``=``; the only number in the text. Thousands
    separators (``1,000``) are removed first.

    >>> [extract_number(t) for t in ["12", "1,000 g", "The answer is 3.5.", "x = 4", "1 or 2", "none"]]
    [12.0, 1000.0, 3.5, 4.0, None, None]
    """
    t = _THOUSANDS.sub("", str(text)).strip()
    core = t.rstrip(".").strip()
    try:
        return float(core)
    except ValueError:
        pass
    stated = _STATED.findall(t)
    if stated:
        return float(stated[-1].rstrip("."))
    found = _NUMBER_RE.findall(t)
    if len(found) == 1:
        return float(found[0].rstrip("."))
    return None


def _numbers(text: str) -> list[float]:
    return [float(x.rstrip(".")) for x in _NUMBER_RE.findall(_THOUSANDS.sub("", str(text)))]


def _text_norm(text: str) -> str:
    return str(text).strip().rstrip(".").strip().lower()


def mathvista_correct(prediction: str, ann: MathVistaAnnotation) -> bool | None:
    """True / False, or ``None`` when no answer could be read (counted as wrong and unparsed)."""
    if ann.question_type == "multi_choice" and ann.choices:
        letter = parse_choice(prediction, ann.choices)
        if letter is None:
            return None
        return str(ann.choices[option_letters(len(ann.choices)).index(letter)]).strip() == str(ann.answer).strip()
    if ann.answer_type in ("integer", "float"):
        value = extract_number(prediction)
        if value is None:
            return None
        gold = float(ann.answer)
        if ann.answer_type == "integer":
            return int(value) == int(gold)
        digits = int(ann.precision) if ann.precision is not None else 2
        return round(value, digits) == round(gold, digits)
    if ann.answer_type == "list":
        pred, gold = _numbers(prediction), _numbers(ann.answer)
        if not pred:
            return None
        return pred == gold if gold else _text_norm(prediction) == _text_norm(ann.answer)
    if not str(prediction).strip():
        return None
    return _text_norm(prediction) == _text_norm(ann.answer)


def score_mathvista(predictions: Mapping[Any, Any], annotations: Mapping[Any, MathVistaAnnotation]) -> dict:
    """MathVista accuracy (%).

    >>> anns = {"1": MathVistaAnnotation("1.2", "free_form", "float", 1),
    ...         "2": MathVistaAnnotation("dog", "multi_choice", "text", choices=("cat", "dog"))}
    >>> m = score_mathvista({"1": "1.23", "2": "(B) dog"}, anns)
    >>> m["accuracy"], m["n_unparsed"]
    (100.0, 0)
    """
    anns = require_annotations(annotations, "mathvista")
    look = Lookup(predictions, anns)
    hits = unparsed = 0
    buckets: dict[str, list[int]] = {}
    for qid, ann in anns.items():
        ok = mathvista_correct(look.get(qid), ann)
        unparsed += ok is None and look.answered(qid)
        hit = int(bool(ok))
        hits += hit
        for key in (f"question_type/{slug(ann.question_type)}", f"answer_type/{slug(ann.answer_type)}") + (
            (f"task/{slug(ann.task)}",) if ann.task else ()
        ):
            buckets.setdefault(key, []).append(hit)
    metrics: dict[str, Any] = {"accuracy": pct(hits, len(anns))}
    for key in sorted(buckets):
        metrics[f"{key}/accuracy"] = pct(sum(buckets[key]), len(buckets[key]))
    metrics.update(n=len(anns), n_unparsed=unparsed, **look.counts())
    return metrics
