"""MME: acc and acc+ per subtask, perception and cognition totals.

Every MME image comes with two yes/no questions (one true "yes", one true "no").

* ``acc`` of a subtask = % of its questions answered right;
* ``acc+`` = % of its images whose questions are **all** answered right;
* subtask score = ``acc + acc+`` (max 200); **perception** = sum over the 10 perception subtasks
  (max 2000), **cognition** = sum over the 4 cognition subtasks (max 800).

Yes/no reading (lmms-eval ``mme/utils.py``, from Otter): lower-case, strip, delete every ``.``;
``yes``/``no`` as is; a one-letter answer ``y``/``n``; otherwise look at the first 4 characters:
containing ``yes`` → yes, else containing ``no`` → no, else *other* (wrong, counted in
``n_unparsed``). So ``"Yes, it is."`` → yes, ``"Not really"`` → no, ``"The answer is yes"`` → other.

Worked example (subtask ``count``, two images): image 1 answered right twice, image 2 right once:
acc = 3/4 = 75, acc+ = 1/2 = 50, score 125.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations

PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass(frozen=True)
class MMEAnnotation:
    subtask: str
    image: str  # the key grouping the questions of one image, e.g. "count/000000006040.jpg"
    answer: str  # "Yes" / "No"


def mme_yes_no(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``.

    >>> [mme_yes_no(t) for t in ["Yes.", "N", "No, there is not.", "Not really", "The answer is yes", ""]]
    ['yes', 'no', 'no', 'no', 'other', 'other']
    """
    t = str(text).lower().strip().replace(".", "")
    if t in ("yes", "no"):
        return t
    if len(t) == 1:
        return {"y": "yes", "n": "no"}.get(t, "other")
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(predictions: Mapping[Any, Any], annotations: Mapping[Any, MMEAnnotation]) -> dict:
    """MME metrics: ``<subtask>/acc``, ``<subtask>/acc_plus``, ``<subtask>/score``, ``perception``, ``cognition``.

    >>> anns = {f"q{i}": MMEAnnotation("count", f"img{i // 2}", a) for i, a in enumerate(["Yes", "No", "Yes", "No"])}
    >>> m = score_mme({"q0": "Yes", "q1": "No", "q2": "Yes", "q3": "Yes"}, anns)
    >>> m["count/acc"], m["count/acc_plus"], m["count/score"], m["perception"]
    (75.0, 50.0, 125.0, 125.0)
    """
    anns = require_annotations(annotations, "mme")
    look = Lookup(predictions, anns)
    unparsed = 0
    # subtask -> image -> list of hits
    hits: dict[str, dict[str, list[int]]] = {}
    for qid, ann in anns.items():
        read = mme_yes_no(look.get(qid))
        unparsed += read == "other" and look.answered(qid)
        gold = ann.answer.strip().lower().replace(".", "")
        if gold not in ("yes", "no"):
            raise ValueError(f"mme: question {qid!r} has answer {ann.answer!r}; expected Yes or No")
        hits.setdefault(ann.subtask, {}).setdefault(ann.image, []).append(int(read == gold))

    known = list(PERCEPTION) + list(COGNITION)
    order = [s for s in known if s in hits] + sorted(s for s in hits if s not in known)
    metrics: dict[str, Any] = {}
    scores: dict[str, float] = {}
    per_subtask: dict[str, Any] = {}
    for sub in order:
        images = hits[sub]
        n_q = sum(len(v) for v in images.values())
        acc = pct(sum(sum(v) for v in images.values()), n_q)
        acc_plus = pct(sum(all(v) for v in images.values()), len(images))
        scores[sub] = acc + acc_plus
        per_subtask.update({f"{sub}/acc": acc, f"{sub}/acc_plus": acc_plus, f"{sub}/score": acc + acc_plus})
    metrics["perception"] = sum(scores[s] for s in PERCEPTION if s in scores)
    metrics["cognition"] = sum(scores[s] for s in COGNITION if s in scores)
    metrics["total"] = metrics["perception"] + metrics["cognition"]
    metrics.update(per_subtask)
    metrics["n_perception_subtasks"] = sum(s in scores for s in PERCEPTION)
    metrics["n_cognition_subtasks"] = sum(s in scores for s in COGNITION)
    metrics.update(n=len(anns), n_images=sum(len(v) for v in hits.values()), n_unparsed=unparsed, **look.counts())
    return metrics
