"""The ``eval`` subcommand: answer a benchmark's questions with a saved model and score them.

``hires-vlm eval --model DIR --benchmark pope --data /data/pope [--limit N] [--batch-size B]
[--out DIR] [--max-new-tokens N] [--device D]``

Answers go to ``<out>/predictions.jsonl`` as they come; running the same command again after an
interruption continues where it stopped (see :mod:`hires_vlm.eval.runner`). At the end the
metrics are printed as a table and the whole report is in ``<out>/scores.json``. :func:`add_parser`
registers the subcommand, :func:`run` executes it (exit code 0, or 2 with a one-line message on bad
input). The module also runs on its own: ``python -m hires_vlm.eval.cli_eval eval …``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .benchmarks import BENCHMARKS
from .benchmarks.base import BenchmarkDataError
from .score import print_table

DEFAULT_OUT_ROOT = "eval_results"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``true``, ``3``, ``null``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on ``subparsers`` and return its parser (``func`` defaults to :func:`run`)."""
    parser = subparsers.add_parser(
        "eval",
        help="answer a benchmark with a saved model and score the answers",
        description="Batched greedy answers to a benchmark's questions, written to <out>/predictions.jsonl "
        "as they come (LLaVA answer-file format), then scored into <out>/scores.json. Rerun the same "
        "command to continue an interrupted run.",
    )
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="saved model directory")
    parser.add_argument(
        "--benchmark", required=True, metavar="NAME", help=f"one of: {', '.join(sorted(BENCHMARKS))}"
    )
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="the benchmark's folder (or main file) in its released layout")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N questions")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="questions per batch (8)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"output folder (default: {DEFAULT_OUT_ROOT}/<model>-<fingerprint>/<benchmark>)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=128, metavar="N",
                        help="answer length limit in tokens (128)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="load the weights in this dtype (default: as saved)")
    parser.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="benchmark loader option, e.g. split=all for ai2d (repeatable)")
    parser.add_argument("--method-runtime", action="append", type=_option, default=[], metavar="KEY=VALUE",
                        help="change a run-time field of the model's method for this run, e.g. gamma=0.5 (SliME) or "
                             "canvas_source=view (INF-LLaVA's official inference path) (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard answers already in the output folder instead of continuing them")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def default_out(model_dir: Path, benchmark: str, method_runtime: dict | None = None) -> Path:
    """``eval_results/<model id>-<fingerprint>/<benchmark>[-<runtime fields>]``: two models never share
    a folder, even when their paths end alike (``runs/demo/…/final`` and ``runs/demo-quick/…/final``)."""
    from ..model.loading import model_fingerprint
    from .runner import default_model_id

    fp = model_fingerprint(model_dir).split(":", 1)[1][:10]
    suffix = "".join(f"-{k}={v}" for k, v in sorted((method_runtime or {}).items()))
    return Path(DEFAULT_OUT_ROOT) / f"{default_model_id(model_dir)}-{fp}" / f"{benchmark}{suffix}"


def run(args: argparse.Namespace) -> int:
    """Execute ``eval``; returns the process exit code."""
    from .runner import evaluate

    try:
        out = args.out or default_out(args.model, args.benchmark, dict(args.method_runtime))
        report = evaluate(
            args.model, args.benchmark, args.data, out, limit=args.limit, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype,
            benchmark_options=dict(args.option), method_runtime=dict(args.method_runtime), overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, BenchmarkDataError, FileNotFoundError) as err:
        print(f"hires-vlm eval: error: {err}", file=sys.stderr)
        return 2
    from .distributed import rank_world

    if rank_world()[0] != 0:  # under torchrun: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(report))
        return 0
    if report["metrics"] is not None:
        print_table(report["metrics"], title=f"{args.benchmark}: {report['model_id']}")
    else:
        print(f"{args.benchmark}: no scores ({report.get('note')})")
    print()
    print_table(report["counts"], title="counts")
    if report["skipped_samples"]:
        print(f"warning: skipped {report['counts']['n_skipped_samples']} question(s): {report['skipped_samples']} "
              f"(e.g. {report['skipped_examples'][0]['message']})", file=sys.stderr)
    print(f"\nanswers: {report['predictions']}\nreport:  {Path(out) / 'scores.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hires-vlm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
