"""Small helpers shared by every scorer: prediction look-up, percentages, metric-key slugs.

Conventions of the whole ``scorers`` package, stated once:

* A scorer is ``score_<bench>(predictions, annotations) -> dict``. ``predictions`` maps a question
  id to the model's raw answer text; ``annotations`` maps the same ids to the benchmark's
  annotation records (small frozen dataclasses defined next to each scorer). Ids are compared as
  strings, so ``1`` and ``"1"`` are the same question.
* The annotations define the question set. A question without a prediction is scored as an empty
  answer (wrong) and counted in ``n_missing``; predictions for unknown ids are counted in
  ``n_extra`` and otherwise ignored. ``n_unparsed`` counts answers that exist but cannot be
  read (no option letter, no yes/no, no number); missing answers are only in ``n_missing``.
* Every rate (accuracy, precision, recall, F1, yes-ratio, MME acc/acc+) is a **percentage,
  0–100**. Counts are ints. Keys are flat; a ``/`` separates a breakdown from its metric
  (``"adversarial/f1"``, ``"category/biology/accuracy"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def qid_key(question_id: Any) -> str:
    """The string form under which a question id is matched (``1`` and ``"1"`` are one id)."""
    return str(question_id).strip()


def normalise_predictions(predictions: Mapping[Any, Any]) -> dict[str, str]:
    """Predictions keyed by :func:`qid_key`; ``None`` texts become ``""``."""
    return {qid_key(k): ("" if v is None else str(v)) for k, v in predictions.items()}


def require_annotations(annotations: Mapping[Any, Any], bench: str) -> dict[str, Any]:
    if not annotations:
        raise ValueError(f"{bench}: no annotated questions to score against")
    return {qid_key(k): v for k, v in annotations.items()}


def pct(numerator: float, denominator: float) -> float:
    """``100 · numerator / denominator``; 0.0 when the denominator is 0 (nothing to rate)."""
    return 100.0 * numerator / denominator if denominator else 0.0


def slug(name: Any) -> str:
    """A metric-key-safe form of a category name: lower case, runs of non-word characters → ``_``.

    >>> slug("Yes/No")
    'yes_no'
    >>> slug("Scene Understanding")
    'scene_understanding'
    """
    s = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    return s or "unknown"


class Lookup:
    """Reads predictions for the annotated ids and keeps the ``n_missing`` / ``n_extra`` counts."""

    def __init__(self, predictions: Mapping[Any, Any], annotations: Mapping[str, Any]):
        self.predictions = normalise_predictions(predictions)
        self.n_missing = 0
        self.n_extra = sum(1 for k in self.predictions if k not in annotations)

    def get(self, qid: str) -> str:
        text = self.predictions.get(qid)
        if text is None:
            self.n_missing += 1
            return ""
        return text

    def answered(self, qid: str) -> bool:
        """Whether ``qid`` has a prediction (``n_unparsed`` counts only answers that exist)."""
        return qid in self.predictions

    def counts(self) -> dict[str, int]:
        return {"n_missing": self.n_missing, "n_extra": self.n_extra}
