"""The bilinear toy problem of SliME §2.3 / Appendix C, done numerically (pure numpy, float64).

Problem (SliME eq. in §2.3)::

    min_{u, v in R^d}  L(u, v) = 1/2 || u v^T - X ||_F^2,      X = a b^T + b a^T.

Notation used throughout (``c = a^T b``, ``|a|``, ``|b|`` the norms, ``A = [a, b]``)::

    X a = c a + |a|^2 b,   X b = |b|^2 a + c b          so  X A = A K,   K = P G,
    G = A^T A = [[a.a, a.b], [a.b, b.b]]  (Gram),        P = [[0, 1], [1, 0]]  (swap).

Spectrum (closed form, checked against ``numpy.linalg.svd`` in the tests): X is symmetric with
eigenvalues ``c + |a||b|`` (eigenvector ``|b| a + |a| b``) and ``c - |a||b|`` (eigenvector
``|b| a - |a| b``) and 0 on the orthogonal complement of span(a, b). Hence the singular values are

    sigma_1 = |a||b| + |c|,   sigma_2 = |a||b| - |c|      (for unit a, b: 1 + |c| and 1 - |c|)

and, by Eckart–Young, ``min L = 1/2 sigma_2^2`` (unit vectors: ``1/2 (1 - |a^T b|)^2``), reached
by ``u v^T = lambda_top e_1 e_1^T`` where ``lambda_top`` is the eigenvalue of largest |.|.
Because ``u v^T`` need not be symmetric, the optimum is the top *singular* pair
``(e_1, sign(lambda_top) e_1)``: for ``a^T b < 0`` the top eigenvalue in absolute value is
negative (``c - 1``) and the optimal ``u`` and ``v`` are *anti-parallel* (along ``a - b``). The
best *symmetric PSD* rank one ``u u^T`` (algebraically largest eigenvalue) is worse there;
``Rank1Optimum.psd_rank1_loss`` records it for comparison.

Critical points of L: the origin (loss 1/2 |X|^2), the sigma_2 pair (a strict saddle, loss
1/2 sigma_1^2) and the sigma_1 pair (global minima, a 1-parameter family ``(s e_1, lambda/s e_1)``).

Step-size thresholds for simultaneous gradient descent (derived in ``lr_thresholds``): the
Hessian at a minimiser ``(u, v)`` has largest eigenvalue ``|u|^2 + |v|^2 >= 2 sigma_1`` (equality at
the balanced one), so no global minimiser is linearly stable once ``lr > 1/sigma_1``. On the
invariant line ``u = sign(lambda_top) v = sqrt(sigma_1) tau e_1`` the dynamics is the cubic map
``tau -> tau (1 + r (1 - tau^2))`` with ``r = lr sigma_1``: ``[-T, T]``, ``T^2 = (2 + r)/r``, is
invariant iff ``4(1 + r)^3 <= 27(2 + r)`` iff ``r <= 2``, and ``|tau| > T`` grows without bound, so
``2/sigma_1`` is the divergence threshold of that reduced system (generic, unbalanced starts can
diverge below it; see ``lr_scan``).
Alternating gradient steps (u then v) have linearisation eigenvalues ``{1, (1 - lr sigma_1)^2}``
at the balanced minimiser, i.e. local stability up to ``lr < 2/sigma_1``.

Everything here is deterministic given the seeds; no torch.

The study, by part: :mod:`.bilinear_problem` (the problem, its optima, the step-size thresholds),
:mod:`.bilinear_dynamics` (the optimisers, Theorems 2 and 3), :mod:`.bilinear_experiment` (starts,
classification, scans, ``run_experiment``) and :mod:`.bilinear_report` (the failure statement, the figure).
This module gathers them.
"""

# ruff: noqa: F401  (re-exports)
from .bilinear_dynamics import (
    Theorem2Check,
    Theorem3Check,
    Trajectory,
    alternating_gd,
    alternating_ls,
    derived_K,
    ls_solve,
    paper_M,
    simultaneous_gd,
    theorem2_check,
    theorem3_check,
)
from .bilinear_experiment import (
    ExperimentResult,
    Start,
    classify,
    lr_scan,
    make_starts,
    run_experiment,
)
from .bilinear_problem import (
    BLOWUP,
    DEFAULT_ALTGD_LR_REL,
    DEFAULT_LR_REL,
    BilinearProblem,
    Rank1Optimum,
    brute_force_optimum,
    lr_thresholds,
    make_problem,
    rank_one_optimum,
    svd_optimum,
)
from .bilinear_report import failure_claims, plot_experiment, to_jsonable

__all__ = [
    "DEFAULT_ALTGD_LR_REL",
    "DEFAULT_LR_REL",
    "BilinearProblem",
    "ExperimentResult",
    "Rank1Optimum",
    "Start",
    "Theorem2Check",
    "Theorem3Check",
    "Trajectory",
    "alternating_gd",
    "alternating_ls",
    "brute_force_optimum",
    "classify",
    "derived_K",
    "failure_claims",
    "lr_scan",
    "lr_thresholds",
    "ls_solve",
    "make_problem",
    "make_starts",
    "paper_M",
    "plot_experiment",
    "rank_one_optimum",
    "run_experiment",
    "simultaneous_gd",
    "svd_optimum",
    "theorem2_check",
    "theorem3_check",
    "to_jsonable",
]
