"""``hires-vlm theory bilinear``: the bilinear study of SliME §2.3 / Appendix C.

Wiring (done by the top-level CLI)::

    theory = top_subparsers.add_parser("theory").add_subparsers(dest="theory_cmd", required=True)
    hires_vlm.theory.cli.add_parser(theory)          # registers "bilinear", sets func=run

Stand-alone: ``python -m hires_vlm.theory.cli bilinear --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence

from .bilinear import (
    DEFAULT_ALTGD_LR_REL,
    DEFAULT_LR_REL,
    ExperimentResult,
    brute_force_optimum,
    make_problem,
    plot_experiment,
    run_experiment,
    to_jsonable,
)

__all__ = ["add_parser", "run", "main", "format_report"]

_CODES = {
    "optimum": "O",
    "saddle": "S",
    "origin": "Z",
    "diverged": "D",
    "oscillating": "~",
    "converging": ">",
    "not_converged": "?",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bilinear`` on an argparse ``_SubParsersAction``; returns the new parser."""
    p = subparsers.add_parser(
        "bilinear",
        help="SliME §2.3: simultaneous GD vs alternating optimisation on min |u v^T - (a b^T + b a^T)|^2",
        description=(
            "Simultaneous gradient descent vs alternating optimisation on the rank-one problem of "
            "SliME §2.3 (X = a b^T + b a^T). Prints final losses, the Theorem-2 check and the tested "
            "statement of when simultaneous GD fails; writes bilinear.json and bilinear.png into --out."
        ),
    )
    p.add_argument("--out", default=os.path.join("outputs", "theory", "bilinear"), help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed for a, b and the starts (default 0)")
    p.add_argument("--dim", type=int, default=16, help="dimension d of u, v, a, b (default 16)")
    p.add_argument("--steps", type=int, default=600, help="iterations per run (default 600)")
    p.add_argument(
        "--lr", type=float, nargs="+", default=None, metavar="ETA",
        help="absolute step size(s) for simultaneous GD (overrides --lr-rel)",
    )
    p.add_argument(
        "--lr-rel", type=float, nargs="+", default=list(DEFAULT_LR_REL), metavar="H",
        help="step sizes for simultaneous GD in units of 1/sigma_1 (default %(default)s)",
    )
    p.add_argument(
        "--alt-lr-rel", type=float, nargs="+", default=list(DEFAULT_ALTGD_LR_REL), metavar="H",
        help="step sizes for alternating GD in units of 1/sigma_1 (default %(default)s)",
    )
    p.add_argument("--overlap", type=float, default=0.5, help="a^T b for unit a, b (default 0.5)")
    p.add_argument("--random-overlap", action="store_true", help="draw b uniformly instead (a^T b ~ N(0, 1/d))")
    p.add_argument("--no-aligned", action="store_true", help="skip the exact-arithmetic (axis-aligned) runs")
    p.add_argument("--no-scan", action="store_true", help="skip the step-size scan")
    p.add_argument("--no-plot", action="store_true", help="do not write bilinear.png")
    p.set_defaults(func=run)
    return p


def _cell(r: dict) -> str:
    gap = r["final_gap"]
    g = "inf" if gap is None or not math.isfinite(gap) else f"{gap:.1e}"
    return f"{g} {_CODES.get(r['status'], '?')}"


def _table(rows: dict[str, dict[str, dict]], title: str) -> list[str]:
    cols = list(next(iter(rows.values())).keys())
    w0 = max(len(n) for n in rows) + 1
    w = max(11, max(len(c) for c in cols) + 1)
    out = [title, " " * w0 + "".join(c.rjust(w) for c in cols)]
    for n, row in rows.items():
        out.append(n.ljust(w0) + "".join(_cell(row[c]).rjust(w) if c in row else "-".rjust(w) for c in cols))
    return out


def format_report(res: ExperimentResult, brute: float | None = None) -> str:
    S = res.summary
    P = S["problem"]
    T = S["thresholds"]
    L: list[str] = []
    L.append(
        f"bilinear study (SliME §2.3): d={P['d']} seed={P['seed']} a.b={P['a_dot_b']:.6g} "
        f"|a|={P['norm_a']:.6g} |b|={P['norm_b']:.6g}"
    )
    L.append(
        f"sigma1={P['sigma1']:.6g} sigma2={P['sigma2']:.6g} lambda_top={P['lambda_top']:.6g} "
        f"(optimal v = {'+' if P['lambda_top'] >= 0 else '-'}(sigma1/|u|^2) u)"
    )
    bf = "" if brute is None else f", brute force {brute:.12g}"
    L.append(
        f"optimum L* = sigma2^2/2 = {P['loss_opt']:.12g} (SVD {P['svd_loss_opt']:.12g}{bf}); "
        f"saddle sigma1^2/2 = {P['saddle_loss']:.6g}; origin |X|^2/2 = {P['origin_loss']:.6g}; "
        f"best PSD u u^T: {P['psd_rank1_loss']:.6g}"
    )
    L.append(
        f"thresholds: sim GD converges iff lr < 1/sigma1 = {T['sim_gd_converge']:.6g}; balanced divergence "
        f"at 2/sigma1 = {T['sim_gd_diverge_balanced']:.6g}; alt GD local limit 2/sigma1"
    )
    L.append("")
    L.extend(
        _table(
            S["runs"],
            f"final L - L* after {S['steps']} steps (alt_ls: {S['alt_steps']} iterations); method@lr*sigma1; "
            "O optimum, S saddle, Z origin, D diverged, ~ oscillating, > still converging",
        )
    )
    if "aligned" in S:
        L.append("")
        L.extend(
            _table(
                S["aligned"]["runs"],
                "same a.b, axis-aligned a, b (e1 a coordinate axis): degenerate starts in exact arithmetic",
            )
        )
    L.append("")
    L.append("Theorem 2 (z_{t+1} = M^2 z_t / (|u_t|^2 |v_t|^2) along exact alternating minimisation, 30 iterations):")
    for k, v in S["theorem2"].items():
        r, a = v["max_rel_residual"], v["max_angle_rad"]
        L.append(
            f"  {k}: max rel. residual paper M^2 {r['paper']:.2e}, Gram G^2 {r['gram']:.2e}, derived (PG)^2 "
            f"{r['derived']:.2e}; max angle paper {a['paper']:.2e} rad, derived {a['derived']:.2e} rad; "
            f"final angle to top eigvec {v['final_angle_to_top_eigvec_rad']:.1e}"
        )
    t3 = S["theorem3"]
    L.append(
        f"Theorem 3 (GD in the paper's family, lr={t3['lr']:.4g}): | |u|^2-|v|^2 |/|u|^2 <= {t3['max_norm_mismatch']:.1e}, "
        f"v_t = beta_t a + alpha_t b to {t3['max_swap_residual']:.1e}, z_(t+1) = F_t z_t to "
        f"{t3['max_rel_residual']['derived']:.1e} (as printed in the proof, eta missing: "
        f"{t3['max_rel_residual']['as_printed']:.2e}), Lemma 1 to {t3['lemma1_max_rel_residual']:.1e}"
    )
    if "lr_scan" in S:
        sc = S["lr_scan"]
        L.append("")
        L.append(f"step-size scan, {sc['n_starts']} generic starts, {sc['steps']} steps (converged/diverged):")
        hs = " ".join(f"{h:5.2f}" for h in sc["lr_rel"])
        L.append(f"  lr*sigma1 {hs}")
        for m in ("sim_gd", "alt_gd"):
            cells = " ".join(f"{c:>2d}/{d:<2d}" for c, d in zip(sc[m]["converged"], sc[m]["diverged"]))
            L.append(f"  {m:9s} {cells}")
    L.append("")
    L.append("When does simultaneous GD fail? (each clause checked on the runs above)")
    for c in S["claims"]:
        mark = {True: "confirmed", False: "NOT CONFIRMED", None: "not tested"}[c["holds"]]
        L.append(f"  [{mark}] {c['id']}: {c['statement']}")
        L.append(f"      evidence: {c['evidence']}")
    return "\n".join(L)


def _atomic_write_bytes(path: str, writer) -> None:
    """``writer(handle)`` into a temporary file beside ``path``, renamed over it when done (readers never
    see a partial file; ``fsio.atomic_open``)."""
    from .. import fsio

    with fsio.atomic_open(path, "wb") as fh:
        writer(fh)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.dim < 2:
        print("error: --dim must be >= 2", file=sys.stderr)
        return 2
    if args.steps < 60:
        print("error: --steps must be >= 60", file=sys.stderr)
        return 2
    lrs = getattr(args, "lr", None)
    if lrs is not None and any(not (x > 0) for x in lrs):
        print("error: --lr values must be > 0", file=sys.stderr)
        return 2
    overlap = None if args.random_overlap else args.overlap
    try:
        problem = make_problem(d=args.dim, seed=args.seed, overlap=overlap)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = run_experiment(
        problem,
        seed=args.seed,
        steps=args.steps,
        lr_rel=args.lr_rel,
        lrs=lrs,
        altgd_lr_rel=args.alt_lr_rel,
        with_aligned=not args.no_aligned,
        with_scan=not args.no_scan,
    )
    brute = brute_force_optimum(problem, seed=args.seed)
    res.summary["problem"]["brute_force_loss_opt"] = brute
    print(format_report(res, brute))

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "bilinear.json")
    payload = json.dumps(to_jsonable(res.summary), indent=1, allow_nan=False).encode()
    _atomic_write_bytes(json_path, lambda fh: fh.write(payload))
    written = [json_path]
    rc = 0
    if not args.no_plot:
        png_path = os.path.join(args.out, "bilinear.png")
        try:
            _atomic_write_bytes(png_path, lambda fh: plot_experiment(res, fh))
            written.append(png_path)
        except ImportError as exc:  # matplotlib is a declared dependency, but say it plainly
            print(f"error: cannot draw {png_path}: {exc}", file=sys.stderr)
            rc = 1
    print(f"\nwrote {', '.join(written)} in {time.perf_counter() - t0:.1f} s")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hires-vlm theory")
    sub = parser.add_subparsers(dest="theory_cmd", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
