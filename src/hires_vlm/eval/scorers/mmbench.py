"""MMBench CircularEval with heuristic answer extraction only (no LLM judge).

MMBench asks an N-option question N times with the options rotated; the copies carry indices
``idx + k·1_000_000`` (``k = 0..N-1``), so ``idx % 1_000_000`` names the question (its *group*).
A question counts as solved only if **every** pass of its group is answered right. Answers are
read with :func:`~hires_vlm.eval.scorers.choice.parse_choice`; an answer it cannot read is wrong
and counted in ``n_unparsed`` (VLMEvalKit would ask an LLM; without one — its ``exact_matching``
mode — it also scores the group 0). A missing pass is wrong.

Reported: ``accuracy`` (circular, % of groups), ``vanilla_accuracy`` (% of groups whose first pass,
``k = 0``, is right — the single-pass number), per ``category`` and ``l2_category`` circular
accuracy, and counts.

Worked example: group 7 has passes 7 (answer A), 1000007 (answer D), 2000007 (answer C),
3000007 (answer B). Answers "A", "D", "C", "B." → solved; if the second were "The answer is A"
the group would fail, while ``vanilla_accuracy`` would still count it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .choice import option_letters, parse_choice
from .common import Lookup, pct, require_annotations, slug

CIRCULAR_STRIDE = 1_000_000


@dataclass(frozen=True)
class MMBenchAnnotation:
    options: tuple[str, ...]  # in the order this pass presented them
    answer: str  # correct letter in this pass
    group: str  # the question: index % 1e6
    circular_pass: int = 0  # k in index = group + k·1e6
    category: str | None = None
    l2_category: str | None = None

    def __post_init__(self):
        if self.answer not in option_letters(len(self.options)):
            raise ValueError(f"answer {self.answer!r} is not one of the {len(self.options)} option letters")


def circular_group(index: int) -> tuple[int, int]:
    """``(group, pass)`` of an MMBench index: ``circular_group(2000007) == (7, 2)``."""
    index = int(index)
    return index % CIRCULAR_STRIDE, index // CIRCULAR_STRIDE


def score_mmbench(predictions: Mapping[Any, Any], annotations: Mapping[Any, MMBenchAnnotation]) -> dict:
    """CircularEval accuracy (%).

    >>> opts = ("cat", "dog")
    >>> anns = {"5": MMBenchAnnotation(opts, "A", "5", 0), "1000005": MMBenchAnnotation(opts[::-1], "B", "5", 1)}
    >>> m = score_mmbench({"5": "A", "1000005": "A"}, anns)
    >>> m["accuracy"], m["vanilla_accuracy"]
    (0.0, 100.0)
    """
    anns = require_annotations(annotations, "mmbench")
    look = Lookup(predictions, anns)
    unparsed = 0
    groups: dict[str, dict[int, int]] = {}
    info: dict[str, MMBenchAnnotation] = {}
    for qid, ann in anns.items():
        letter = parse_choice(look.get(qid), ann.options)
        unparsed += letter is None and look.answered(qid)
        groups.setdefault(ann.group, {})[ann.circular_pass] = int(letter == ann.answer)
        if ann.group not in info or ann.circular_pass < info[ann.group].circular_pass:
            info[ann.group] = ann

    solved = {g: all(passes.values()) for g, passes in groups.items()}
    first = {g: passes[min(passes)] for g, passes in groups.items()}
    metrics: dict[str, Any] = {
        "accuracy": pct(sum(solved.values()), len(groups)),
        "vanilla_accuracy": pct(sum(first.values()), len(groups)),
    }
    for field, key in (("l2_category", "l2_category"), ("category", "category")):
        buckets: dict[str, list[bool]] = {}
        for g, ok in solved.items():
            value = getattr(info[g], field)
            if value:
                buckets.setdefault(slug(value), []).append(ok)
        for name in sorted(buckets):
            metrics[f"{key}/{name}/accuracy"] = pct(sum(buckets[name]), len(buckets[name]))
    metrics.update(n=len(groups), n_questions=len(anns), n_unparsed=unparsed, **look.counts())
    return metrics
