"""The bilinear problem of SliME §2.3 and its optima (closed form, SVD, brute force), the step-size thresholds. (Part of :mod:`hires_vlm.theory.bilinear`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_F = np.float64
BLOWUP = 1e100  # |u| or |v| beyond this (or a non-finite value) counts as divergence

DEFAULT_LR_REL: tuple[float, ...] = (0.25, 0.9, 1.1, 1.5, 2.2)  # in units of 1/sigma_1
DEFAULT_ALTGD_LR_REL: tuple[float, ...] = (0.9, 1.3)


def _vec(x, name: str) -> np.ndarray:
    arr = np.array(x, dtype=_F).reshape(-1)
    if arr.size < 2:
        raise ValueError(f"{name} must have dimension >= 2, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(x))
    return x / n if n > 0 else np.zeros_like(x)


@dataclass(frozen=True, eq=False)
class BilinearProblem:
    """``X = a b^T + b a^T``. ``a`` and ``b`` are stored as given (the paper assumes unit norm;
    ``make_problem`` normalises unless told not to)."""

    a: np.ndarray
    b: np.ndarray
    aligned: bool = False  # built by make_problem(aligned=True): e_1, e_2 are coordinate axes
    X: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a = _vec(self.a, "a")
        b = _vec(self.b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b differ in dimension: {a.shape} vs {b.shape}")
        if not (np.any(a) and np.any(b)):
            raise ValueError("a and b must be non-zero")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        # a_i b_j + b_i a_j: the same two products for (i, j) and (j, i), so X is *bitwise*
        # symmetric and X @ w can stand for X^T @ w.
        object.__setattr__(self, "X", np.outer(a, b) + np.outer(b, a))

    # -- basic quantities ---------------------------------------------------------------------
    @property
    def d(self) -> int:
        return int(self.a.size)

    @property
    def overlap(self) -> float:
        """``c = a^T b``."""
        return float(self.a @ self.b)

    @property
    def norms(self) -> tuple[float, float]:
        return float(np.linalg.norm(self.a)), float(np.linalg.norm(self.b))

    @property
    def basis(self) -> np.ndarray:
        """``A = [a, b]`` (d x 2)."""
        return np.stack([self.a, self.b], axis=1)

    @property
    def gram(self) -> np.ndarray:
        """``G = A^T A``."""
        A = self.basis
        return A.T @ A

    @property
    def x_norm_sq(self) -> float:
        return float(np.sum(self.X * self.X))

    # -- objective ------------------------------------------------------------------------------
    def residual(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.outer(u, v) - self.X

    def loss(self, u: np.ndarray, v: np.ndarray) -> float:
        r = self.residual(u, v)
        return 0.5 * float(np.sum(r * r))

    def losses(self, us: np.ndarray, vs: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
        """``loss`` for every row pair of ``us``, ``vs`` (same arithmetic, vectorised)."""
        out = np.empty(us.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(0, us.shape[0], chunk):
                r = us[i : i + chunk, :, None] * vs[i : i + chunk, None, :] - self.X
                out[i : i + chunk] = 0.5 * np.sum(r * r, axis=(1, 2))
        return out

    def grads(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(dL/du, dL/dv) = (|v|^2 u - X v, |u|^2 v - X^T u)``: the expanded form the paper
        uses in the proof of Theorem 3. It is written so that the symmetry
        ``(u, v) -> (-v, -u)`` of L holds bit-for-bit (negation is exact in IEEE arithmetic)."""
        return float(v @ v) * u - self.X @ v, float(u @ u) * v - self.X @ u


def make_problem(
    a: Sequence[float] | np.ndarray | None = None,
    b: Sequence[float] | np.ndarray | None = None,
    *,
    d: int = 16,
    seed: int = 0,
    overlap: float | None = 0.5,
    normalize: bool = True,
    aligned: bool = False,
) -> BilinearProblem:
    """Build the problem from explicit ``(a, b)`` or from a seed.

    * ``a, b`` given: used as they are (normalised when ``normalize``).
    * else, ``aligned=False``: ``a`` is a uniformly random unit vector of ``R^d``; ``b`` has
      ``a^T b = overlap`` exactly (``b = overlap a + sqrt(1 - overlap^2) w``, ``w`` random,
      orthogonal to ``a``); ``overlap=None`` draws ``b`` uniformly too (then ``a^T b ~ N(0, 1/d)``).
    * ``aligned=True``: ``a = (cos t, sin t, 0, ...)``, ``b = (cos t, -sin t, 0, ...)`` with
      ``cos 2t = overlap``, so that ``e_1`` and ``e_2`` are coordinate axes and X is exactly
      diagonal. Starts with a zero coordinate then stay *exactly* on the invariant sets, which is
      how the exact-arithmetic behaviour is separated from rounding effects.
    """
    if a is not None or b is not None:
        if a is None or b is None:
            raise ValueError("give both a and b, or neither")
        a_arr, b_arr = _vec(a, "a"), _vec(b, "b")
        if normalize:
            a_arr, b_arr = _unit(a_arr), _unit(b_arr)
        return BilinearProblem(a_arr, b_arr)
    if d < 2:
        raise ValueError(f"d must be >= 2, got {d}")
    if overlap is not None and not -1.0 < overlap < 1.0:
        raise ValueError(f"overlap must lie in (-1, 1), got {overlap}")
    if aligned:
        c = 0.5 if overlap is None else float(overlap)
        t = 0.5 * math.acos(c)
        a_arr = np.zeros(d, dtype=_F)
        b_arr = np.zeros(d, dtype=_F)
        a_arr[0], a_arr[1] = math.cos(t), math.sin(t)
        b_arr[0], b_arr[1] = math.cos(t), -math.sin(t)
        return BilinearProblem(a_arr, b_arr, aligned=True)
    rng = np.random.default_rng(seed)
    a_arr = _unit(rng.standard_normal(d))
    if overlap is None:
        b_arr = _unit(rng.standard_normal(d))
    else:
        w = rng.standard_normal(d)
        w -= a_arr * (a_arr @ w)
        w = _unit(w)
        b_arr = overlap * a_arr + math.sqrt(1.0 - overlap * overlap) * w
    return BilinearProblem(a_arr, b_arr)


# --------------------------------------------------------------------------------------------
# optimum
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rank1Optimum:
    sigma1: float
    sigma2: float
    lambda_top: float  # eigenvalue of X with the largest |.|  (= sign * sigma1)
    lambda_other: float  # the other non-zero eigenvalue (|.| = sigma2)
    e1: np.ndarray  # top singular (= eigen) direction, unit
    e2: np.ndarray  # second direction, unit (zero when X has rank 1)
    loss_opt: float  # 1/2 sigma2^2
    saddle_loss: float  # 1/2 sigma1^2  (loss at the sigma_2 critical pair)
    origin_loss: float  # 1/2 |X|^2
    psd_rank1_loss: float  # best u u^T (symmetric PSD): 1/2(|X|^2 - max(lambda_max, 0)^2)
    top_is_degenerate: bool  # sigma1 == sigma2 (a^T b == 0): e1 not unique

    @property
    def sign(self) -> float:
        """``sign(lambda_top)``: the optimal v is ``sign * (sigma1/|u|^2) u``."""
        return 1.0 if self.lambda_top >= 0 else -1.0

    def balanced_minimiser(self) -> tuple[np.ndarray, np.ndarray]:
        s = math.sqrt(self.sigma1)
        return s * self.e1, self.sign * s * self.e1


def rank_one_optimum(problem: BilinearProblem) -> Rank1Optimum:
    """Closed-form spectrum/optimum (see the module docstring)."""
    na, nb = problem.norms
    c = problem.overlap
    lam_plus, lam_minus = c + na * nb, c - na * nb
    sgn = 1.0 if c >= 0 else -1.0
    lam_top, lam_other = (lam_plus, lam_minus) if c >= 0 else (lam_minus, lam_plus)
    e1 = _unit(nb * problem.a + sgn * na * problem.b)
    e2 = _unit(nb * problem.a - sgn * na * problem.b)
    s1, s2 = abs(lam_top), abs(lam_other)
    xx = problem.x_norm_sq
    lam_max = max(lam_plus, lam_minus)
    return Rank1Optimum(
        sigma1=s1,
        sigma2=s2,
        lambda_top=lam_top,
        lambda_other=lam_other,
        e1=e1,
        e2=e2,
        loss_opt=0.5 * s2 * s2,
        saddle_loss=0.5 * s1 * s1,
        origin_loss=0.5 * xx,
        psd_rank1_loss=0.5 * (xx - max(lam_max, 0.0) ** 2),
        top_is_degenerate=math.isclose(s1, s2, rel_tol=0.0, abs_tol=1e-12 * max(s1, 1.0)),
    )


def svd_optimum(problem: BilinearProblem) -> dict:
    """Eckart–Young from ``numpy.linalg.svd``: ``min L = 1/2 sum_{i>=2} s_i^2``."""
    U, s, Vt = np.linalg.svd(problem.X)
    return {
        "singular_values": s,
        "loss_opt": 0.5 * float(np.sum(s[1:] ** 2)),
        "u1": U[:, 0],
        "v1": Vt[0],
        "uv_opt": s[0] * np.outer(U[:, 0], Vt[0]),
    }


def brute_force_optimum(problem: BilinearProblem, *, n_angles: int = 20001, n_random: int = 20000, seed: int = 0) -> float:
    """Independent of any eigen/SVD routine: for a unit direction ``x`` of u the best v is
    ``X^T x`` (least squares), leaving ``1/2(|X|^2 - |X^T x|^2)``; minimise that over a fine
    grid of directions in span(a, b) and over random directions of R^d (whose component outside
    span(a, b) is annihilated by X, so they can only be worse)."""
    Q, _ = np.linalg.qr(problem.basis)
    xx = problem.x_norm_sq
    X = problem.X

    def f(phi: float) -> float:
        x = math.cos(phi) * Q[:, 0] + math.sin(phi) * Q[:, 1]
        return 0.5 * (xx - float(np.sum((X @ x) ** 2)))

    phi = np.linspace(0.0, np.pi, n_angles)
    dirs = np.outer(np.cos(phi), Q[:, 0]) + np.outer(np.sin(phi), Q[:, 1])
    vals = 0.5 * (xx - np.sum((dirs @ X) ** 2, axis=1))
    i = int(np.argmin(vals))
    # golden-section refinement on the bracketing grid cell pair (f is smooth in phi)
    lo, hi = phi[max(i - 1, 0)], phi[min(i + 1, n_angles - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):
        m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(m1) <= f(m2):
            hi = m2
        else:
            lo = m1
    best = min(float(vals[i]), f(0.5 * (lo + hi)))
    rng = np.random.default_rng(seed)
    rnd = rng.standard_normal((n_random, problem.d))
    rnd /= np.linalg.norm(rnd, axis=1, keepdims=True)
    best_rnd = float(np.min(0.5 * (xx - np.sum((rnd @ X) ** 2, axis=1))))
    return min(best, best_rnd)


def lr_thresholds(problem: BilinearProblem) -> dict[str, float]:
    """Step-size thresholds (absolute learning rates) for this problem.

    * ``sim_gd_converge = 1/sigma_1``: sharpness at the flattest (balanced) minimiser is
      ``|u|^2 + |v|^2 = 2 sigma_1``; GD is linearly stable there iff ``lr < 2/(2 sigma_1)``.
    * ``sim_gd_diverge_balanced = 2/sigma_1``: the balanced invariant family reduces to
      ``tau -> tau(1 + r(1 - tau^2))``, ``r = lr sigma_1``; its invariant interval
      ``[-sqrt((2+r)/r), sqrt((2+r)/r)]`` exists iff ``4(1+r)^3 <= 27(2+r)`` iff ``r <= 2``.
    * ``alt_gd_local = 2/sigma_1``: alternating gradient steps, linearised at the balanced
      minimiser, have eigenvalues ``1`` (rescaling direction) and ``(1 - r)^2``.
    """
    s1 = rank_one_optimum(problem).sigma1
    return {
        "sigma1": s1,
        "sim_gd_converge": 1.0 / s1,
        "sim_gd_diverge_balanced": 2.0 / s1,
        "alt_gd_local": 2.0 / s1,
    }
