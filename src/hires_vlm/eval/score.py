"""Score an answer file against a benchmark's released annotations.

The answer file is LLaVA's format: JSON Lines, one ``{"question_id": …, "text": …}`` object per
answer (other fields such as ``prompt`` and ``model_id`` are ignored). Answers are matched to
questions by ``question_id`` (as strings). A line that is not a JSON object with both fields is
skipped and counted (``n_malformed_lines``); when an id occurs twice the last line wins and the
repeat is counted (``n_duplicates``). Questions without an answer count as wrong (``n_missing``);
answers to unknown ids are ignored (``n_extra``) — but a file where *most* answers match no question
is an error that shows both kinds of ids (:func:`check_ids`), never a silent zero. Answer files of
other tools are first put under the benchmark's ids where the benchmark knows how
(``Benchmark.align``: LLaVA's POPE answer files).

For MMBench, LLaVA's ``model_vqa_mmbench.py --all-rounds`` writes every circular pass under the
same ``question_id`` with a ``round_id``; such a line is read as id ``question_id + round_id·1e6``,
the id the MMBench loader gives that pass.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from .benchmarks import get_benchmark
from .benchmarks.base import BenchmarkDataError
from .scorers.common import qid_key
from .scorers.mmbench import CIRCULAR_STRIDE


def read_predictions(path: str | Path, *, mmbench_rounds: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """``({question_id: text}, counts)`` from a LLaVA answer file.

    ``counts`` has ``n_lines`` (non-empty lines), ``n_malformed_lines`` and ``n_duplicates``.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(
            f"predictions file {path} does not exist; expected JSON Lines with question_id and text"
        )
    predictions: dict[str, str] = {}
    counts = {"n_lines": 0, "n_malformed_lines": 0, "n_duplicates": 0}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            counts["n_lines"] += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                counts["n_malformed_lines"] += 1
                continue
            if not isinstance(row, dict) or row.get("question_id") is None or not isinstance(row.get("text"), str):
                counts["n_malformed_lines"] += 1
                continue
            qid = qid_key(row["question_id"])
            round_id = row.get("round_id")
            if mmbench_rounds and isinstance(round_id, int) and round_id > 0:
                try:
                    qid = str(int(qid) + round_id * CIRCULAR_STRIDE)
                except ValueError:
                    counts["n_malformed_lines"] += 1
                    continue
            if qid in predictions:
                counts["n_duplicates"] += 1
            predictions[qid] = row["text"]
    return predictions, counts


def write_predictions(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write answer rows (e.g. :func:`~hires_vlm.eval.benchmarks.prediction_row`) as JSON Lines; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            n += 1
    return n


#: How each benchmark's question ids look, for the message of :func:`check_ids`.
ID_HINTS = {
    "pope": "'<split>/<question_id>' (e.g. 'random/1'); plain ids score when one split is given "
            "(--annotations DIR/coco_pope_random.json, or --option splits=random), LLaVA's answer files when "
            "its llava_pope_test.jsonl is beside the annotations (or --option question_file=FILE)",
    "mme": "'<subtask>/<image file>#<question number>'",
    "mmbench": "the TSV's 'index' (later circular passes: index + round·1e6)",
    "synthetic": "the records' 'id'",
    "chartqa": "'<split>/<line number>'",
}


def check_ids(benchmark: str, predictions: Mapping[str, str], annotations: Mapping[str, Any]) -> None:
    """Refuse an answer file whose ids do not fit the benchmark (empty, or most ids unknown)."""
    if not predictions:
        raise ValueError(f"{benchmark}: the answer file holds no answer (JSON Lines with question_id and text)")
    unknown = [k for k in predictions if k not in annotations]
    if 2 * len(unknown) > len(predictions):
        theirs = ", ".join(repr(k) for k in list(annotations)[:3])
        raise ValueError(
            f"{benchmark}: {len(unknown)} of the {len(predictions)} answers match no question (answer ids like "
            f"{', '.join(repr(k) for k in unknown[:3])}; the benchmark's ids look like {theirs}). Expected: "
            f"{ID_HINTS.get(benchmark, 'the question ids of the benchmark files')}"
        )


def score_predictions(
    benchmark: str,
    predictions_path: str | Path,
    annotations_path: str | Path,
    *,
    only_predicted: bool = False,
    **loader_options: Any,
) -> dict[str, Any]:
    """Metrics of an answer file on ``benchmark`` whose released files are at ``annotations_path``.

    ``only_predicted`` restricts scoring to the questions that have an answer (a partial run);
    otherwise every annotated question counts and unanswered ones are wrong. ``loader_options``
    go to the benchmark's loader (e.g. ``split="all"`` for AI2D).
    """
    spec = get_benchmark(benchmark)
    bench = spec.load(annotations_path, **loader_options)
    annotations = bench.annotations()
    predictions, counts = read_predictions(predictions_path, mmbench_rounds=benchmark == "mmbench")
    predictions = bench.align(predictions)
    check_ids(benchmark, predictions, annotations)
    if only_predicted:
        annotations = {k: v for k, v in annotations.items() if k in predictions}
        if not annotations:
            raise ValueError(f"{benchmark}: none of the {len(predictions)} predicted question ids is in the benchmark")
    metrics = spec.scorer(predictions, annotations)
    metrics.update(
        n_predictions=len(predictions),
        n_duplicates=counts["n_duplicates"],
        n_malformed_lines=counts["n_malformed_lines"],
        n_skipped_records=bench.n_skipped,
    )
    return metrics


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_table(metrics: Mapping[str, Any], file: IO[str] | None = None, title: str | None = None) -> None:
    """Print ``metrics`` as a two-column table (rates with 2 decimals, counts as integers)."""
    out = file if file is not None else sys.stdout
    if not metrics:
        print("(no metrics)", file=out)
        return
    width = max(len(k) for k in metrics)
    values = {k: format_value(v) for k, v in metrics.items()}
    vwidth = max(len(v) for v in values.values())
    if title:
        print(title, file=out)
    print(f"{'metric'.ljust(width)}  {'value'.rjust(vwidth)}", file=out)
    print(f"{'-' * width}  {'-' * vwidth}", file=out)
    for key, value in values.items():
        print(f"{key.ljust(width)}  {value.rjust(vwidth)}", file=out)
