"""What the bilinear study reports: the failure statement checked clause by clause, the figure, JSON conversion. (Part of :mod:`hires_vlm.theory.bilinear`.)"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .bilinear_experiment import ExperimentResult, _method_key


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
