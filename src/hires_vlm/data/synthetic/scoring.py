"""Scoring answers on the benchmark: normalisation, accuracy per family, POPE-style existence."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from .families import FAMILIES

# ----------------------------------------------------------------------------------------- scoring
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lower-case, hyphens/underscores to spaces, punctuation and articles dropped, number words to digits."""
    t = str(text).strip().lower().replace("-", " ").replace("_", " ")
    t = re.sub(r"[^\w\s]", " ", t)
    words = [_NUMBER_WORDS.get(w, w) for w in t.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def _pope_yes(text: str) -> bool:
    """POPE's rule: an answer is "no" when it contains the word no or not, otherwise "yes"."""
    words = re.findall(r"[a-z]+", str(text).lower())
    return not ("no" in words or "not" in words)


def _answer_of(record: Mapping) -> str:
    return record["conversations"][-1]["value"]


def score_predictions(records: Sequence[Mapping], predictions: Mapping[str, str] | Sequence[str]) -> dict:
    """Exact-match accuracy per family (and per question type) after :func:`normalize_answer`.

    ``predictions`` maps record id → text, or is a list aligned with ``records``; a missing
    prediction counts as wrong. ``empty`` counts answers that are empty once normalised (or missing),
    ``out_of_vocabulary`` non-empty answers that are none of the question type's answers — a model
    that answers nothing is then visible as such, not only as a low accuracy. Families whose answers are all yes/no also get POPE's metrics:
    accuracy, precision, recall, F1 (of "yes") and yes-ratio, the fraction of *predicted* yes.
    """
    if isinstance(predictions, Mapping):
        preds = [predictions.get(r["id"]) for r in records]
    else:
        preds = list(predictions)
        if len(preds) != len(records):
            raise ValueError(f"{len(preds)} predictions for {len(records)} records; give a list of the "
                             "same length or a dict id -> prediction")
    fam_hits: dict[str, list[bool]] = defaultdict(list)
    q_hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    golds: dict[str, list[str]] = defaultdict(list)
    fam_preds: dict[str, list] = defaultdict(list)
    missing = 0
    empty: dict[str, int] = defaultdict(int)
    oov: dict[str, int] = defaultdict(int)
    for rec, pred in zip(records, preds):
        fam = rec.get("family", "unknown")
        gold = normalize_answer(_answer_of(rec))
        if pred is None:
            missing += 1
        said = normalize_answer(pred) if pred is not None else ""
        if not said:
            empty[fam] += 1
        elif fam in FAMILIES and said not in {normalize_answer(a) for a in
                                              FAMILIES[fam].answers.get(rec.get("qtype", ""), ())}:
            oov[fam] += 1
        hit = pred is not None and normalize_answer(pred) == gold
        fam_hits[fam].append(hit)
        q_hits[(fam, rec.get("qtype", ""))].append(hit)
        golds[fam].append(gold)
        fam_preds[fam].append(pred)
    families: dict[str, dict] = {}
    for fam, hits in fam_hits.items():
        entry = {"accuracy": float(np.mean(hits)), "correct": int(sum(hits)), "n": len(hits),
                 "chance": FAMILIES[fam].chance if fam in FAMILIES else None, "empty": empty[fam],
                 "out_of_vocabulary": oov[fam]}
        by_q = {q: float(np.mean(h)) for (f, q), h in q_hits.items() if f == fam and q}
        if len(by_q) > 1:
            entry["by_qtype"] = by_q
        families[fam] = entry
    pope = {}
    for fam, gold in golds.items():
        if not set(gold) <= {"yes", "no"}:
            continue
        g = np.array([x == "yes" for x in gold])
        p = np.array([pr is not None and _pope_yes(pr) for pr in fam_preds[fam]])
        tp, fp = int((g & p).sum()), int((~g & p).sum())
        fn, tn = int((g & ~p).sum()), int((~g & ~p).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        pope[fam] = {"accuracy": (tp + tn) / len(g), "precision": precision, "recall": recall, "f1": f1,
                     "yes_ratio": float(p.mean()), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    all_hits = [h for hits in fam_hits.values() for h in hits]
    return {
        "overall": {"accuracy": float(np.mean(all_hits)) if all_hits else 0.0, "correct": int(sum(all_hits)),
                    "n": len(all_hits), "missing": missing, "empty": sum(empty.values()),
                    "out_of_vocabulary": sum(oov.values())},
        "mean_family_accuracy": float(np.mean([f["accuracy"] for f in families.values()])) if families else 0.0,
        "families": families,
        "pope": pope,
    }
