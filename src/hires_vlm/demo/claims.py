"""The papers' claims against the demo's rows: the paper's figure, ours with its spread over seeds, a verdict.

Each claim compares rows of one suite on overall accuracy, paired by seed: Δ = better − worse per
seed, its mean and standard deviation. The verdict uses the half-width of a 95 % interval of the
mean (t · sd / √n): Δ above it *agree*, below its negative *disagree*, between *within noise* (also
for a claim of "equal or better": a difference too small to resolve does not show equality). A
claim of fewer tokens disagrees when the tokens are not fewer. With one seed there is no spread and
the verdict says so. The papers' figures are the averages of their own ablation tables (quoted
with the rows compared; SliME Tables 3–4 average POPE, GQA, SQA, VQA^T and AMBER, INF-LLaVA
Tables 4–6 POPE, SEED, MM-Vet and LLaVA-W — unweighted means of the published cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# two-sided 95 % Student t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    statement: str
    suite: str
    better: str
    worse: str
    paper_figure: str
    at_least_equal: bool = False  # "equal or better": within noise agrees
    fewer_tokens: bool = False  # the better row must also use fewer visual tokens


CLAIMS: tuple[Claim, ...] = (
    Claim("S1", "SliME", "fewer tokens than LLaVA-HD at equal or better accuracy", "main", "slime", "llava_hd",
          "T4 Alternating 75.3 vs LLaVA-HD 74.0 (tokens not reported)", at_least_equal=True, fewer_tokens=True),
    Claim("S2", "SliME", "alternating stages ≥ end-to-end", "slime-ablations", "alternating", "end-to-end",
          "T4 Alternating 75.3 vs E2E 72.9"),
    Claim("S3", "SliME", "global tokens needed (both > local only)", "slime-ablations", "alternating",
          "alternating, local only", "T4 both 75.3 vs only local 71.9"),
    Claim("S4", "SliME", "local tokens needed (both > global only)", "slime-ablations", "alternating",
          "alternating, global only", "T4 both 75.3 vs only global 73.9"),
    Claim("S5", "SliME", "γ drops tokens at small cost (γ 0.75 ≈ γ 1)", "slime-ablations", "γ = 0.75", "γ = 1.0",
          "T3 γ 75 % 75.5 vs all 144 queries 75.2", at_least_equal=True, fewer_tokens=True),
    Claim("S6", "SliME", "more local queries help (N_q 16 > 4)", "slime-ablations", "alternating", "N_q = 4",
          "T3 N_q 144 75.2 vs 64 74.7 (196: 74.4, not monotone)"),
    Claim("I1", "INF-LLaVA", "dual cropping > local cropping only", "inf-llava-ablations",
          "official (both directions)", "local cropping only", "T6 DCM+DEM 64.4 vs DCM local 59.2"),
    Claim("I2", "INF-LLaVA", "dual cropping > global cropping only", "inf-llava-ablations",
          "official (both directions)", "global cropping only", "T6 DCM+DEM 64.4 vs DCM global 62.9"),
    Claim("I3", "INF-LLaVA", "enhancement (DEM) > none", "inf-llava-ablations", "official (both directions)",
          "crops fused by addition", "T6 DCM+DEM 64.4 vs DCM (add) 58.4"),
    Claim("I4", "INF-LLaVA", "both directions > global-query only", "inf-llava-ablations",
          "official (both directions)", "enhance global only", "T4 DEM 64.9 vs DEM w/ global 62.4"),
    Claim("I5", "INF-LLaVA", "both directions > local-query only", "inf-llava-ablations",
          "official (both directions)", "enhance local only", "T4 DEM 64.9 vs DEM w/ local 62.5"),
    Claim("I6", "INF-LLaVA", "linear-concat fusion > addition", "inf-llava-ablations", "fusion linear-concat",
          "fusion weighted add", "T5 linear-concat 64.4 vs weighted add 63.0 (best of the rest)"),
)


def _t95(n: int) -> float:
    return _T95.get(n - 1, 1.96)


def judge(claim: Claim, per_seed: dict[str, list[dict]]) -> dict:
    """``per_seed[row name]``: one dict per seed (``overall``, ``visual_tokens``), seeds in the same order."""
    a, b = per_seed.get(claim.better), per_seed.get(claim.worse)
    if not a or not b:
        return {"claim": claim, "verdict": "not run", "delta": None}
    n = min(len(a), len(b))
    deltas = [a[k]["overall"] - b[k]["overall"] for k in range(n)]
    mean = sum(deltas) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1)) if n > 1 else None
    half = _t95(n) * sd / math.sqrt(n) if sd is not None else None
    tokens_a = sum(r["visual_tokens"] for r in a[:n]) / n
    tokens_b = sum(r["visual_tokens"] for r in b[:n]) / n
    if half is None:
        verdict = "one seed: no spread"
    elif claim.fewer_tokens and tokens_a >= tokens_b:
        verdict = "disagree (not fewer tokens)"
    elif mean > half:
        verdict = "agree"
    elif mean < -half:
        verdict = "disagree"
    else:  # not separable from noise: neither agreement (an equality is not shown by it) nor disagreement
        verdict = "within noise"
    return {"claim": claim, "n": n, "delta": mean, "sd": sd, "half_width": half, "verdict": verdict,
            "better": sum(r["overall"] for r in a[:n]) / n, "worse": sum(r["overall"] for r in b[:n]) / n,
            "tokens": (tokens_a, tokens_b)}


def claims_table(per_suite: dict[str, dict[str, list[dict]]]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, body and raw judgements of every claim whose suite ran."""
    header = ["claim", "paper", "paper's figure", "ours: better vs worse (overall %)", "Δ ± sd (seeds)", "verdict"]
    body, raw = [], []
    for c in CLAIMS:
        if c.suite not in per_suite:
            continue
        j = judge(c, per_suite[c.suite])
        raw.append(j)
        if j["delta"] is None:
            body.append([f"{c.id} {c.statement}", c.paper, c.paper_figure, "—", "—", j["verdict"]])
            continue
        ours = f"{c.better} {j['better']:.1f} vs {c.worse} {j['worse']:.1f}"
        if c.fewer_tokens:
            ours += f" ({j['tokens'][0]:.0f} vs {j['tokens'][1]:.0f} tokens)"
        spread = f"{j['delta']:+.1f} ± {j['sd']:.1f} ({j['n']})" if j["sd"] is not None else f"{j['delta']:+.1f} (1)"
        body.append([f"{c.id} {c.statement}", c.paper, c.paper_figure, ours, spread, j["verdict"]])
    return header, body, raw
