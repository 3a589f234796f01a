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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BilinearProblem",
    "Rank1Optimum",
    "Trajectory",
    "Start",
    "Theorem2Check",
    "Theorem3Check",
    "ExperimentResult",
    "make_problem",
    "rank_one_optimum",
    "svd_optimum",
    "brute_force_optimum",
    "lr_thresholds",
    "simultaneous_gd",
    "alternating_gd",
    "alternating_ls",
    "ls_solve",
    "paper_M",
    "derived_K",
    "theorem2_check",
    "theorem3_check",
    "make_starts",
    "classify",
    "lr_scan",
    "run_experiment",
    "failure_claims",
    "plot_experiment",
    "DEFAULT_LR_REL",
    "DEFAULT_ALTGD_LR_REL",
    "to_jsonable",
]

_F = np.float64
BLOWUP = 1e100  # |u| or |v| beyond this (or a non-finite value) counts as divergence

DEFAULT_LR_REL: tuple[float, ...] = (0.25, 0.9, 1.1, 1.5, 2.2)  # in units of 1/sigma_1
DEFAULT_ALTGD_LR_REL: tuple[float, ...] = (0.9, 1.3)


# --------------------------------------------------------------------------------------------
# problem
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# optimisers
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    method: str
    lr: float | None
    losses: np.ndarray  # (n+1,), losses[t] = L at iterate t; shorter than steps+1 if diverged
    us: np.ndarray  # (n+1, d)
    vs: np.ndarray  # (n+1, d)
    diverged: bool = False
    diverged_at: int | None = None  # the step whose update left the finite/bounded region
    extras: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return math.inf if self.diverged else float(self.losses[-1])

    def gaps(self, loss_opt: float) -> np.ndarray:
        return self.losses - loss_opt


def _run_gd(problem, u0, v0, lr, steps, *, alternating: bool, name: str) -> Trajectory:
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if steps < 0:
        raise ValueError("steps must be >= 0")
    u = _vec(u0, "u0").copy()
    v = _vec(v0, "v0").copy()
    d = problem.d
    if u.size != d or v.size != d:
        raise ValueError(f"u0/v0 must have dimension {d}")
    X = problem.X
    us = np.empty((steps + 1, d))
    vs = np.empty((steps + 1, d))
    us[0], vs[0] = u, v
    n = steps
    diverged_at = None
    limit = BLOWUP * BLOWUP
    nu, nv = float(u @ u), float(v @ v)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            if alternating:
                u = u - lr * (nv * u - X @ v)
                nu = float(u @ u)
                v = v - lr * (nu * v - X @ u)
                nv = float(v @ v)
            else:
                gu = nv * u - X @ v
                gv = nu * v - X @ u
                u, v = u - lr * gu, v - lr * gv
                nu, nv = float(u @ u), float(v @ v)
            if not (nu + nv < limit):  # also catches nan/inf
                diverged_at, n = t, t
                break
            us[t + 1], vs[t + 1] = u, v
    us, vs = us[: n + 1].copy(), vs[: n + 1].copy()
    return Trajectory(
        method=name,
        lr=float(lr),
        losses=problem.losses(us, vs),
        us=us,
        vs=vs,
        diverged=diverged_at is not None,
        diverged_at=diverged_at,
    )


def simultaneous_gd(problem: BilinearProblem, u0, v0, lr: float, steps: int) -> Trajectory:
    """Eq. (1) of the paper: both blocks updated from the same iterate,
    ``u <- u - lr (u v^T - X) v``, ``v <- v - lr (v u^T - X) u``."""
    return _run_gd(problem, u0, v0, lr, steps, alternating=False, name="sim_gd")


def alternating_gd(problem: BilinearProblem, u0, v0, lr: float, steps: int) -> Trajectory:
    """Gauss–Seidel gradient steps: u first, then v with the *new* u."""
    return _run_gd(problem, u0, v0, lr, steps, alternating=True, name="alt_gd")


def ls_solve(problem: BilinearProblem, w: np.ndarray) -> tuple[np.ndarray, bool]:
    """``argmin_v 1/2 |w v^T - X|^2 = X^T w / |w|^2`` (X symmetric). For ``w = 0`` every v is a
    minimiser; the minimum-norm one (``v = 0``) is returned with ``degenerate=True``."""
    nn = float(w @ w)
    if not nn > 0.0:
        return np.zeros_like(w), True
    return (problem.X @ w) / nn, False


def alternating_ls(problem: BilinearProblem, u0, steps: int, v0=None) -> Trajectory:
    """Exact alternating minimisation as in Theorem 5: ``v_t = argmin_v L(u_t, v)``, then
    ``u_{t+1} = argmin_u L(u, v_t)``. One *iteration* is both solves.

    ``losses[0] = L(u_0, v_0)`` (``v_0`` only enters this number, for a common starting loss
    with the gradient methods; ``v_0 = None`` uses ``v_0 = argmin_v L(u_0, v)``),
    ``losses[t] = L(u_t, v_{t-1})`` for ``t >= 1``. ``extras['v_half'][t] = v_t`` (the v solved
    from ``u_t``), ``extras['half_losses'][t] = L(u_t, v_t)``; ``extras['breakdown']`` is the
    first iteration whose solve met a zero vector (then the iterates are 0 from there on).
    """
    u = _vec(u0, "u0").copy()
    d = problem.d
    if u.size != d:
        raise ValueError(f"u0 must have dimension {d}")
    v_init = ls_solve(problem, u)[0] if v0 is None else _vec(v0, "v0").copy()
    us = np.empty((steps + 1, d))
    vs = np.empty((steps + 1, d))
    v_half = np.empty((steps, d))
    us[0], vs[0] = u, v_init
    breakdown = None
    for t in range(steps):
        v, deg_v = ls_solve(problem, u)
        v_half[t] = v
        u, deg_u = ls_solve(problem, v)
        if (deg_v or deg_u) and breakdown is None:
            breakdown = t
        us[t + 1], vs[t + 1] = u, v
    half_losses = problem.losses(us[:steps], v_half)
    return Trajectory(
        method="alt_ls",
        lr=None,
        losses=problem.losses(us, vs),
        us=us,
        vs=vs,
        extras={"v_half": v_half, "half_losses": half_losses, "breakdown": breakdown},
    )


# --------------------------------------------------------------------------------------------
# Theorem 2 (= Theorem 5) and Theorem 3 checks
# --------------------------------------------------------------------------------------------


def paper_M(problem: BilinearProblem) -> np.ndarray:
    """M exactly as printed: ``[[1, a^T b], [a^T b, 1]]`` (it silently uses |a| = |b| = 1)."""
    c = problem.overlap
    return np.array([[1.0, c], [c, 1.0]])


def derived_K(problem: BilinearProblem) -> np.ndarray:
    """Matrix of X in the (a, b) coordinates: ``X A = A K`` with
    ``K = P G = [[a.b, b.b], [a.a, a.b]]``. One alternating iteration is
    ``u_{t+1} = X X u_t / (|u_t|^2 |v_t|^2)``, i.e. ``z_{t+1} = K^2 z_t / (|u_t|^2 |v_t|^2)``.
    ``K^2 = (P G P) G``; with |a| = |b| this is ``G^2`` (= M^2 for unit vectors): the paper's
    formula. ``P G P = [[b.b, a.b], [a.b, a.a]]`` is what the XX^T factorisation of §2.3 gives."""
    G = problem.gram
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    return P @ G


def _angle(x: np.ndarray, y: np.ndarray) -> float:
    """Angle between two 2-vectors, accurate near 0 (atan2 of cross and dot)."""
    cross = float(x[0] * y[1] - x[1] * y[0])
    dot = float(x @ y)
    return math.atan2(abs(cross), dot)


def _line_angle(x: np.ndarray, y: np.ndarray) -> float:
    """Angle between the lines spanned by x and y (sign-free), in [0, pi/2]."""
    a = _angle(x, y)
    return min(a, math.pi - a)


@dataclass
class Theorem2Check:
    steps: int
    z: np.ndarray  # (steps+1, 2) least-squares coordinates of u_t in (a, b)
    span_residual: np.ndarray  # |u_t - A z_t| / |u_t|
    rel_residual: dict[str, np.ndarray]  # formula -> |z_{t+1} - pred| / |z_{t+1}| per t
    angle: dict[str, np.ndarray]  # formula -> angle(z_{t+1}, pred) (radians) per t
    power_angle: np.ndarray  # angle(z_t, K^{2t} z_0) (lines)
    top_angle: np.ndarray  # angle(z_t, top eigenvector of K^2) (lines)
    top_eigvec_M: np.ndarray  # top eigenvector of the paper's M

    @property
    def max_rel_residual(self) -> dict[str, float]:
        return {k: float(np.max(v)) if v.size else 0.0 for k, v in self.rel_residual.items()}

    @property
    def max_angle(self) -> dict[str, float]:
        return {k: float(np.max(v)) if v.size else 0.0 for k, v in self.angle.items()}


def theorem2_check(problem: BilinearProblem, u0, steps: int = 30) -> Theorem2Check:
    """Numerical check of Theorem 2/5: ``z_{t+1} = M^2 z_t / (|u_t|^2 |v_t|^2)`` along exact
    alternating minimisation, ``v_t`` being the v solved from ``u_t``. Three predictions:

    * ``paper``: the paper's ``M = [[1, a.b], [a.b, 1]]``;
    * ``gram``: the naive generalisation ``G^2`` (Gram matrix of a, b);
    * ``derived``: ``K^2 = (P G)^2`` (exact for any a, b; equal to the other two for unit a, b).

    ``z_0`` is the least-squares coordinate vector of ``u_0``; if ``u_0`` has a component outside
    span(a, b) the recursion still holds from t = 0 because X annihilates that component (it
    only enters through ``|u_0|``)."""
    traj = alternating_ls(problem, u0, steps)
    if traj.extras["breakdown"] is not None:
        raise ValueError("alternating minimisation broke down (u or v hit 0); pick another u0")
    A = problem.basis
    Z = np.linalg.lstsq(A, traj.us.T, rcond=None)[0].T  # (steps+1, 2)
    span_res = np.linalg.norm(traj.us - Z @ A.T, axis=1) / np.linalg.norm(traj.us, axis=1)
    M = paper_M(problem)
    G = problem.gram
    K = derived_K(problem)
    mats = {"paper": M @ M, "gram": G @ G, "derived": K @ K}
    rel = {k: np.empty(steps) for k in mats}
    ang = {k: np.empty(steps) for k in mats}
    for t in range(steps):
        u, v = traj.us[t], traj.extras["v_half"][t]
        scale = float(u @ u) * float(v @ v)
        zn = Z[t + 1]
        for k, m2 in mats.items():
            pred = (m2 @ Z[t]) / scale
            rel[k][t] = float(np.linalg.norm(zn - pred) / np.linalg.norm(zn))
            ang[k][t] = _angle(zn, pred)
    # cumulative form z_t ∝ K^{2t} z_0 (normalise at every step to avoid overflow)
    power = np.empty(steps + 1)
    w = Z[0] / np.linalg.norm(Z[0])
    for t in range(steps + 1):
        power[t] = _line_angle(Z[t], w)
        w = mats["derived"] @ w
        w /= np.linalg.norm(w)
    evals, evecs = np.linalg.eig(mats["derived"])
    top = np.real(evecs[:, int(np.argmax(np.abs(evals)))])
    top_angle = np.array([_line_angle(z, top) for z in Z])
    m_vals, m_vecs = np.linalg.eigh(M)
    return Theorem2Check(
        steps=steps,
        z=Z,
        span_residual=span_res,
        rel_residual=rel,
        angle=ang,
        power_angle=power,
        top_angle=top_angle,
        top_eigvec_M=m_vecs[:, int(np.argmax(m_vals))],
    )


@dataclass
class Theorem3Check:
    max_norm_mismatch: float  # max_t | |u_t|^2 - |v_t|^2 | / |u_t|^2
    max_swap_residual: float  # max_t |v_t - A swap(z_t)| / |v_t|
    max_rel_residual: dict[str, float]  # 'derived' F_t and 'as_printed' (eta missing) F_t
    tau: np.ndarray
    nu: np.ndarray
    lemma1_max_rel_residual: float


def theorem3_check(problem: BilinearProblem, alpha0: float, beta0: float, lr: float, steps: int = 200) -> Theorem3Check:
    """GD from the paper's family ``u_0 = a0 a + b0 b, v_0 = b0 a + a0 b`` (unit a, b):
    checks ``|u_t| = |v_t|``, ``v_t = beta_t a + alpha_t b`` and
    ``z_{t+1} = F_t z_t, F_t = (1 - lr|u_t|^2) I + lr M`` (Theorem 3), against the version printed
    in the proof (the ``a^T b alpha_t`` term of the b-coefficient lacks ``lr``), and Lemma 1's
    ``tau_{t+1} = (1 + lr(1 + c - |u_t|^2)) tau_t``, ``nu_{t+1} = (1 + lr(1 - c - |u_t|^2)) nu_t``."""
    a, b = problem.a, problem.b
    u0 = alpha0 * a + beta0 * b
    v0 = beta0 * a + alpha0 * b
    traj = simultaneous_gd(problem, u0, v0, lr, steps)
    n = len(traj.losses) - 1
    A = problem.basis
    Z = np.linalg.lstsq(A, traj.us.T, rcond=None)[0].T
    nu2 = np.sum(traj.us**2, axis=1)
    nv2 = np.sum(traj.vs**2, axis=1)
    swapped = Z[:, ::-1] @ A.T
    c = problem.overlap
    M = paper_M(problem)
    res = {"derived": 0.0, "as_printed": 0.0}
    w_plus = np.array([1.0, 1.0]) / math.sqrt(2.0)
    w_minus = np.array([1.0, -1.0]) / math.sqrt(2.0)
    tau = Z @ w_plus
    nu = Z @ w_minus
    lemma = 0.0
    for t in range(n):
        s = nu2[t]
        F = (1.0 - lr * s) * np.eye(2) + lr * M
        F_pr = np.array([[1.0 + lr * (1.0 - s), lr * c], [c, 1.0 + lr * (1.0 - s)]])
        zn = Z[t + 1]
        res["derived"] = max(res["derived"], float(np.linalg.norm(zn - F @ Z[t]) / np.linalg.norm(zn)))
        res["as_printed"] = max(res["as_printed"], float(np.linalg.norm(zn - F_pr @ Z[t]) / np.linalg.norm(zn)))
        pt = (1.0 + lr * (1.0 + c - s)) * tau[t]
        pn = (1.0 + lr * (1.0 - c - s)) * nu[t]
        lemma = max(lemma, float(np.hypot(pt - tau[t + 1], pn - nu[t + 1]) / np.hypot(tau[t + 1], nu[t + 1])))
    return Theorem3Check(
        max_norm_mismatch=float(np.max(np.abs(nu2 - nv2) / nu2)),
        max_swap_residual=float(np.max(np.linalg.norm(traj.vs - swapped, axis=1) / np.sqrt(nv2))),
        max_rel_residual=res,
        tau=tau,
        nu=nu,
        lemma1_max_rel_residual=lemma,
    )


# --------------------------------------------------------------------------------------------
# starts, classification, experiment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    name: str
    u0: np.ndarray
    v0: np.ndarray
    kind: str  # 'generic' (full-measure) or 'special' (measure zero / extreme scale)
    note: str


def make_starts(problem: BilinearProblem, seed: int = 0, *, n_generic: int = 3, n_span: int = 2) -> dict[str, Start]:
    """The common starting points. Generic vectors are ``N(0, I/d)`` (norm about 1, so that
    ``lr (|u_0|^2 + |v_0|^2) <~ 2`` for the step sizes studied). ``e_1`` is the top singular
    direction, ``s = sign(lambda_top)``; for c = a^T b > 0, s = +1."""
    opt = rank_one_optimum(problem)
    d = problem.d
    rng = np.random.default_rng(10_000 + seed)
    e1, s = opt.e1, opt.sign

    def g() -> np.ndarray:
        return rng.standard_normal(d) / math.sqrt(d)

    def perp(w: np.ndarray) -> np.ndarray:
        w = w - e1 * (e1 @ w)
        if problem.aligned:  # e1 is a coordinate axis: make the zero exact
            w[np.argmax(np.abs(e1))] = 0.0
        return w

    out: dict[str, Start] = {}
    for i in range(n_generic):
        out[f"generic_{i}"] = Start(f"generic_{i}", g(), g(), "generic", "u0, v0 ~ N(0, I/d)")
    A = problem.basis
    for i in range(n_span):
        zu, zv = rng.standard_normal(2) / math.sqrt(2), rng.standard_normal(2) / math.sqrt(2)
        out[f"in_span_{i}"] = Start(f"in_span_{i}", A @ zu, A @ zv, "generic", "u0, v0 random in span(a, b)")
    al, be = rng.standard_normal(2) / math.sqrt(2)
    out["paper_family"] = Start(
        "paper_family", al * problem.a + be * problem.b, be * problem.a + al * problem.b, "generic",
        "paper eq. (2): u0 = al a + be b, v0 = be a + al b",
    )
    sg = 1.0 if rng.standard_normal() >= 0 else -1.0
    dm = _unit(problem.a - problem.b) * 0.8 * sg
    out["paper_tau0"] = Start(
        "paper_tau0", dm, -dm, "special",
        "paper eq. (2) with be = -al (tau_0 = 0): u0 = -v0 along a - b, |u0| = 0.8",
    )
    dp = _unit(problem.a + problem.b) * 0.8 * sg
    out["paper_nu0"] = Start(
        "paper_nu0", dp, dp.copy(), "special",
        "paper eq. (2) with be = al (nu_0 = 0): u0 = v0 along a + b, |u0| = 0.8",
    )
    out["small_norm"] = Start("small_norm", 1e-6 * g(), 1e-6 * g(), "special", "generic direction, norm ~1e-6")
    big = 2.0 * math.sqrt(opt.sigma1)
    out["large_norm"] = Start("large_norm", big * _unit(g()), big * _unit(g()), "special",
                              "generic direction, |u0| = |v0| = 2 sqrt(sigma1): lr(|u0|^2+|v0|^2) = 8 lr sigma1")
    w = g()
    out["u_eq_sv"] = Start("u_eq_sv", w.copy(), s * w, "special", "v0 = sign(lambda_top) u0 (optimal orientation)")
    w = g()
    out["u_eq_minus_sv"] = Start("u_eq_minus_sv", w.copy(), -s * w, "special",
                                 "v0 = -sign(lambda_top) u0 (wrong orientation)")
    out["u_perp_e1"] = Start("u_perp_e1", perp(g()), g(), "special", "u0 _|_ e1, v0 generic")
    out["both_perp_e1"] = Start("both_perp_e1", perp(g()), perp(g()), "special", "u0 _|_ e1 and v0 _|_ e1")
    out["u_zero"] = Start("u_zero", np.zeros(d), g(), "special", "u0 = 0, v0 generic")
    out["origin"] = Start("origin", np.zeros(d), np.zeros(d), "special", "u0 = v0 = 0")
    return out


def classify(problem: BilinearProblem, traj: Trajectory, *, rtol: float = 1e-9, window: int = 50) -> str:
    """'optimum' (gap <= rtol |X|^2/2 at the end) | 'diverged' | 'origin' / 'saddle' (loss flat over
    the last ``window`` iterates at that critical value) | 'converging' (still decreasing
    monotonically) | 'oscillating' (not monotone) | 'not_converged' (flat elsewhere)."""
    opt = rank_one_optimum(problem)
    if traj.diverged:
        return "diverged"
    scale = max(opt.origin_loss, 1e-300)
    tol = rtol * scale
    final = float(traj.losses[-1])
    if final - opt.loss_opt <= tol:
        return "optimum"
    tail = traj.losses[-window:]
    flat = float(tail.max() - tail.min()) <= tol
    uv = float(np.linalg.norm(traj.us[-1]) * np.linalg.norm(traj.vs[-1]))
    if flat and uv <= 1e-6 * math.sqrt(2 * scale):
        return "origin"
    if flat and abs(final - opt.saddle_loss) <= tol:
        return "saddle"
    if not flat:
        return "converging" if bool(np.all(np.diff(tail) <= 0.0)) else "oscillating"
    return "not_converged"


def _settle_step(gaps: np.ndarray, level: float) -> int | None:
    """First t from which the gap stays <= level up to the end (None if it does not end there)."""
    if gaps.size == 0 or not gaps[-1] <= level:
        return None
    above = np.flatnonzero(~(gaps <= level))
    return int(above[-1]) + 1 if above.size else 0


def _run_summary(problem: BilinearProblem, traj: Trajectory) -> dict:
    opt = rank_one_optimum(problem)
    tol = 1e-9 * opt.origin_loss
    gap = math.inf if traj.diverged else float(traj.losses[-1] - opt.loss_opt)
    u, v = traj.us[-1], traj.vs[-1]
    return {
        "method": traj.method,
        "lr": traj.lr,
        "final_gap": gap,
        "status": classify(problem, traj),
        "steps_to_tol": None if traj.diverged else _settle_step(traj.losses - opt.loss_opt, tol),
        "min_loss": float(np.min(traj.losses)),
        "init_lr_norm": None if traj.lr is None else traj.lr * float(traj.us[0] @ traj.us[0] + traj.vs[0] @ traj.vs[0]),
        "diverged_at": traj.diverged_at,
        "final_e1_components": [float(opt.e1 @ u), float(opt.e1 @ v)],
        "final_norms_sq": [float(u @ u), float(v @ v)],
        "breakdown": traj.extras.get("breakdown"),
    }


def _batched_final(problem, U, V, lr, steps, *, alternating: bool) -> tuple[np.ndarray, np.ndarray]:
    """Final loss gaps of many runs at once (rows of U, V); inf for diverged runs."""
    X = problem.X
    U = U.copy()
    V = V.copy()
    alive = np.ones(U.shape[0], dtype=bool)
    XT = X.T

    def prune() -> None:
        nonlocal alive
        size = np.maximum(np.abs(U).max(1), np.abs(V).max(1))
        bad = ~(size <= BLOWUP)  # also nan
        if bad.any():
            alive &= ~bad
            U[bad] = 0.0
            V[bad] = 0.0

    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            if alternating:
                U = U - lr * (np.einsum("ij,ij->i", V, V)[:, None] * U - V @ XT)
                V = V - lr * (np.einsum("ij,ij->i", U, U)[:, None] * V - U @ XT)
            else:
                GU = np.einsum("ij,ij->i", V, V)[:, None] * U - V @ XT
                GV = np.einsum("ij,ij->i", U, U)[:, None] * V - U @ XT
                U, V = U - lr * GU, V - lr * GV
            if t % 16 == 15:  # rows are independent: a blown-up row cannot affect the others
                prune()
                if not alive.any():
                    break
        prune()
    R = U[:, :, None] * V[:, None, :] - X
    loss = 0.5 * np.sum(R * R, axis=(1, 2))
    gap = loss - rank_one_optimum(problem).loss_opt
    gap[~alive] = np.inf
    return gap, ~alive


def lr_scan(problem: BilinearProblem, *, seed: int = 0, steps: int = 1000, n_starts: int = 8,
            lr_rel: Sequence[float] | None = None, tail: int = 50) -> dict:
    """Outcome counts of simultaneous and alternating GD over a grid of ``lr * sigma_1`` from
    ``n_starts`` generic starts: converged (gap <= 1e-9 |X|^2/2), diverged, other (bounded,
    not converged)."""
    opt = rank_one_optimum(problem)
    s1 = opt.sigma1
    grid = np.round(np.arange(0.05, 2.5, 0.1), 2) if lr_rel is None else np.asarray(lr_rel, dtype=_F)
    rng = np.random.default_rng(20_000 + seed)
    U = rng.standard_normal((n_starts, problem.d)) / math.sqrt(problem.d)
    V = rng.standard_normal((n_starts, problem.d)) / math.sqrt(problem.d)
    tol = 1e-9 * opt.origin_loss
    out = {"lr_rel": [float(h) for h in grid], "n_starts": n_starts, "steps": steps}
    for name, alt in (("sim_gd", False), ("alt_gd", True)):
        conv, div, other, worst = [], [], [], []
        for h in grid:
            gap, dv = _batched_final(problem, U, V, h / s1, steps, alternating=alt)
            c = int(np.sum(gap <= tol))
            conv.append(c)
            div.append(int(dv.sum()))
            other.append(n_starts - c - int(dv.sum()))
            worst.append(float(np.max(gap)))
        out[name] = {"converged": conv, "diverged": div, "other": other, "max_gap": worst}
    return out


@dataclass
class ExperimentResult:
    problem: BilinearProblem
    optimum: Rank1Optimum
    thresholds: dict
    starts: dict[str, Start]
    lrs: list[float]
    altgd_lrs: list[float]
    trajectories: dict[tuple[str, str], Trajectory]
    summary: dict  # JSON-able
    checks: dict = field(default_factory=dict)  # Theorem2Check objects (for the figure)


def _method_key(kind: str, h: float) -> str:
    return f"{kind}@{h:g}"


def run_experiment(
    problem: BilinearProblem,
    *,
    seed: int = 0,
    steps: int = 1000,
    lr_rel: Sequence[float] | None = DEFAULT_LR_REL,
    lrs: Sequence[float] | None = None,
    altgd_lr_rel: Sequence[float] = DEFAULT_ALTGD_LR_REL,
    alt_steps: int | None = None,
    with_aligned: bool = True,
    with_scan: bool = True,
    scan_steps: int | None = None,
) -> ExperimentResult:
    """Runs simultaneous GD (every step size), alternating GD and exact alternating least
    squares from the same starts; checks Theorems 2 and 3; optionally repeats the degenerate
    starts on the axis-aligned problem with the same ``a^T b`` (exact invariance) and scans lr.

    Step sizes: ``lrs`` (absolute) if given, else ``lr_rel`` in units of ``1/sigma_1``. Method
    keys are ``sim_gd@<lr*sigma_1>``, ``alt_gd@<lr*sigma_1>`` and ``alt_ls``."""
    opt = rank_one_optimum(problem)
    s1 = opt.sigma1
    if lrs is not None:
        lr_list = [float(x) for x in lrs]
    else:
        lr_list = [float(h) / s1 for h in (lr_rel or DEFAULT_LR_REL)]
    alt_list = [float(h) / s1 for h in altgd_lr_rel]
    alt_steps = steps if alt_steps is None else alt_steps
    starts = make_starts(problem, seed)
    trajs: dict[tuple[str, str], Trajectory] = {}
    table: dict[str, dict[str, dict]] = {}
    for name, st in starts.items():
        row = {}
        for lr in lr_list:
            key = _method_key("sim_gd", lr * s1)
            tr = simultaneous_gd(problem, st.u0, st.v0, lr, steps)
            trajs[(name, key)] = tr
            row[key] = _run_summary(problem, tr)
        for lr in alt_list:
            key = _method_key("alt_gd", lr * s1)
            tr = alternating_gd(problem, st.u0, st.v0, lr, steps)
            trajs[(name, key)] = tr
            row[key] = _run_summary(problem, tr)
        tr = alternating_ls(problem, st.u0, alt_steps, v0=st.v0)
        trajs[(name, "alt_ls")] = tr
        row["alt_ls"] = _run_summary(problem, tr)
        table[name] = row

    # Theorem 2 from a generic start and from the paper's family; non-unit (a, b) variant.
    t2 = theorem2_check(problem, starts["generic_0"].u0, steps=30)
    t2_family = theorem2_check(problem, starts["paper_family"].u0, steps=30)
    na, nb = problem.norms
    skew = BilinearProblem(1.7 * problem.a / na, 0.6 * problem.b / nb)
    t2_skew = theorem2_check(skew, starts["generic_0"].u0, steps=30)
    fam = starts["paper_family"]
    zf = np.linalg.lstsq(problem.basis, fam.u0, rcond=None)[0]
    t3 = theorem3_check(problem, float(zf[0]), float(zf[1]), 0.9 / s1, steps=min(steps, 400))

    def t2_dict(chk: Theorem2Check) -> dict:
        return {
            "max_rel_residual": chk.max_rel_residual,
            "max_angle_rad": chk.max_angle,
            "max_span_residual_t>=1": float(np.max(chk.span_residual[1:])),
            "final_angle_to_top_eigvec_rad": float(chk.top_angle[-1]),
            "max_angle_to_K2t_z0_rad": float(np.max(chk.power_angle)),
        }

    summary: dict = {
        "problem": {
            "d": problem.d,
            "seed": seed,
            "aligned": problem.aligned,
            "a_dot_b": problem.overlap,
            "norm_a": na,
            "norm_b": nb,
            "sigma1": opt.sigma1,
            "sigma2": opt.sigma2,
            "lambda_top": opt.lambda_top,
            "loss_opt": opt.loss_opt,
            "saddle_loss": opt.saddle_loss,
            "origin_loss": opt.origin_loss,
            "psd_rank1_loss": opt.psd_rank1_loss,
            "svd_loss_opt": svd_optimum(problem)["loss_opt"],
        },
        "thresholds": lr_thresholds(problem),
        "steps": steps,
        "alt_steps": alt_steps,
        "lrs": lr_list,
        "lr_rel": [lr * s1 for lr in lr_list],
        "altgd_lrs": alt_list,
        "starts": {k: {"kind": v.kind, "note": v.note} for k, v in starts.items()},
        "runs": table,
        "theorem2": {
            "generic_start": t2_dict(t2),
            "paper_family_start": t2_dict(t2_family),
            "non_unit_a_b(|a|=1.7,|b|=0.6)": t2_dict(t2_skew),
        },
        "theorem3": {
            "lr": 0.9 / s1,
            "max_norm_mismatch": t3.max_norm_mismatch,
            "max_swap_residual": t3.max_swap_residual,
            "max_rel_residual": t3.max_rel_residual,
            "lemma1_max_rel_residual": t3.lemma1_max_rel_residual,
        },
    }
    extra_checks = {"theorem2": t2, "theorem2_family": t2_family, "theorem2_skew": t2_skew}

    if with_aligned:
        ap = make_problem(d=problem.d, overlap=problem.overlap, aligned=True)
        a_starts = make_starts(ap, seed)
        a_opt = rank_one_optimum(ap)
        names = ["paper_tau0", "paper_nu0", "u_eq_minus_sv", "u_perp_e1", "both_perp_e1", "u_zero", "origin"]
        arows = {}
        for name in names:
            st = a_starts[name]
            row = {}
            for lr in lr_list:
                if lr * s1 < 1.0:
                    key = _method_key("sim_gd", lr * a_opt.sigma1)
                    tr = simultaneous_gd(ap, st.u0, st.v0, lr, steps)
                    trajs[("aligned:" + name, key)] = tr
                    row[key] = _run_summary(ap, tr)
            for lr in alt_list:
                key = _method_key("alt_gd", lr * a_opt.sigma1)
                tr = alternating_gd(ap, st.u0, st.v0, lr, steps)
                trajs[("aligned:" + name, key)] = tr
                row[key] = _run_summary(ap, tr)
            tr = alternating_ls(ap, st.u0, alt_steps, v0=st.v0)
            trajs[("aligned:" + name, "alt_ls")] = tr
            row["alt_ls"] = _run_summary(ap, tr)
            arows[name] = row
        summary["aligned"] = {"a_dot_b": ap.overlap, "runs": arows}
    if with_scan:
        summary["lr_scan"] = lr_scan(problem, seed=seed, steps=scan_steps or steps)
    res = ExperimentResult(problem, opt, summary["thresholds"], starts, lr_list, alt_list, trajs, summary, extra_checks)
    res.summary["claims"] = failure_claims(res)
    return res


# --------------------------------------------------------------------------------------------
# the failure statement, each clause checked against the runs
# --------------------------------------------------------------------------------------------


def failure_claims(res: ExperimentResult) -> list[dict]:
    """The statement about when simultaneous GD (and alternating LS) fails, clause by clause,
    each with ``holds`` evaluated on this experiment's numbers (``None`` = not tested here).

    ``s = sign(lambda_top) = sign(a^T b)``; the paper's failing family member is ``paper_tau0``
    (u0 = -v0 along a - b) for a^T b > 0 and ``paper_nu0`` (u0 = v0 along a + b) for a^T b < 0."""
    S = res.summary
    runs = S["runs"]
    opt = res.optimum
    c = res.problem.overlap
    tol = 1e-9 * opt.origin_loss
    first = next(iter(runs.values()))
    sim_keys = [k for k in first if k.startswith("sim_gd@")]
    alt_keys = [k for k in first if k.startswith("alt_gd@")]

    def h_of(k: str) -> float:
        return float(k.split("@")[1])

    below = [k for k in sim_keys if h_of(k) < 1.0]
    mid = [k for k in sim_keys if 1.0 < h_of(k) <= 2.0]
    above = [k for k in sim_keys if h_of(k) > 2.0]
    generic = [n for n, st in res.starts.items() if st.kind == "generic"]
    paper_bad, paper_good = ("paper_tau0", "paper_nu0") if c >= 0 else ("paper_nu0", "paper_tau0")
    escapers = ["small_norm", "u_eq_sv", "u_perp_e1", "u_zero", paper_good]  # not failures for GD
    claims: list[dict] = []

    def add(cid: str, text: str, holds: bool | None, evidence: str) -> None:
        if opt.top_is_degenerate:
            holds, evidence = None, "a^T b = 0: sigma1 = sigma2, the saddle and the optimum coincide"
        claims.append({"id": cid, "statement": text, "holds": holds, "evidence": evidence})

    def st(n: str, k: str, table=runs) -> str:
        return table[n][k]["status"]

    def never_below_saddle(n: str, k: str, table=runs) -> bool:
        return table[n][k]["min_loss"] >= opt.saddle_loss - tol

    # 1. small steps: convergence from everything that is not on a stable manifold of a saddle
    small = [n for n in generic + escapers if all(runs[n][k]["init_lr_norm"] <= 2.0 for k in below)]
    ok = all(st(n, k) == "optimum" for n in small for k in below) if below else None
    add(
        "GD-converges",
        "lr < 1/sigma1 and lr(|u0|^2+|v0|^2) <= 2: simultaneous GD reaches the optimum from generic starts "
        "(random; in span(a,b); the paper's family with tau0 != 0, i.e. Theorem 4's non-optimal limit is "
        "not reached) and also from u0 = 0 (v0 not in ker X), u0 _|_ e1 with v0 generic, "
        "v0 = s u0, and norm-1e-6 starts (slower: escape from the origin).",
        ok,
        f"{len(small)} starts x lr*sigma1 in {[h_of(k) for k in below]}",
    )
    # 2. no convergence above 1/sigma1
    ok = all(st(n, k) != "optimum" for n in runs for k in mid + above) if (mid or above) else None
    add(
        "GD-no-convergence-above-1/sigma1",
        "lr > 1/sigma1: simultaneous GD converges to the optimum from no start (every minimiser has "
        "sharpness |u|^2+|v|^2 >= 2 sigma1 > 2/lr).",
        ok,
        f"all {len(runs)} starts x lr*sigma1 in {[h_of(k) for k in mid + above]}",
    )
    ok = all(st(n, k) in ("oscillating", "diverged") for n in generic for k in mid) if mid else None
    add(
        "GD-bounded-or-divergent-in-(1,2]/sigma1",
        "1/sigma1 < lr <= 2/sigma1: generic starts end in a bounded non-convergent oscillation (period 2 "
        "just above 1/sigma1) or diverge, depending on the start; the diverging fraction grows with lr "
        "(lr_scan), so 2/sigma1 is not a safe bound for generic (unbalanced) starts.",
        ok,
        f"generic starts x lr*sigma1 in {[h_of(k) for k in mid]}",
    )
    ok = all(st(n, k) == "diverged" for n in generic for k in above) if above else None
    add(
        "GD-diverges-above-2/sigma1",
        "lr > 2/sigma1: simultaneous GD diverges (|u|,|v| -> inf) from generic starts.",
        ok,
        f"generic starts x lr*sigma1 in {[h_of(k) for k in above]}",
    )
    # 3. exact invariant sets
    ok = all(never_below_saddle(n, k) for n in ("u_eq_minus_sv", paper_bad) for k in sim_keys)
    ok = ok and all(
        abs(runs["origin"][k]["min_loss"] - opt.origin_loss) <= tol and st("origin", k) == "origin" for k in sim_keys
    )
    add(
        "GD-stuck-wrong-orientation",
        "For every lr: from v0 = -s u0 GD never gets below the saddle value sigma1^2/2 (the set u = -s v is "
        "invariant - it is fixed by the symmetry (u,v) -> (-s v, -s u) of L, exactly also in floating point - "
        "and on it u v^T has the wrong sign along e1); it converges to the sigma2 saddle when lr is small. "
        f"This is the paper's tau0 = 0 start when a^T b > 0 (nu0 = 0 when a^T b < 0; here: {paper_bad}). "
        "u0 = v0 = 0 stays at the origin.",
        ok,
        "min loss over the runs of u_eq_minus_sv, " + paper_bad + ": "
        + ", ".join(f"{min(runs[n][k]['min_loss'] for n in ('u_eq_minus_sv', paper_bad)):.6g}" for k in sim_keys)
        + f" vs saddle {opt.saddle_loss:.6g}",
    )
    al = S.get("aligned", {}).get("runs")
    if al:
        gk = [k for k in next(iter(al.values())) if k.startswith("sim_gd@")]
        ok = all(never_below_saddle("both_perp_e1", k, al) for k in gk)
        ok = ok and all(st("u_perp_e1", k, al) == "optimum" and st("u_zero", k, al) == "optimum" for k in gk)
        esc = [runs["both_perp_e1"][k]["steps_to_tol"] for k in below]
        ev = (f"axis-aligned problem (exact zeros): both_perp_e1 min loss "
              f"{[round(al['both_perp_e1'][k]['min_loss'], 9) for k in gk]}, u_perp_e1 "
              f"{[st('u_perp_e1', k, al) for k in gk]}; random basis: both_perp_e1 escapes by rounding, "
              f"settles at the optimum after {esc} steps")
    else:
        ok, ev = None, "aligned runs disabled"
    add(
        "GD-stuck-both-perp-e1",
        "e1^T u0 = e1^T v0 = 0 is invariant (the e1-components obey a linear homogeneous recursion): GD never "
        "gets below sigma1^2/2. Only u0 _|_ e1 (or only v0) is not enough: GD escapes. In a generic basis "
        "the invariance is broken by rounding (~1e-16) and GD leaves the saddle after a plateau of about "
        "log(1e16)/log(1 + lr(sigma1 - sigma2)) steps.",
        ok,
        ev,
    )
    if al:
        ok = st("u_perp_e1", "alt_ls", al) == "saddle" and st("u_zero", "alt_ls", al) == "origin"
        ok = ok and st(paper_bad, "alt_ls", al) == "saddle"
        ok = ok and all(runs[n]["alt_ls"]["status"] == "optimum"
                        for n in generic + ["u_eq_minus_sv", "large_norm", "small_norm", "u_eq_sv"])
        ev = (f"aligned: u_perp_e1 -> {st('u_perp_e1', 'alt_ls', al)}, {paper_bad} -> "
              f"{st(paper_bad, 'alt_ls', al)}, u_zero -> {st('u_zero', 'alt_ls', al)}; random basis: u_perp_e1 "
              f"settles at the optimum after {runs['u_perp_e1']['alt_ls']['steps_to_tol']} iterations (rounding)")
    else:
        ok, ev = None, "aligned runs disabled"
    add(
        "ALT-LS-fails-iff-u0-perp-e1",
        "Exact alternating minimisation depends on u0 only and fails iff e1^T u0 = 0 (it is power iteration "
        "on X X^T: stuck at the sigma2 saddle; u0 in ker X, e.g. u0 = 0, breaks down to v = 0). It converges "
        "from v0 = -s u0 and from large/small norms, where GD fails or needs a small lr. In the paper's family "
        "(eq. (2)) GD and alternating minimisation fail on the same set (tau0 = 0 for a^T b > 0).",
        ok,
        ev,
    )
    mid_alt = [k for k in alt_keys if 1.0 < h_of(k) < 2.0]
    ok = all(st(n, k) == "optimum" for n in generic for k in mid_alt) if mid_alt else None
    add(
        "ALT-GD-larger-step",
        "Alternating gradient steps (u, then v with the new u) are linearly stable at the balanced minimiser "
        "up to lr < 2/sigma1 (eigenvalues 1 and (1 - lr sigma1)^2; at an unbalanced one (1 - lr|v|^2)(1 - "
        "lr|u|^2), and out-of-span directions need lr|u|^2, lr|v|^2 < 2) and converge from generic starts at "
        "step sizes in (1/sigma1, 2/sigma1) where simultaneous GD cannot; globally, start-dependent "
        "divergence sets in well before 2/sigma1 (lr_scan).",
        ok,
        f"generic starts x alt_gd lr*sigma1 in {[h_of(k) for k in mid_alt]}",
    )
    pairs = [(n, k, runs[n][k]) for n in runs for k in below if n != "origin"]
    lo = [r for n, k, r in pairs if r["init_lr_norm"] <= 2.0]
    hi = [r for n, k, r in pairs if r["init_lr_norm"] >= 6.0]
    ok = (all(r["status"] != "diverged" for r in lo) and all(r["status"] == "diverged" for r in hi)) if hi else None
    add(
        "GD-large-init",
        "Initial scale: with lr < 1/sigma1, GD did not diverge from any start with lr(|u0|^2+|v0|^2) <= 2 and "
        "diverged from every start with lr(|u0|^2+|v0|^2) >= 6 (in between it depends on the start).",
        ok,
        f"{len(lo)} runs with lr(|u0|^2+|v0|^2) <= 2, {len(hi)} with >= 6 "
        f"(large_norm: {[round(runs['large_norm'][k]['init_lr_norm'], 3) for k in below]})",
    )
    return claims


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------


def plot_experiment(res: ExperimentResult, path) -> None:
    """Save a PNG to ``path`` (file name or binary file object). 2x2 figure: (a) generic start: gap to optimum vs iteration, every method; (b) degenerate
    starts, GD vs alternating LS; (c) Theorem-2 residual and angle; (d) lr scan."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    floor = 1e-18
    opt = res.optimum
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    name = "generic_0"
    for (n, key), tr in res.trajectories.items():
        if n != name:
            continue
        gap = np.maximum(tr.losses - opt.loss_opt, floor)
        style = "-" if key.startswith("sim_gd") else ("--" if key.startswith("alt_gd") else "-")
        lw = 2.5 if key == "alt_ls" else 1.2
        label = key + (f" (diverged at step {tr.diverged_at})" if tr.diverged else "")
        ax.semilogy(np.arange(len(gap)), gap, style, lw=lw, label=label)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_ylim(1e-18, 1e4)
    ax.set_xlabel("iteration (alt_ls: one v-solve + one u-solve)")
    ax.set_ylabel("L - L*")
    ax.set_title(f"(a) same generic start, sigma1={opt.sigma1:.3g}, lr in units of 1/sigma1")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    gd_key = None
    below = [lr for lr in res.lrs if lr * opt.sigma1 < 1.0]
    if below:
        gd_key = _method_key("sim_gd", below[-1] * opt.sigma1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(["u_eq_minus_sv", "u_perp_e1", "both_perp_e1", "small_norm"]):
        col = colors[i % len(colors)]
        for key, style in ((gd_key, "-"), ("alt_ls", "--")):
            if key is None or (n, key) not in res.trajectories:
                continue
            tr = res.trajectories[(n, key)]
            gap = np.maximum(tr.losses - opt.loss_opt, floor)
            ax.semilogy(np.arange(len(gap)), gap, style, color=col, label=f"{n}: {key}")
    ax.axhline(opt.saddle_loss - opt.loss_opt, color="k", lw=0.6, ls=":", label="saddle gap")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_ylim(1e-18, 1e4)
    ax.set_xlabel("iteration")
    ax.set_ylabel("L - L*")
    ax.set_title("(b) special starts (random basis): GD solid, alternating LS dashed")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    chk = res.checks["theorem2"]
    skew = res.checks["theorem2_skew"]
    t = np.arange(chk.steps)
    tiny = 1e-20
    ax.semilogy(t, np.maximum(chk.rel_residual["paper"], tiny), "o-", ms=3, label="unit a,b: paper M^2")
    ax.semilogy(t, np.maximum(chk.rel_residual["derived"], tiny), "x--", ms=3, label="unit a,b: derived (PG)^2")
    ax.semilogy(t, np.maximum(skew.rel_residual["paper"], tiny), "s-", ms=3, label="|a|=1.7,|b|=0.6: paper M^2")
    ax.semilogy(t, np.maximum(skew.rel_residual["gram"], tiny), "^-", ms=3, label="|a|=1.7,|b|=0.6: Gram G^2")
    ax.semilogy(t, np.maximum(skew.rel_residual["derived"], tiny), "d--", ms=3, label="|a|=1.7,|b|=0.6: derived (PG)^2")
    ax.semilogy(np.arange(chk.steps + 1), np.maximum(chk.top_angle, tiny), "k:", label="angle(z_t, top eigvec) [rad]")
    ax.set_xlabel("alternating iteration t")
    ax.set_ylabel("|z_{t+1} - pred| / |z_{t+1}|")
    ax.set_title("(c) Theorem 2: z_{t+1} = M^2 z_t / (|u_t|^2 |v_t|^2)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    scan = res.summary.get("lr_scan")
    if scan:
        h = np.array(scan["lr_rel"])
        n0 = scan["n_starts"]
        ax.plot(h, np.array(scan["sim_gd"]["converged"]) / n0, "o-", label="sim GD converged")
        ax.plot(h, np.array(scan["sim_gd"]["diverged"]) / n0, "x-", label="sim GD diverged")
        ax.plot(h, np.array(scan["alt_gd"]["converged"]) / n0, "s--", label="alt GD converged")
        ax.plot(h, np.array(scan["alt_gd"]["diverged"]) / n0, "^--", label="alt GD diverged")
        for x in (1.0, 2.0):
            ax.axvline(x, color="k", lw=0.6, ls=":")
        ax.set_xlabel("lr * sigma1")
        ax.set_ylabel(f"fraction of {n0} generic starts")
        ax.set_title(f"(d) step-size scan ({scan['steps']} steps)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)


def to_jsonable(obj):
    """numpy -> python; non-finite floats -> None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj
