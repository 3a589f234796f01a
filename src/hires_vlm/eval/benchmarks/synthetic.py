"""The embedded synthetic high-resolution benchmark (``hires_vlm.data.synthetic``) as an eval benchmark.

Layout: the folder written by ``generate_benchmark`` (``test.json`` or ``train.json`` in LLaVA
conversation JSON, images under ``images/``). The prompt is the human turn without its
``<image>`` placeholder; scores are the benchmark's own (exact match per family, POPE metrics for
yes/no families), flattened and in percent like every other scorer here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._collect import Collector, Malformed, need
from .base import Benchmark, EvalSample, read_json, require_dir


def score_synthetic(predictions: Mapping[Any, Any], annotations: Mapping[str, Any]) -> dict:
    from ...data.synthetic import score_predictions

    records = list(annotations.values())
    preds = {str(k): v for k, v in predictions.items()}
    raw = score_predictions(records, {r["id"]: preds.get(str(r["id"])) for r in records})
    out: dict[str, Any] = {
        "accuracy": 100.0 * raw["overall"]["accuracy"],
        "mean_family_accuracy": 100.0 * raw["mean_family_accuracy"],
        "n": raw["overall"]["n"],
        "n_missing": raw["overall"]["missing"],
        "n_extra": len(set(preds) - {str(r["id"]) for r in records}),
    }
    for fam, entry in sorted(raw["families"].items()):
        out[f"family/{fam}/accuracy"] = 100.0 * entry["accuracy"]
        out[f"family/{fam}/n"] = entry["n"]
        if entry.get("chance") is not None:
            out[f"family/{fam}/chance"] = 100.0 * entry["chance"]
    for fam, entry in sorted(raw["pope"].items()):
        for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            out[f"pope/{fam}/{k}"] = 100.0 * entry[k]
    return out


def load_synthetic(path: str | Path, *, split: str = "test") -> Benchmark:
    """Questions of ``split`` ('test' or 'train') of a generated synthetic benchmark folder (or its
    ``<split>.json`` file, which then names the split)."""
    path = Path(path)
    if path.is_file() and path.name in ("train.json", "test.json"):
        path, split = path.parent, path.stem
    root = require_dir(path, "synthetic", "the folder written by `hires-vlm data synthetic` / the demo")
    records = read_json(root / f"{split}.json", "synthetic", f"the {split} split (LLaVA JSON)")
    c = Collector()
    for rec in records:
        try:
            if not isinstance(rec, dict) or "conversations" not in rec or "image" not in rec:
                raise Malformed("record without 'image' or 'conversations'")
            qid = need(rec, "id", (str, int))
            image = need(rec, "image")
            question = rec["conversations"][0]["value"].replace("<image>", "").strip()
        except (Malformed, KeyError, IndexError, TypeError, AttributeError) as err:
            c.skip(str(err) if isinstance(err, Malformed) else "malformed record")
            continue
        meta = {"family": rec.get("family"), "qtype": rec.get("qtype")}
        c.add(EvalSample(str(qid), root / image, question, meta), rec)
    return c.build("synthetic", root, score_synthetic)
