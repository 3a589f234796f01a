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

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

FAMILY_ORDER = ("fine_detail", "counting", "quadrant", "tile_border", "global_layout", "existence")
FAMILY_SHORT = {"fine_detail": "fine detail", "counting": "counting", "quadrant": "position+detail",
                "tile_border": "tile border", "global_layout": "global layout", "existence": "existence (F1)"}

TINY_GRIDS = [[1, 1], [1, 2], [2, 1], [2, 2], [1, 3], [3, 1], [2, 3], [3, 2], [3, 3]]
# The tiny tower is widened for the demo: a 1-px texture must be found with phase-invariant
# detectors learned from scratch, which a 64-wide tower learns too slowly (measured: 256 learns it
# in ~150 steps, 64 not in 800). Every method gets the same tower and LM.
TINY_SIZES = {"vision_hidden": 256}


@dataclass
class Budget:
    """What every method gets: data size, optimizer steps, batch size, learning rate."""

    train_per_family: int
    test_per_family: int
    steps: int
    batch_size: int = 8
    lr: float = 5.0e-4
    eval_batch_size: int = 32
    max_new_tokens: int = 4


BUDGETS = {
    "default": Budget(train_per_family=500, test_per_family=50, steps=1000),
    "quick": Budget(train_per_family=120, test_per_family=20, steps=90),
}


@dataclass
class Entry:
    """One row of a suite: a method config, a from-scratch recipe, and how to evaluate it."""

    name: str
    method: dict
    recipe: str = "single"  # single | alternating
    eval_runtime: dict = field(default_factory=dict)  # run-time method fields set for evaluation only
    note: str = ""
    train_as: str | None = None  # reuse the trained model of another entry (eval-time ablations)


ALL_MODULES = ("vision_tower", "connector", "language_model")


def stages_for(entry: Entry, budget: Budget) -> list[dict]:
    """The stages of an entry's recipe, with the budget's steps split between them."""
    lr = budget.lr
    everything = {m: lr for m in ALL_MODULES}
    if entry.recipe == "single":
        return [{"name": "train", "trainable": everything, "training": {"max_steps": budget.steps}}]
    if entry.recipe == "alternating":
        n1 = max(1, round(0.3 * budget.steps))
        n2 = max(1, round(0.3 * budget.steps))
        n3 = max(1, budget.steps - n1 - n2)
        base = {"vision_tower": lr, "language_model": lr}
        return [
            {"name": "stage1_global", "trainable": {**base, "connector.projector": lr, "connector.mixture": lr},
             "method_runtime": {"branches": "global", "gate_mode": "mix"}, "training": {"max_steps": n1}},
            {"name": "stage2_local", "trainable": {**base, "connector.local_compressor": lr},
             "method_runtime": {"branches": "local", "gamma": 1.0}, "training": {"max_steps": n2}},
            {"name": "stage3_all", "trainable": everything,
             "method_runtime": {"branches": "both", "gamma": 0.95}, "training": {"max_steps": n3}},
        ]
    raise ValueError(f"recipe {entry.recipe!r} is not supported; choose 'single' or 'alternating'")


def _slime(**kw) -> dict:
    # The official code with two changes the tiny setting needs: the router reads the prompt only (the
    # official code also feeds it the answer in training, a leak), and the gated mixture runs on the
    # 8×8 global view (the official GatedBlock mixes only 576-token views and would skip it).
    return {"preset": "slime", "local_queries": 16, "router_text": "prompt", "gate_bypass": "never", **kw}


def _inf(**kw) -> dict:
    # The official fixed 3x3 grid is for 1008 px inputs (3·S); the benchmark's images are at most
    # 2·S, so the tiny demo keeps the rule and scales the grid to 2x2 (no upsampling, 9 views).
    return {"preset": "inf_llava", "fixed_grid": [2, 2], **kw}


SUITES: dict[str, list[Entry]] = {
    "main": [
        Entry("llava", {"preset": "llava"}, note="one 112 px view"),
        Entry("llava_hd", {"preset": "llava_hd", "grid_candidates": TINY_GRIDS}, note="anyres up to 3x3 tiles"),
        Entry("monkey", {"preset": "monkey", "queries": 16}, note="all views compressed to 16 queries"),
        Entry("slime", _slime(), recipe="alternating", note="alternating stages, γ = 0.95"),
        Entry("inf_llava", _inf(), note="2x2 contiguous + 2x2 strided tiles + low-res view, 64 tokens"),
    ],
    "slime-ablations": [
        Entry("alternating", _slime(), recipe="alternating", note="SliME's 3-stage recipe"),
        Entry("end-to-end", _slime(), note="one stage, everything at once"),
        Entry("alternating, global only", _slime(), train_as="alternating", eval_runtime={"branches": "global"}),
        Entry("alternating, local only", _slime(), train_as="alternating",
              eval_runtime={"branches": "local", "gamma": 1.0}),
        Entry("end-to-end, global only", _slime(), train_as="end-to-end", eval_runtime={"branches": "global"}),
        Entry("end-to-end, local only", _slime(), train_as="end-to-end",
              eval_runtime={"branches": "local", "gamma": 1.0}),
        Entry("N_q = 4", _slime(local_queries=4), recipe="alternating"),
        Entry("N_q = 36", _slime(local_queries=36), recipe="alternating"),
        Entry("γ = 1.0", _slime(), train_as="alternating", eval_runtime={"gamma": 1.0}),
        Entry("γ = 0.75", _slime(), train_as="alternating", eval_runtime={"gamma": 0.75}),
        Entry("γ = 0.5", _slime(), train_as="alternating", eval_runtime={"gamma": 0.5}),
    ],
    "inf-llava-ablations": [
        Entry("official (both directions)", _inf()),
        Entry("enhance global only", _inf(directions="global_query")),
        Entry("enhance local only", _inf(directions="local_query")),
        Entry("crops fused by addition", _inf(enhancement="none", fusion="add")),
        Entry("fusion linear-concat", _inf(fusion="linear_concat")),
        Entry("fusion conv 3x3", _inf(fusion="conv3x3")),
        Entry("fusion multiply", _inf(fusion="multiply")),
        Entry("fusion weighted add", _inf(fusion="weighted_add")),
        Entry("fusion max", _inf(fusion="max")),
        Entry("local cropping only", _inf(cropping="local")),
        Entry("global cropping only", _inf(cropping="global")),
    ],
}


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "_".join(p for p in keep.split("_") if p) or "model"


@dataclass
class Row:
    name: str
    method: str
    note: str
    visual_tokens: float
    visual_tokens_max: float
    accuracy: dict  # family → %
    overall: float
    existence_f1: float | None
    train_seconds: float
    images_per_second: float
    model_dir: str
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- training
RECIPE_FILE = "recipe.json"


def recipe_key(raw: dict, data_dir: str) -> dict:
    """Everything that makes a demo model: its training config (but where it is written) and the
    benchmark's parameters. A finished model is reused only under the same key."""
    with open(os.path.join(data_dir, "benchmark.json"), encoding="utf-8") as f:
        data = json.load(f)["params"]
    config = {k: v for k, v in raw.items() if k != "run"}
    key = {"config": config, "seed": raw["run"]["seed"], "benchmark": data}
    text = json.dumps(key, sort_keys=True, default=str)
    return {"hash": hashlib.sha256(text.encode()).hexdigest()[:16], "key": key}


def _claim_model_dir(out_dir: str, recipe: dict) -> None:
    """Keep ``out_dir`` if it was made by ``recipe`` (or is new); else move it aside to
    ``<out_dir>@<its hash>`` (nothing is deleted) and start afresh, saying so."""
    path = os.path.join(out_dir, RECIPE_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("hash") == recipe["hash"]:
            return
        aside = f"{out_dir}@{old.get('hash', 'old')[:8]}"
        what = _first_difference(old.get("key", {}), recipe["key"]) or "its recipe"
        print(f"    {out_dir} was trained with another recipe ({what}); moved it to {aside}", flush=True)
        if os.path.exists(aside):
            raise FileExistsError(f"cannot set {out_dir} aside: {aside} exists; move one of them away")
        os.replace(out_dir, aside)
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        aside = f"{out_dir}@unrecorded"
        print(f"    {out_dir} holds a run without a recipe record; moved it to {aside}", flush=True)
        if os.path.exists(aside):
            raise FileExistsError(f"cannot set {out_dir} aside: {aside} exists; move one of them away")
        os.replace(out_dir, aside)
    os.makedirs(out_dir, exist_ok=True)
    _atomic_json(path, recipe)


def _first_difference(a, b, where: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{where}.{i}")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} then, {b!r} now"


def train_entry(entry: Entry, budget: Budget, data_dir: str, out_dir: str, seed: int, progress: bool) -> tuple[str, float]:
    """Train one entry (or reuse a finished run of the same recipe); returns (final model dir, seconds).

    A run killed in the middle resumes from its last checkpoint (every quarter of a stage)."""
    from .train.config import from_dict
    from .train.runner import run_training

    stages = stages_for(entry, budget)
    raw = {
        "run": {"output_dir": out_dir, "seed": seed},
        "model": {"source": "tiny", "method": entry.method, "template": "chatml", "tiny": dict(TINY_SIZES)},
        "data": {"train": os.path.join(data_dir, "train.json"), "image_folder": data_dir, "max_length": 2048},
        "training": {
            "per_device_train_batch_size": budget.batch_size, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
            "weight_decay": 0.0, "logging_steps": max(1, budget.steps // 5),
            "save_steps": max(1, budget.steps // 4), "save_total_limit": 1, "report_to": "none",
            "dataloader_num_workers": 0, "max_grad_norm": 1.0,
        },
        "stages": stages,
    }
    _claim_model_dir(out_dir, recipe_key(raw, data_dir))
    if not progress:
        raw["training"]["disable_tqdm"] = True  # type: ignore[index]
    cfg = from_dict(raw)
    results = run_training(cfg)
    seconds = sum(r.seconds for r in results)
    timing_file = os.path.join(out_dir, "train_seconds.json")
    if all(r.skipped for r in results) and os.path.isfile(timing_file):
        with open(timing_file) as f:
            seconds = json.load(f)["seconds"]
    else:
        _atomic_json(timing_file, {"seconds": seconds})
    return results[-1].final_dir, seconds


# ---------------------------------------------------------------------------------------- evaluation
def evaluate_entry(model_dir: str, data_dir: str, budget: Budget, runtime: dict, progress: bool,
                   keep_aux_for: Sequence[str] = ()) -> dict:
    """Greedy answers on the test split; accuracy, visual tokens, images/s, router overlays."""
    import torch
    from tqdm.auto import tqdm

    from .data.synthetic import score_predictions
    from .imaging import load_image
    from .model import HiResVLM, HiResVLMProcessor

    model = HiResVLM.from_pretrained(model_dir).eval()
    if runtime:
        model.set_method_runtime(**runtime)
    processor = HiResVLMProcessor(HiResVLMProcessor.from_pretrained(model_dir).tokenizer, model.config)
    with open(os.path.join(data_dir, "test.json")) as f:
        records = json.load(f)
    preds: dict[str, str] = {}
    tokens: list[int] = []
    max_tokens: list[int] = []
    aux_keep: dict[str, Any] = {}
    keep_ids = set(keep_aux_for)
    bs = budget.eval_batch_size
    elapsed = 0.0
    bar = tqdm(total=len(records), desc="  evaluating", leave=False, disable=not progress)
    for start in range(0, len(records), bs):
        chunk = records[start:start + bs]
        images = [load_image(os.path.join(data_dir, r["image"])) for r in chunk]
        prompts = [r["conversations"][0]["value"].replace("<image>", "").strip() for r in chunk]
        t0 = time.perf_counter()
        inputs = processor(prompts, images)
        with torch.inference_mode():
            out, merged = model.generate(**inputs, max_new_tokens=budget.max_new_tokens, do_sample=False,
                                         return_visual_aux=True)
        elapsed += time.perf_counter() - t0
        for r, text in zip(chunk, processor.batch_decode(out)):
            preds[r["id"]] = text
        tokens += merged.visual_tokens.tolist()
        max_tokens += [processor.max_visual_tokens(im.size) for im in images]
        aux = merged.visual_aux or {}
        for i, r in enumerate(chunk):
            if r["id"] in keep_ids and "router_keep" in aux:
                aux_keep[r["id"]] = {"keep": aux["router_keep"][i].tolist(), "grid": list(aux["local_grid"][i]),
                                     "record": processor.imaging_spec.record_for(images[i].size).to_dict()}
        bar.update(len(chunk))
    bar.close()
    scores = score_predictions(records, preds)
    return {"predictions": preds, "scores": scores, "visual_tokens": sum(tokens) / len(tokens),
            "visual_tokens_max": sum(max_tokens) / len(max_tokens), "images_per_second": len(records) / elapsed,
            "router": aux_keep}


# ---------------------------------------------------------------------------------------- output
def _atomic_write(path: str, text: str) -> None:
    from . import fsio

    fsio.atomic_write(path, text)


def _atomic_json(path: str, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False))


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table_rows(rows: list[Row], chance: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "visual tokens/img"] + [FAMILY_SHORT[f] for f in FAMILY_ORDER] + \
             ["overall", "empty/OOV %", "train s", "infer img/s"]
    out = []
    for r in rows:
        fams = [_fmt(r.existence_f1) if f == "existence" else _fmt(r.accuracy.get(f)) for f in FAMILY_ORDER]
        out.append([r.name, _fmt(r.visual_tokens, 0)] + fams + [_fmt(r.overall), _fmt(r.extra.get("no_answer")),
                                                                 _fmt(r.train_seconds, 0), _fmt(r.images_per_second, 1)])
    out.append(["(chance)", ""] + [_fmt(chance.get(f)) for f in FAMILY_ORDER] + ["", "", "", ""])
    return header, out


def format_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def save_accuracy_figure(rows: list[Row], chance: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], None, "overall accuracy (%)"), (axes[1], "fine_detail", "fine-detail accuracy (%)")):
        for r in rows:
            y = r.overall if key is None else r.accuracy.get(key, float("nan"))
            ax.scatter(r.visual_tokens, y, s=40)
            ax.annotate(r.name, (r.visual_tokens, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if key is not None and key in chance:
            ax.axhline(chance[key], color="grey", ls="--", lw=1, label="chance")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens per image (mean, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def save_gallery(records: list[dict], data_dir: str, answers: dict[str, dict[str, str]], router: dict,
                 path: str) -> None:
    """One test image per family; every model's answer; SliME's kept local tokens overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    n = len(records)
    fig, axes = plt.subplots(n, 2, figsize=(9, 2.6 * n), gridspec_kw={"width_ratios": [1, 1.3]})
    axes = np.atleast_2d(axes)
    for row, rec in enumerate(records):
        img = Image.open(os.path.join(data_dir, rec["image"])).convert("RGB")
        ax = axes[row, 0]
        ax.imshow(np.asarray(img))
        ax.set_title(rec.get("family", ""), fontsize=9)
        ax.axis("off")
        info = router.get(rec["id"])
        if info:
            r = info["record"]
            left, top, right, bottom = r["content_box"]
            rows_q, cols_q = info["grid"]
            cell_w = r["canvas_size"][0] / cols_q
            cell_h = r["canvas_size"][1] / rows_q
            sx = img.size[0] / max(right - left, 1)
            sy = img.size[1] / max(bottom - top, 1)
            kept = set(info["keep"])
            for k in range(rows_q * cols_q):
                if k in kept:
                    continue
                i, j = divmod(k, cols_q)
                x0, y0 = (j * cell_w - left) * sx, (i * cell_h - top) * sy
                ax.add_patch(Rectangle((x0, y0), cell_w * sx, cell_h * sy, color="black", alpha=0.45, lw=0))
            ax.set_title(f"{rec.get('family', '')} — slime keeps {len(kept)}/{rows_q * cols_q} local tokens "
                         "(dark: dropped)", fontsize=8)
        text = ax2 = axes[row, 1]
        ax2.axis("off")
        q = rec["conversations"][0]["value"].replace("<image>", "").strip()
        gold = rec["conversations"][1]["value"]
        lines = [f"Q: {q}", f"answer: {gold}", ""]
        for model_name, preds in answers.items():
            a = preds.get(rec["id"], "")
            mark = "✓" if a.strip().lower() == gold.strip().lower() else "✗"
            lines.append(f"{mark} {model_name}: {a!r}")
        text.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


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

    from .data.synthetic import FAMILIES, generate_benchmark

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
