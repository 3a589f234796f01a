"""``hires-vlm demo``: the main job — what high resolution buys and what each method costs.

One command, a laptop CPU, no downloads: write the seeded synthetic benchmark, train tiny models of
every method from scratch under the **same budget** (same data, same order, same optimizer steps,
same batch size and learning rate), evaluate each on the held-out split, and print and save a
table — accuracy per task family, visual tokens per image, training time, inference images/s —
with two figures (accuracy against visual tokens; a gallery of test images with every model's
answer and the SliME router's kept tokens). ``--suite`` runs the ablations shaped like the
papers' tables instead. Rerunning with the same seed reproduces the accuracy and token columns
(timings vary); finished models are reused, so an interrupted run continues.

From-scratch recipes (every model starts from random weights, so the tower and the LM train in
every stage): baselines train all modules in one stage; SliME alternates which visual adapter
trains (global branch, then the local compressor with the global adapter frozen, then all), the
steps split 30/30/40 % of the same budget; INF-LLaVA trains its enhancement, fusion and
projector with everything else in one stage.
"""

from __future__ import annotations

__all__ = ["BUDGETS", "SUITES", "Budget", "DemoResult", "Entry", "Row", "run_demo", "stages_for"]

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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
from .suites import BUDGETS, FAMILY_ORDER, SUITES, Budget, Entry, Row, _slug, stages_for


# ---------------------------------------------------------------------------------------- the run
@dataclass
class DemoResult:
    suite: str
    rows: list[Row]
    table: str
    out_dir: str
    files: dict[str, str]


def run_demo(suite: str = "main", *, quick: bool = False, out_dir: str | None = None, seed: int = 0,
             only: Sequence[str] | None = None, steps: int | None = None, train_per_family: int | None = None,
             test_per_family: int | None = None, progress: bool = True, figures: bool = True) -> DemoResult:
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
    out_dir = out_dir or os.path.join("runs", "demo-quick" if quick else "demo")
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

    print(f"[2/3] training {len([e for e in entries if not e.train_as])} models from scratch, "
          f"{budget.steps} steps × batch {budget.batch_size} each", flush=True)
    trained: dict[str, tuple[str, float]] = {}
    for e in entries:
        if e.train_as:
            continue
        print(f"  · {e.name} ({e.recipe})", flush=True)
        trained[e.name] = train_entry(e, budget, data_dir, os.path.join(out_dir, "models", _slug(e.name)), seed,
                                      progress)

    print(f"[3/3] evaluating on {len(test_records)} held-out images", flush=True)
    rows: list[Row] = []
    answers: dict[str, dict[str, str]] = {}
    router: dict = {}
    for e in entries:
        model_dir, seconds = trained[e.train_as or e.name]
        ev = evaluate_entry(model_dir, data_dir, budget, e.eval_runtime, progress, keep_aux_for=gallery_ids)
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
                  f"Budget per model: {budget.steps} steps × batch {budget.batch_size}, lr {budget.lr}, "
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
    return DemoResult(suite, rows, table, out_dir, files)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train and compare every method on the embedded benchmark")
    p.add_argument("--quick", action="store_true", help="a ~3-minute version (smaller data and budget)")
    p.add_argument("--suite", default="main", choices=sorted(SUITES))
    p.add_argument("--out", help="output directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", help="run only this entry of the suite (repeatable)")
    p.add_argument("--steps", type=int, help="override the optimizer steps per model")
    p.add_argument("--train-per-family", type=int)
    p.add_argument("--test-per-family", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import logging

    logging.getLogger("hires_vlm").setLevel(logging.WARNING)
    start = time.time()
    res = run_demo(args.suite, quick=args.quick, out_dir=args.out, seed=args.seed, only=args.only, steps=args.steps,
                   train_per_family=args.train_per_family, test_per_family=args.test_per_family,
                   progress=not args.no_progress)
    print()
    print(res.table)
    print()
    for k, v in res.files.items():
        print(f"{k:>16}: {v}")
    print(f"{'total':>16}: {time.time() - start:.0f} s")
    return 0
