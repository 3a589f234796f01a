"""The ``score`` subcommand: metrics of a LLaVA-format answer file on one benchmark.

``hires-vlm score --benchmark pope --predictions answers.jsonl --annotations /data/pope [--json]``

:func:`add_parser` registers the subcommand on an ``argparse`` subparsers object and :func:`run`
executes it (exit code 0, or 2 with a one-line message on bad input). The module also runs on its
own: ``python -m hires_vlm.eval.cli_score score …``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .benchmarks import BENCHMARKS
from .benchmarks.base import BenchmarkDataError
from .score import print_table, score_predictions


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``score`` on ``subparsers`` and return its parser (``func`` defaults to :func:`run`)."""
    parser = subparsers.add_parser(
        "score",
        help="score a LLaVA-format answer file on a benchmark",
        description="Score a JSON Lines answer file ({question_id, text} per line) against a benchmark's "
        "released annotation files. Every rate is a percentage.",
    )
    parser.add_argument(
        "--benchmark", required=True, metavar="NAME", help=f"one of: {', '.join(sorted(BENCHMARKS))}"
    )
    parser.add_argument("--predictions", required=True, type=Path, metavar="FILE", help="answer file (JSON Lines)")
    parser.add_argument(
        "--annotations",
        required=True,
        type=Path,
        metavar="PATH",
        help="the benchmark's folder (or main file) in its released layout",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument(
        "--only-predicted",
        action="store_true",
        help="score only the questions that have an answer (default: unanswered questions count as wrong)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Execute ``score``; returns the process exit code."""
    try:
        metrics = score_predictions(
            args.benchmark, args.predictions, args.annotations, only_predicted=getattr(args, "only_predicted", False)
        )
    except (ValueError, BenchmarkDataError) as err:
        print(f"hires-vlm score: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(metrics))
    else:
        print_table(metrics, title=f"{args.benchmark}: {args.predictions}")
        if metrics.get("n_missing"):
            print(
                f"warning: {metrics['n_missing']} question(s) have no answer and count as wrong "
                "(use --only-predicted to score a partial run)",
                file=sys.stderr,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hires-vlm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
