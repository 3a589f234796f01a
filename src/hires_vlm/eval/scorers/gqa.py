"""GQA exact match, with LLaVA's answer clean-up.

LLaVA converts each answer with ``text.rstrip('.').lower()`` before the official GQA script
compares it with the (lower-case) gold answer; here both sides are also stripped of surrounding
whitespace. Accuracy is the share of exact matches, in percent, overall and per structural type
(``verify``, ``query``, ``choose``, ``logical``, ``compare``) when the annotation carries it.

Worked example: gold ``"left"``; ``"Left."`` → ``"left"`` ✓; ``"left side"`` ✗; ``"left.."`` → ``"left"`` ✓
(``rstrip`` removes every trailing period).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations, slug


@dataclass(frozen=True)
class GQAAnnotation:
    answer: str
    structural_type: str | None = None


def normalize_gqa_answer(text: str) -> str:
    """``" Left. "`` → ``"left"``.

    >>> normalize_gqa_answer("Yes.")
    'yes'
    """
    return str(text).strip().rstrip(".").lower()


def score_gqa(predictions: Mapping[Any, Any], annotations: Mapping[Any, GQAAnnotation]) -> dict:
    """GQA accuracy (%).

    >>> score_gqa({"a": "Left.", "b": "table"}, {"a": GQAAnnotation("left"), "b": GQAAnnotation("chair")})["accuracy"]
    50.0
    """
    anns = require_annotations(annotations, "gqa")
    look = Lookup(predictions, anns)
    hits = 0
    by_type: dict[str, list[int]] = {}
    for qid, ann in anns.items():
        hit = int(normalize_gqa_answer(look.get(qid)) == ann.answer.strip().lower())
        hits += hit
        if ann.structural_type:
            by_type.setdefault(slug(ann.structural_type), []).append(hit)
    metrics: dict[str, Any] = {"accuracy": pct(hits, len(anns))}
    for name in sorted(by_type):
        metrics[f"structural/{name}/accuracy"] = pct(sum(by_type[name]), len(by_type[name]))
    metrics.update(n=len(anns), **look.counts())
    return metrics
