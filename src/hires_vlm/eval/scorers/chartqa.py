"""ChartQA relaxed accuracy.

The official rule (ChartQA paper §5.1 after Methani et al.; pix2struct's ``relaxed_correctness``):
if both the answer and the gold parse as numbers, the answer is right when
``|pred − gold| / |gold| ≤ 5 %``; otherwise it must equal the gold string (case-insensitive).
A trailing ``%`` turns a number into a fraction (``"40%"`` → 0.4) on either side, so ``"40%"``
matches ``"40%"`` and ``"0.4"`` but **not** ``"40"``. A gold value of 0 is falsy in the reference
code and therefore needs an exact string match. Number parsing is Python's ``float`` (so ``"1,000"``
is not a number and ``"1e3"`` is). Only surrounding whitespace of the answer is removed.

Reported: ``accuracy`` over all questions, and per split (``human/``, ``augmented/``) when the
annotations carry it, plus ``mean/accuracy`` = the unweighted mean of the two splits (the number
papers quote; both official test splits have 1,250 questions, so it equals ``accuracy`` there).

Worked examples: gold ``"12"``: ``"12.5"`` ✓ (4.2 %), ``"12.7"`` ✗ (5.8 %), ``"12%"`` ✗ (0.12);
gold ``"Yes"``: ``"yes"`` ✓, ``"yes."`` ✗.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations

MAX_RELATIVE_CHANGE = 0.05


@dataclass(frozen=True)
class ChartQAAnnotation:
    answer: str
    split: str | None = None  # "human" / "augmented"


def _to_number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    """ChartQA's relaxed correctness of one answer.

    >>> relaxed_correct("12.5", "12"), relaxed_correct("12.7", "12"), relaxed_correct("Yes", "yes")
    (True, False, True)
    """
    prediction, target = str(prediction).strip(), str(target).strip()
    p, t = _to_number(prediction), _to_number(target)
    if p is not None and t:  # t == 0 falls through to the string comparison, as in the reference
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def score_chartqa(predictions: Mapping[Any, Any], annotations: Mapping[Any, ChartQAAnnotation]) -> dict:
    """Relaxed accuracy (%).

    >>> anns = {"h0": ChartQAAnnotation("12", "human"), "a0": ChartQAAnnotation("Yes", "augmented")}
    >>> m = score_chartqa({"h0": "12.5", "a0": "No"}, anns)
    >>> m["accuracy"], m["human/accuracy"], m["augmented/accuracy"], m["mean/accuracy"]
    (50.0, 100.0, 0.0, 50.0)
    """
    anns = require_annotations(annotations, "chartqa")
    look = Lookup(predictions, anns)
    hits = 0
    by_split: dict[str, list[int]] = {}
    for qid, ann in anns.items():
        hit = int(relaxed_correct(look.get(qid), ann.answer))
        hits += hit
        if ann.split:
            by_split.setdefault(ann.split, []).append(hit)
    metrics: dict[str, Any] = {"accuracy": pct(hits, len(anns))}
    if by_split:
        split_acc = {s: pct(sum(v), len(v)) for s, v in sorted(by_split.items())}
        metrics["mean/accuracy"] = sum(split_acc.values()) / len(split_acc)
        for s, acc in split_acc.items():
            metrics[f"{s}/accuracy"] = acc
            metrics[f"{s}/n"] = len(by_split[s])
    metrics.update(n=len(anns), **look.counts())
    return metrics
