"""POPE (object hallucination): accuracy, precision, recall, F1 and yes-ratio per split.

Yes/no rule, LLaVA's ``eval_pope.py`` exactly: keep the text before the first ``.``; delete
commas; split on single spaces; if one of the words is ``No``, ``no`` or ``not`` the answer is
*no*, otherwise *yes*. (So an empty answer, ``"Nope"``, ``"NO"`` and ``"Not at all"`` all read as
*yes* — kept as is, because LLaVA-family POPE numbers are computed this way.)

"yes" is the positive class. yes-ratio is the share of **predicted** yes answers (lmms-eval's
``pope_aggregate_yes_ratio`` counts ground-truth yes instead, which is always ~50 % on POPE).
Precision, recall and F1 are 0 when undefined (no predicted / no true positives). A question
without an answer is counted as answered wrongly (the opposite of its label), not read as ``""``.

Reported per split present in the annotations (``random``, ``popular``, ``adversarial``),
``overall/*`` over all questions pooled, and ``mean/*`` = the unweighted mean of the per-split
values — the number papers quote (LLaVA-1.5-13B's "POPE 85.9" is the mean F1 of three splits).

Worked example (one split, 4 questions): labels yes, yes, no, no; answers "Yes, there is a dog.",
"No.", "There is no cat.", "Yes" → predictions yes, no, no, yes: TP 1, FN 1, TN 1, FP 1 →
accuracy 50, precision 50, recall 50, F1 50, yes-ratio 50.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations

SPLITS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class PopeAnnotation:
    label: str  # "yes" or "no"
    split: str = "random"

    def __post_init__(self):
        if self.label not in ("yes", "no"):
            raise ValueError(f"POPE label must be 'yes' or 'no', got {self.label!r}")


def pope_yes_no(text: str) -> str:
    """LLaVA's reading of a POPE answer.

    >>> [pope_yes_no(t) for t in ["Yes, there is a dog.", "No.", "There is no cat.", "It is not there", ""]]
    ['yes', 'no', 'no', 'no', 'yes']
    """
    text = str(text)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def binary_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Metrics (%) from ``(predicted, label)`` pairs with "yes" as the positive class."""
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g == "no" for p, g in pairs)
    tn = sum(p == "no" and g == "no" for p, g in pairs)
    fn = sum(p == "no" and g == "yes" for p, g in pairs)
    precision = pct(tp, tp + fp)
    recall = pct(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": pct(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": pct(tp + fp, len(pairs)),
    }


def score_pope(predictions: Mapping[Any, Any], annotations: Mapping[Any, PopeAnnotation]) -> dict:
    """POPE metrics (%) per split, pooled (``overall/``) and averaged over splits (``mean/``).

    >>> anns = {i: PopeAnnotation(l, "random") for i, l in enumerate(["yes", "yes", "no", "no"])}
    >>> m = score_pope({0: "Yes, there is a dog.", 1: "No.", 2: "There is no cat.", 3: "Yes"}, anns)
    >>> m["random/f1"], m["random/yes_ratio"], m["mean/f1"]
    (50.0, 50.0, 50.0)
    """
    anns = require_annotations(annotations, "pope")
    look = Lookup(predictions, anns)
    by_split: dict[str, list[tuple[str, str]]] = {}
    for qid, ann in anns.items():
        text = look.get(qid)
        if look.answered(qid):
            read = pope_yes_no(text)
        else:  # a missing answer is wrong, whatever the label (LLaVA's rule would read "" as yes)
            read = "no" if ann.label == "yes" else "yes"
        by_split.setdefault(ann.split, []).append((read, ann.label))
    order = [s for s in SPLITS if s in by_split] + sorted(s for s in by_split if s not in SPLITS)
    metrics: dict[str, Any] = {}
    per_split = {s: binary_metrics(by_split[s]) for s in order}
    for name in METRICS:
        metrics[f"mean/{name}"] = sum(per_split[s][name] for s in order) / len(order)
    for name, value in binary_metrics([p for s in order for p in by_split[s]]).items():
        metrics[f"overall/{name}"] = value
    for s in order:
        for name, value in per_split[s].items():
            metrics[f"{s}/{name}"] = value
        metrics[f"{s}/n"] = len(by_split[s])
    metrics.update(n=len(anns), **look.counts())
    return metrics
