"""Optimisers on the bilinear problem (simultaneous / alternating GD, alternating least squares) and the checks of Theorems 2 and 3. (Part of :mod:`hires_vlm.theory.bilinear`.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .bilinear_problem import BLOWUP, BilinearProblem, _vec


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
