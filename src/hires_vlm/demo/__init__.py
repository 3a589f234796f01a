"""``hires-vlm demo``: the main job — what high resolution buys and what each method costs.

One command, a laptop CPU, no downloads: write the seeded synthetic benchmark, train tiny models of
every method under the **same budget** (same data, same order, same optimizer steps per stage,
same batch size and learning rates), evaluate each on the held-out split, and print and save a
table — accuracy per task family, visual tokens per image, training time, inference images/s —
with two figures (accuracy against visual tokens; a gallery of test images with every model's
answer and the SliME router's kept tokens). ``--suite`` runs the ablations shaped like the
papers' tables instead. Rerunning with the same seed reproduces the accuracy and token columns
(timings vary); finished models are reused, so an interrupted run continues.

Regimes (``--regime``). ``foundation`` (default), the papers' regime: every model starts from the
shipped tiny foundation (``hires_vlm.foundation``: a contrastively pretrained tower and a
text-pretrained LM), the tower stays **frozen**, and the published stages run — stage 1 aligns
the connector on captions (``plain`` template; LLaVA's projector, INF-LLaVA's projector and
enhancement, SliME's stages I–II as its official scripts split them: MLP expert, resampler
expert, local compressor), stage 2 tunes connector + LM on the instructions; 30 % / 70 % of the
steps. ``scratch``: random weights, every module trains in every stage (baselines one stage,
SliME 30/30/40 % alternating).
"""

from __future__ import annotations

__all__ = ["BUDGETS", "SUITES", "Budget", "DemoResult", "Entry", "Row", "run_demo", "stages_for"]

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .claims import claims_table
from .entries import evaluate_entry, train_entry
from .report import (
    _atomic_json,
    _atomic_write,
    format_table,
    markdown_table,
    save_accuracy_figure,
    save_gallery,
    table_rows,
)
from .suites import (
    BUDGETS,
    FAMILY_ORDER,
    REGIMES,
    SUITES,
    Budget,
    Entry,
    Row,
    _slug,
    stages_for,
)


# ---------------------------------------------------------------------------------------- the run
@dataclass
class DemoResult:
    suite: str
    rows: list[Row]
    table: str
    out_dir: str
    files: dict[str, str]
    chance: dict = field(default_factory=dict)
    seed: int = 0
    claims: str = ""  # the claims table (text), when the suite has claims


def run_demo(suite: str = "main", *, quick: bool = False, out_dir: str | None = None, seed: int = 0,
             seeds: int = 1, only: Sequence[str] | None = None, steps: int | None = None,
             train_per_family: int | None = None, test_per_family: int | None = None, progress: bool = True,
             figures: bool = True, regime: str | None = None, foundation: str = "shipped",
             feature_cache: str | None = None, feature_cache_gb: float = 8.0) -> DemoResult:
    """Run a suite for ``seeds`` seeds (``seed``, ``seed + 1``, …; each its own benchmark draw and
    initialisation). One seed writes into ``out_dir``; several into ``out_dir/seed-<k>`` and the
    table of means ± standard deviations into ``out_dir``. The claims table compares the rows.

    ``feature_cache``: a folder where the frozen tower's features of every training view are kept
    (``vision/feature_cache.py``, bounded by ``feature_cache_gb``), shared by every stage and every
    model whose views and tower are the same; the foundation regime only (scratch trains the tower).
    It changes no result — a hit is the tower's output bit for bit — so it is not part of a model's
    recipe key."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    out_dir = out_dir or os.path.join("runs", "demo-quick" if quick else "demo")
    kw = dict(quick=quick, only=only, steps=steps, train_per_family=train_per_family,
              test_per_family=test_per_family, progress=progress, regime=regime, foundation=foundation,
              feature_cache=feature_cache, feature_cache_gb=feature_cache_gb)
    if seeds == 1:
        res = _run_seed(suite, out_dir=out_dir, seed=seed, figures=figures, **kw)
        per_seed = [res]
    else:
        per_seed = []
        for k in range(seeds):
            print(f"=== seed {seed + k} ({k + 1} of {seeds}) ===", flush=True)
            per_seed.append(_run_seed(suite, out_dir=os.path.join(out_dir, f"seed-{seed + k}"), seed=seed + k,
                                      figures=figures and k == 0, **kw))
        res = _aggregate(suite, per_seed, out_dir, figures)
    by_row = {r.name: [{"overall": x.overall, "visual_tokens": x.visual_tokens}
                       for x in (next(y for y in p.rows if y.name == r.name) for p in per_seed)] for r in res.rows}
    header, body, _ = claims_table({suite: by_row})
    if body:
        res.claims = format_table(header, body, left=True)
        res.files["claims"] = os.path.join(out_dir, f"claims_{suite}.md")
        _atomic_write(res.files["claims"], f"# Claims of the papers — suite `{suite}`, {seeds} seed(s)\n\n"
                      + markdown_table(header, body) + "\n")
    return res


def mean_sd(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not None (0 for one value)."""
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _aggregate(suite: str, per_seed: list[DemoResult], out_dir: str, figures: bool) -> DemoResult:
    """Means and standard deviations over seeds of every row's numbers (seed-paired rows)."""
    rows = []
    for r in per_seed[0].rows:
        same = [next(x for x in p.rows if x.name == r.name) for p in per_seed]
        acc, sd = {}, {}
        for fam in r.accuracy:
            acc[fam], sd[fam] = mean_sd([x.accuracy.get(fam) for x in same])
        overall, sd["overall"] = mean_sd([x.overall for x in same])
        f1, sd["existence"] = mean_sd([x.existence_f1 for x in same])
        rows.append(Row(
            name=r.name, method=r.method, note=r.note, visual_tokens=mean_sd([x.visual_tokens for x in same])[0],
            visual_tokens_max=mean_sd([x.visual_tokens_max for x in same])[0], accuracy=acc, overall=overall,
            existence_f1=f1, train_seconds=mean_sd([x.train_seconds for x in same])[0],
            images_per_second=mean_sd([x.images_per_second for x in same])[0], model_dir=r.model_dir,
            extra={"sd": sd, "seeds": len(same), "no_answer": mean_sd([x.extra.get("no_answer") for x in same])[0],
                   "per_seed": [{"overall": x.overall, "accuracy": x.accuracy, "existence_f1": x.existence_f1}
                                for x in same]}))
    chance = per_seed[0].chance
    header, body = table_rows(rows, chance)
    files = {"markdown": os.path.join(out_dir, f"results_{suite}.md"), "json": os.path.join(out_dir, f"results_{suite}.json")}
    _atomic_write(files["markdown"], f"# hires-vlm demo — suite `{suite}`, {len(per_seed)} seeds\n\n"
                  f"Mean ± standard deviation over seeds {[p.seed for p in per_seed]} (each: its own benchmark draw "
                  "and initialisation; per-seed tables in seed-*/).\n\n" + markdown_table(header, body) + "\n")
    _atomic_json(files["json"], {"suite": suite, "seeds": [p.seed for p in per_seed], "chance": chance,
                                 "rows": [asdict(r) for r in rows]})
    if figures:
        files["accuracy_figure"] = os.path.join(out_dir, f"accuracy_vs_tokens_{suite}.png")
        save_accuracy_figure(rows, chance, files["accuracy_figure"], f"hires-vlm demo ({suite}, {len(per_seed)} seeds)")
    return DemoResult(suite, rows, format_table(header, body), out_dir, files, chance=chance, seed=per_seed[0].seed)


def _run_seed(suite: str, *, quick: bool, out_dir: str, seed: int, only: Sequence[str] | None, steps: int | None,
              train_per_family: int | None, test_per_family: int | None, progress: bool, figures: bool,
              regime: str | None, foundation: str, feature_cache: str | None = None,
              feature_cache_gb: float = 8.0) -> DemoResult:
    import torch

    from ..data.synthetic import FAMILIES, generate_benchmark

    if suite not in SUITES:
        raise ValueError(f"suite {suite!r} is not supported; choose one of {sorted(SUITES)}")
    budget = Budget(**asdict(BUDGETS["quick" if quick else "default"]))
    if steps is not None:
        budget.steps = steps
    if train_per_family is not None:
        budget.train_per_family = train_per_family
    if test_per_family is not None:
        budget.test_per_family = test_per_family
    if regime is not None:
        budget.regime = regime
    if budget.regime not in REGIMES:
        raise ValueError(f"regime {budget.regime!r} is not supported; choose one of {REGIMES}")
    if budget.regime == "foundation":
        from ..foundation import load_foundation

        load_foundation(foundation)  # a missing or altered foundation stops here, before any work
    elif feature_cache:
        raise ValueError("--feature-cache needs a frozen tower: the scratch regime trains it; drop one of the two")
    if feature_cache is not None and not feature_cache_gb > 0:
        raise ValueError(f"--feature-cache-gb must be positive, got {feature_cache_gb!r}")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    entries = SUITES[suite]
    if only:
        unknown = sorted(set(only) - {e.name for e in entries})
        if unknown:
            raise ValueError(f"unknown entries {unknown} for suite {suite!r}; choose from {[e.name for e in entries]}")
        needed = set(only) | {e.train_as for e in entries if e.name in only and e.train_as}
        entries = [e for e in entries if e.name in needed]

    data_dir = os.path.join(out_dir, "data")
    print(f"[1/3] benchmark: {budget.train_per_family} train + {budget.test_per_family} test images per family "
          f"→ {data_dir}", flush=True)
    generate_benchmark(data_dir, train_per_family=budget.train_per_family, test_per_family=budget.test_per_family,
                       seed=seed)
    with open(os.path.join(data_dir, "test.json")) as f:
        test_records = json.load(f)
    chance = {f: 100.0 * FAMILIES[f].chance for f in FAMILY_ORDER if f in FAMILIES}
    if "existence" in chance:
        chance["existence"] = 66.7  # F1 of always answering "yes" on balanced yes/no
    gallery_ids = []
    for fam in FAMILY_ORDER:
        rec = next((r for r in test_records if r.get("family") == fam), None)
        if rec is not None:
            gallery_ids.append(rec["id"])

    how = ("on the frozen foundation tower" if budget.regime == "foundation" else "from scratch")
    print(f"[2/3] training {len([e for e in entries if not e.train_as])} models {how}, "
          f"{budget.steps} steps × batch {budget.batch_size} each", flush=True)
    trained: dict[str, tuple[str, float]] = {}
    for e in entries:
        if e.train_as:
            continue
        print(f"  · {e.name} ({e.recipe})", flush=True)
        trained[e.name] = train_entry(e, budget, data_dir, os.path.join(out_dir, "models", _slug(e.name)), seed,
                                      progress, foundation=foundation,
                                      feature_cache=feature_cache and {"dir": os.path.abspath(feature_cache),
                                                                       "max_gb": float(feature_cache_gb)})

    print(f"[3/3] evaluating on {len(test_records)} held-out images", flush=True)
    rows: list[Row] = []
    answers: dict[str, dict[str, str]] = {}
    router: dict = {}
    for e in entries:
        model_dir, seconds = trained[e.train_as or e.name]
        ev = evaluate_entry(model_dir, data_dir, budget, e.eval_runtime, progress, keep_aux_for=gallery_ids,
                            reduction=e.eval_reduction)
        fams = ev["scores"]["families"]
        pope = ev["scores"]["pope"].get("existence")
        row = Row(
            name=e.name, method=e.method.get("preset", e.method.get("name", "")), note=e.note,
            visual_tokens=ev["visual_tokens"], visual_tokens_max=ev["visual_tokens_max"],
            accuracy={f: 100.0 * v["accuracy"] for f, v in fams.items()},
            overall=100.0 * ev["scores"]["overall"]["accuracy"],
            existence_f1=100.0 * pope["f1"] if pope else None,
            train_seconds=seconds, images_per_second=ev["images_per_second"], model_dir=model_dir,
            extra={"eval_runtime": e.eval_runtime, "pope": ev["scores"]["pope"],
                   "n": {**{f: v["n"] for f, v in fams.items()}, "overall": ev["scores"]["overall"]["n"]},
                   # answers that say nothing the benchmark can read: empty, or none of the answers
                   "no_answer": 100.0 * (ev["scores"]["overall"]["empty"] + ev["scores"]["overall"]["out_of_vocabulary"])
                   / max(ev["scores"]["overall"]["n"], 1)},
        )
        rows.append(row)
        answers[e.name] = ev["predictions"]
        if ev["router"] and not router:
            router = ev["router"]
        _atomic_json(os.path.join(out_dir, f"predictions_{_slug(e.name)}.json"), ev["predictions"])

    header, body = table_rows(rows, chance)
    table = format_table(header, body)
    files = {}
    files["markdown"] = os.path.join(out_dir, f"results_{suite}.md")
    _atomic_write(files["markdown"], f"# hires-vlm demo — suite `{suite}`\n\n"
                  f"Regime: {budget.regime}. Budget per model: {budget.steps} steps × batch {budget.batch_size}, lr {budget.lr}, "
                  f"{budget.train_per_family} training images per family, seed {seed}. "
                  f"Accuracy in % on {len(test_records)} held-out images; existence: F1 (POPE-style).\n\n"
                  + markdown_table(header, body) + "\n")
    files["csv"] = os.path.join(out_dir, f"results_{suite}.csv")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(body)
    _atomic_write(files["csv"], buf.getvalue())
    files["json"] = os.path.join(out_dir, f"results_{suite}.json")
    _atomic_json(files["json"], {"suite": suite, "seed": seed, "budget": asdict(budget), "chance": chance,
                                 "rows": [asdict(r) for r in rows]})
    if figures:
        files["accuracy_figure"] = os.path.join(out_dir, f"accuracy_vs_tokens_{suite}.png")
        save_accuracy_figure(rows, chance, files["accuracy_figure"], f"hires-vlm demo ({suite})")
        files["gallery"] = os.path.join(out_dir, f"gallery_{suite}.png")
        save_gallery([r for r in test_records if r["id"] in gallery_ids], data_dir, answers, router, files["gallery"])
    return DemoResult(suite, rows, table, out_dir, files, chance=chance, seed=seed)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train and compare every method on the embedded benchmark")
    p.add_argument("--quick", action="store_true", help="a ~3-minute version (smaller data and budget)")
    p.add_argument("--suite", default="main", choices=sorted(SUITES))
    p.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1, help="run N seeds (seed, seed+1, …) and report mean ± sd")
    p.add_argument("--only", action="append", help="run only this entry of the suite (repeatable)")
    p.add_argument("--steps", type=int, help="override the optimizer steps per model")
    p.add_argument("--train-per-family", type=int)
    p.add_argument("--test-per-family", type=int)
    p.add_argument("--regime", choices=["foundation", "scratch"],
                   help="foundation (default): the shipped pretrained tower (frozen) and LM, the published "
                        "stages; scratch: random weights, everything trains")
    p.add_argument("--foundation", default="shipped", help="a foundation directory (default: the shipped one)")
    p.add_argument("--feature-cache", metavar="DIR",
                   help="keep the frozen tower's features of the training views in DIR (safetensors, shared by "
                        "every stage and model with the same views); results are unchanged")
    p.add_argument("--feature-cache-gb", type=float, default=8.0, help="bound of --feature-cache (default 8)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import logging

    logging.getLogger("hires_vlm").setLevel(logging.WARNING)
    start = time.time()
    res = run_demo(args.suite, quick=args.quick, out_dir=args.out, seed=args.seed, seeds=args.seeds,
                   only=args.only, steps=args.steps,
                   train_per_family=args.train_per_family, test_per_family=args.test_per_family,
                   progress=not args.no_progress, regime=args.regime, foundation=args.foundation,
                   feature_cache=args.feature_cache, feature_cache_gb=args.feature_cache_gb)
    print()
    print(res.table)
    print()
    if res.claims:
        print(res.claims)
        print()
    for k, v in res.files.items():
        print(f"{k:>16}: {v}")
    print(f"{'total':>16}: {time.time() - start:.0f} s")
    return 0
