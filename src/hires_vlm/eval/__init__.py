"""Evaluation: benchmark loaders (``benchmarks``), scorers (``scorers``) and answer-file scoring.

Light on purpose: importing it pulls in neither torch nor transformers, so scoring runs anywhere.
"""

from .benchmarks import BENCHMARKS, Benchmark, EvalSample, get_benchmark, load_benchmark, prediction_row
from .score import print_table, read_predictions, score_predictions, write_predictions

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalSample",
    "get_benchmark",
    "load_benchmark",
    "prediction_row",
    "print_table",
    "read_predictions",
    "score_predictions",
    "write_predictions",
]
