"""Theory studies that back design choices of the library (pure numpy, no model weights).

* :mod:`hires_vlm.theory.bilinear` – SliME §2.3 / Appendix C: simultaneous gradient descent vs
  alternating optimisation on ``min_{u,v} 1/2 |u v^T - (a b^T + b a^T)|_F^2``.
* :mod:`hires_vlm.theory.cli` – ``hires-vlm theory bilinear``.
"""

from .bilinear import (
    BilinearProblem,
    Rank1Optimum,
    alternating_gd,
    alternating_ls,
    brute_force_optimum,
    lr_thresholds,
    make_problem,
    rank_one_optimum,
    run_experiment,
    simultaneous_gd,
    svd_optimum,
    theorem2_check,
    theorem3_check,
)

__all__ = [
    "BilinearProblem",
    "Rank1Optimum",
    "alternating_gd",
    "alternating_ls",
    "brute_force_optimum",
    "lr_thresholds",
    "make_problem",
    "rank_one_optimum",
    "run_experiment",
    "simultaneous_gd",
    "svd_optimum",
    "theorem2_check",
    "theorem3_check",
]
