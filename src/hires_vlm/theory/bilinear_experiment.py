"""The experiment of the bilinear study: starts, classification of runs, learning-rate scans, ``run_experiment``. (Part of :mod:`hires_vlm.theory.bilinear`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .bilinear_dynamics import (
    Theorem2Check,
    Trajectory,
    alternating_gd,
    alternating_ls,
    simultaneous_gd,
    theorem2_check,
    theorem3_check,
)
from .bilinear_problem import (
    _F,
    BLOWUP,
    DEFAULT_ALTGD_LR_REL,
    DEFAULT_LR_REL,
    BilinearProblem,
    Rank1Optimum,
    _unit,
    lr_thresholds,
    make_problem,
    rank_one_optimum,
    svd_optimum,
)


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
    from .bilinear_report import (
        failure_claims,  # the report reads experiment results: imported here, not at the top
    )

    res.summary["claims"] = failure_claims(res)
    return res
