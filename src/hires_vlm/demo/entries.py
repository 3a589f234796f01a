"""Train and evaluate one demo entry: a model is reused only under the same recipe (a hash)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from .report import _atomic_json
from .suites import TINY_SIZES, Budget, Entry, stages_for

# ---------------------------------------------------------------------------------------- training
RECIPE_FILE = "recipe.json"


def recipe_key(raw: dict, data_dir: str) -> dict:
    """Everything that makes a demo model: its training config (but where it is written), the
    benchmark's parameters and the foundation's weights. A finished model is reused only under the
    same key."""
    with open(os.path.join(data_dir, "benchmark.json"), encoding="utf-8") as f:
        data = json.load(f)["params"]
    config = {k: v for k, v in raw.items() if k != "run"}
    if "feature_cache" in config.get("training", {}):  # where features are kept changes no result
        config["training"] = {k: v for k, v in config["training"].items() if k != "feature_cache"}
    key = {"config": config, "seed": raw["run"]["seed"], "benchmark": data}
    if raw["model"].get("foundation"):
        from ..foundation import load_foundation

        key["foundation"] = load_foundation(raw["model"]["foundation"]).fingerprint
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
        from ..train.config import config_differences

        what = (config_differences(old.get("key", {}), recipe["key"]) or ["its recipe"])[0]
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


def train_entry(entry: Entry, budget: Budget, data_dir: str, out_dir: str, seed: int, progress: bool,
                foundation: str = "shipped", feature_cache: dict | None = None) -> tuple[str, float]:
    """Train one entry (or reuse a finished run of the same recipe); returns (final model dir, seconds).

    ``feature_cache``: ``{dir, max_gb}`` of the frozen tower's feature cache (``training.feature_cache``).

    A run killed in the middle resumes from its last checkpoint (every quarter of a stage)."""
    from ..train.config import from_dict
    from ..train.runner import run_training

    stages = stages_for(entry, budget, captions=os.path.join(data_dir, "captions.json"))
    if budget.regime == "foundation":
        model = {"source": "tiny", "method": entry.method, "template": "chatml", "foundation": foundation}
    else:
        model = {"source": "tiny", "method": entry.method, "template": "chatml", "tiny": dict(TINY_SIZES)}
    raw = {
        "run": {"output_dir": out_dir, "seed": seed},
        "model": model,
        "data": {"train": os.path.join(data_dir, "train.json"), "image_folder": data_dir, "max_length": 2048},
        "training": {
            "per_device_train_batch_size": budget.batch_size, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
            "weight_decay": 0.0, "logging_steps": max(1, budget.steps // 5),
            "save_steps": max(1, budget.steps // 4), "save_total_limit": 1, "report_to": "none",
            "dataloader_num_workers": 0, "max_grad_norm": 1.0,
        },
        "stages": stages,
    }
    if feature_cache:
        raw["training"]["feature_cache"] = dict(feature_cache)  # type: ignore[index]
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
                   keep_aux_for: Sequence[str] = (), reduction: dict | None = None) -> dict:
    """Greedy answers on the test split; accuracy, visual tokens, images/s, router overlays.

    ``runtime``: run-time method fields; ``reduction``: training-free token reduction (FastV,
    VisionZip). Visual tokens are those the LM's later layers see (after FastV's pruning)."""
    import torch
    from tqdm.auto import tqdm

    from ..data.synthetic import score_predictions
    from ..imaging import load_image
    from ..model import HiResVLM, HiResVLMProcessor

    model = HiResVLM.from_pretrained(model_dir).eval()
    if runtime:
        model.set_method_runtime(**runtime)
    if reduction:
        model.set_token_reduction(**reduction)
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
        aux = merged.visual_aux or {}
        tokens += (aux["fastv_visual_tokens"] if "fastv_visual_tokens" in aux else merged.visual_tokens).tolist()
        max_tokens += [processor.max_visual_tokens(im.size) for im in images]
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
