"""Benchmark: padding-free training (packing) and modality-length grouping — padding, then samples/s.

Two length distributions:

* **synthetic**: the embedded benchmark's training split, written by ``hires_vlm.data.synthetic``
  (``--per-family`` items of each family), read by ``LlavaDataset`` and measured by its own
  ``modality_lengths`` (LM tokens after image expansion, from the image headers and the text) for
  every method's tiny model. Every record has an image;
* **SMR-like**: synthesised lengths shaped like SliME's SMR reasoning data at real geometry
  (``--smr-samples``, seeded): image tokens uniform in 600–3000 per sample (a LLaVA-HD-like cut of
  1–5 tiles of 576 tokens), answer-and-prompt text log-normal (median 160 tokens, 20–1500), and
  ``--text-only`` of the samples text only (median 400 tokens).

**Padding** (no model): for batches of ``--batch`` drawn by each policy — random (the Trainer's
default), transformers' ``group_by_length`` (``LengthGroupedSampler``, 50 batches sorted together),
ours ``group_by_modality_length`` with 1 batch per group (one device, LLaVA's default), 8 (LLaVA on 8
ranks) and 50 — the share of a padded batch's LM tokens that are padding, and the attention work of
the padded batches (Σ B·max²) over the packed one's (Σ lᵢ²). Packed, the padding is 0 by construction.

**Samples/s** (one process, round-robin over the cases, medians of ``--repeats``). Every case trains on
the same random subset of ``steps × batch`` samples, batched either at random or grouped (the subset
sorted together by ours, as one group), padded or packed — so the four cases differ only in
batching, never in which samples they see:

* synthetic: ``--steps`` training steps of the tiny model (connector + LM trainable, tower frozen,
  AdamW, the trainer's step with labelled logits only), batches collated by ``LlavaCollator``
  (``packing=True`` for the packed cases, ``model/packing.py``);
* SMR-like: the language model alone (the tiny 2×128 Llama on random embeddings of those lengths,
  labels on the text tokens): packing changes only what the LM sees, and the tiny model's
  tiles cannot make 3000 visual tokens. Padded (``attention_mask``) or packed (one row, per-sample
  SDPA).

Usage::

    python benchmarks/bench_packing.py                # ≈3 min on 2 CPU cores
    python benchmarks/bench_packing.py --methods llava_hd slime --steps 6
    python benchmarks/bench_packing.py --smoke        # test suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

METHODS = ("llava", "llava_hd", "monkey", "slime", "inf_llava")


# ---------------------------------------------------------------------- lengths
def synthetic_lengths(folder: str, methods, per_family: int) -> tuple[dict, dict]:
    """{method: ModalityLengths} of the synthetic training split, and {method: (dataset, processor)}."""
    from hires_vlm.data import synthetic
    from hires_vlm.data.llava_json import LlavaDataset

    synthetic.generate_benchmark(folder, train_per_family=per_family, test_per_family=0, num_workers=1,
                                 separability_samples=0)
    out, data = {}, {}
    for m in methods:
        model, proc = C.build_model(C.method_spec(m, False))
        ds = LlavaDataset(os.path.join(folder, "train.json"), folder, proc)
        out[m], data[m] = ds.modality_lengths(), (ds, model, proc)
    return out, data


def smr_lengths(n: int, text_only: float, seed: int = 0, scale: float = 1.0):
    """Synthesised SMR-like (lengths, has_image) — see the module docstring; ``scale`` shrinks them (smoke)."""
    import numpy as np

    from hires_vlm.data.lengths import ModalityLengths

    rng = np.random.default_rng(seed)
    has_image = rng.random(n) >= text_only
    image = rng.integers(600, 3001, n)
    text = np.where(has_image, np.clip(rng.lognormal(np.log(160), 0.7, n), 20, 1500),
                    np.clip(rng.lognormal(np.log(400), 0.8, n), 20, 1500))
    lengths = np.where(has_image, image + text, text) * scale
    return ModalityLengths([max(2, int(x)) for x in lengths], [bool(x) for x in has_image])


# ---------------------------------------------------------------------- batching policies
def policy_batches(name: str, ml, batch: int, seed: int = 0) -> list[list[int]]:
    import numpy as np
    import torch

    from hires_vlm.data.sampling import ModalityLengthGroupedBatchSampler

    n = len(ml.lengths)
    if name == "random":
        order = np.random.default_rng(seed).permutation(n).tolist()
    elif name == "transformers group_by_length":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        g = torch.Generator().manual_seed(seed)
        order = list(LengthGroupedSampler(batch, lengths=ml.lengths, generator=g))
    else:
        group = int(name.rsplit(" ", 1)[-1])
        return ModalityLengthGroupedBatchSampler(ml.lengths, ml.has_image, batch, group=group, seed=seed).batches()
    return [order[i:i + batch] for i in range(0, n, batch)]


POLICIES = ("random", "transformers group_by_length", "ours modality-length, group 1", "ours modality-length, group 8",
            "ours modality-length, group 50")


def padding_stats(ml, batches) -> dict:
    real = padded = attn_padded = attn_packed = mixed = 0
    for b in batches:
        ls = [ml.lengths[i] for i in b]
        real += sum(ls)
        padded += len(ls) * max(ls)
        attn_padded += len(ls) * max(ls) ** 2
        attn_packed += sum(x * x for x in ls)
        mixed += len({ml.has_image[i] for i in b}) > 1
    return {"padded_fraction": 1 - real / padded, "attention_padded_over_packed": attn_padded / attn_packed,
            "tokens_padded_over_packed": padded / real, "mixed_batches": mixed, "batches": len(batches)}


# ---------------------------------------------------------------------- timed steps
def timed_batches(ml, steps: int, batch: int, grouped: bool, seed: int = 0) -> list[list[int]]:
    """``steps`` batches of one random subset of ``steps × batch`` samples, the same for both orders: shuffled
    (random), or all sorted together by ours (grouped) — so samples/s compare the same samples."""
    import numpy as np

    from hires_vlm.data.sampling import ModalityLengthGroupedBatchSampler

    rng = np.random.default_rng(seed)
    subset = rng.permutation(len(ml.lengths))[:steps * batch]
    if not grouped:
        return [subset[i:i + batch].tolist() for i in range(0, len(subset), batch)]
    sampler = ModalityLengthGroupedBatchSampler([ml.lengths[i] for i in subset], [ml.has_image[i] for i in subset],
                                                batch, group=steps, seed=seed)
    return [[int(subset[j]) for j in b] for b in sampler.batches()]


def synthetic_steps(data, grouped: bool, args, packing: bool) -> list[dict]:
    from hires_vlm.data.llava_json import LlavaCollator

    ds, _, proc = data
    batches = timed_batches(ds.modality_lengths(), args.steps, args.batch, grouped)
    collate = LlavaCollator(proc.tokenizer.pad_token_id, ds, packing=packing)
    return [collate([ds[i] for i in b]) for b in batches]


def time_synthetic(method, data, args) -> dict:
    import copy

    import torch

    from hires_vlm.model import enable_packing

    _, model, _ = data
    runs = {}
    for grouped in (False, True):
        for packing in (False, True):
            m = copy.deepcopy(model).train()
            m.vision_tower.requires_grad_(False)
            if packing:
                enable_packing(m)
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
            steps = synthetic_steps(data, grouped, args, packing)

            def run(m=m, opt=opt, steps=steps):
                for b in steps:
                    m(**b, use_cache=False, labelled_logits_only=True).loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

            key = f"{'grouped' if grouped else 'random'}, {'packed' if packing else 'padded'}"
            runs[key] = (run, sum(len(b["input_ids"]) for b in steps))
    med = {k: C.median(v) for k, v in C.interleaved({k: r for k, (r, _) in runs.items()}, args.repeats).items()}
    return {k: {"seconds": med[k], "samples": n, "samples_per_s": n / med[k]} for k, (_, n) in runs.items()}


def time_smr(ml, args) -> dict:
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from hires_vlm.model.packing import VARLEN_SDPA, pack_sequences
    from hires_vlm.text import IGNORE_INDEX
    from hires_vlm.tiny import tiny_text_config

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(tiny_text_config(1024))
    d = lm.config.hidden_size

    def sample(i):
        g = torch.Generator().manual_seed(i)
        n = ml.lengths[i]
        text = min(n, 160) if ml.has_image[i] else n
        labels = torch.full((n,), IGNORE_INDEX)
        labels[n - max(1, text // 4):] = torch.randint(0, 1024, (max(1, text // 4),), generator=g)
        return torch.randn(n, d, generator=g), labels

    runs = {}
    for grouped in (False, True):
        batches = timed_batches(ml, args.smr_steps, args.batch, grouped)
        data = [[sample(i) for i in b] for b in batches]
        for packing in (False, True):
            model = copy.deepcopy(lm).train()
            if packing:
                model.set_attn_implementation(VARLEN_SDPA)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            inputs = []
            for items in data:
                if packing:
                    p = pack_sequences([e for e, _ in items], [y for _, y in items])
                    inputs.append(dict(inputs_embeds=p.inputs_embeds, position_ids=p.position_ids, labels=p.labels,
                                       **p.attention_kwargs()))
                else:
                    w = max(e.shape[0] for e, _ in items)
                    emb = torch.zeros(len(items), w, d)
                    lab = torch.full((len(items), w), IGNORE_INDEX)
                    mask = torch.zeros(len(items), w, dtype=torch.long)
                    for k, (e, y) in enumerate(items):
                        emb[k, :len(y)], lab[k, :len(y)], mask[k, :len(y)] = e, y, 1
                    inputs.append(dict(inputs_embeds=emb, attention_mask=mask, labels=lab))

            def run(model=model, opt=opt, inputs=inputs):
                for x in inputs:
                    model(**x, use_cache=False).loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

            key = f"{'grouped' if grouped else 'random'}, {'packed' if packing else 'padded'}"
            runs[key] = (run, sum(len(b) for b in batches))
    fns = {k: r for k, (r, _) in runs.items()}
    med = {k: C.median(v) for k, v in C.interleaved(fns, min(args.repeats, 2)).items()}
    return {k: {"seconds": med[k], "samples": n, "samples_per_s": n / med[k]} for k, (_, n) in runs.items()}


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--timed-methods", nargs="+", default=["llava", "llava_hd"], choices=list(METHODS),
                   help="methods whose training steps are timed on the synthetic data")
    p.add_argument("--batch", type=int, default=8, help="samples per batch (per device)")
    p.add_argument("--per-family", type=int, default=100, help="synthetic training items per family")
    p.add_argument("--smr-samples", type=int, default=4000)
    p.add_argument("--text-only", type=float, default=0.1, help="share of text-only samples in the SMR-like set")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per case (synthetic)")
    p.add_argument("--smr-steps", type=int, default=2, help="timed LM steps per case (SMR-like; ≈1–7 s each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--smoke", action="store_true", help="seconds-long: few samples, short SMR lengths; test suite")
    C.add_output_arguments(p)
    args = p.parse_args(argv)
    scale = 1.0
    if args.smoke:
        args.methods, args.timed_methods = ["llava", "llava_hd"], ["llava_hd"]
        args.batch, args.per_family, args.smr_samples, args.steps, args.smr_steps, args.repeats = 2, 2, 64, 2, 1, 1
        scale = 0.05
    import torch

    torch.set_num_threads(args.threads)
    info = C.machine("cpu")
    C.print_header(f"Packing benchmark: batch {args.batch}; synthetic benchmark ({args.per_family} per family) and "
                   f"{args.smr_samples} SMR-like lengths ({args.text_only:.0%} text only); tiny model on CPU", info)
    t0 = time.time()
    smr = smr_lengths(args.smr_samples, args.text_only, scale=scale)
    with tempfile.TemporaryDirectory(prefix="bench_packing-") as folder:
        syn, data = synthetic_lengths(folder, sorted(set(args.methods) | set(args.timed_methods)), args.per_family)
        padding = {"smr": {pol: padding_stats(smr, policy_batches(pol, smr, args.batch)) for pol in POLICIES}}
        for m in args.methods:
            padding[m] = {pol: padding_stats(syn[m], policy_batches(pol, syn[m], args.batch)) for pol in POLICIES}
        timing = {m: time_synthetic(m, data[m], args) for m in args.timed_methods}
    timing["smr"] = time_smr(smr, args)

    header = ["data", "tokens per sample (min–max, mean)", *POLICIES]
    rows = []
    for key in ["smr", *args.methods]:
        ml = smr if key == "smr" else syn[key]
        label = "SMR-like" + (" (scaled)" if scale != 1 else "") if key == "smr" else f"synthetic, {key}"
        cells = [f"{s['padded_fraction']:.1%} (attn {s['attention_padded_over_packed']:.2f}×)"
                 + (f", {s['mixed_batches']} mixed" if s["mixed_batches"] else "")
                 for s in (padding[key][pol] for pol in POLICIES)]
        rows.append([label, f"{min(ml.lengths)}–{max(ml.lengths)}, {sum(ml.lengths) / len(ml.lengths):.0f}", *cells])
    pad_table = C.markdown_table(header, rows)
    t_header = ["data", "random, padded", "random, packed", "grouped, padded", "grouped, packed",
                "packed / padded (random)", "grouped + packed / random padded"]
    t_rows = []
    for key, tm in timing.items():
        sps = {k: v["samples_per_s"] for k, v in tm.items()}
        t_rows.append(["SMR-like, LM step only" if key == "smr" else f"synthetic, {key}",
                       *[f"{sps[k]:.1f}" for k in ("random, padded", "random, packed", "grouped, padded",
                                                    "grouped, packed")],
                       f"**{sps['random, packed'] / sps['random, padded']:.2f}×**",
                       f"**{sps['grouped, packed'] / sps['random, padded']:.2f}×**"])
    time_table = C.markdown_table(t_header, t_rows)
    print("Padding: share of a padded batch's LM tokens that are padding (attention work padded / packed); "
          "packed: 0\n" + pad_table)
    print("\nTraining samples/s\n" + time_table)
    for key, tm in timing.items():
        r = tm["random, packed"]["samples_per_s"] / tm["random, padded"]["samples_per_s"]
        g = tm["grouped, packed"]["samples_per_s"] / tm["random, padded"]["samples_per_s"]
        print(f"ratio: {key} training samples/s packed / padded (random batches) = {r:.2f}x; grouped + packed / "
              f"random padded = {g:.2f}x")
    for key in padding:
        print(f"ratio: {key} padded fraction random {padding[key]['random']['padded_fraction']:.1%} -> grouped (50) "
              f"{padding[key]['ours modality-length, group 50']['padded_fraction']:.1%} -> packed 0.0%; "
              f"mixed-modality batches in ours: "
              f"{sum(padding[key][p]['mixed_batches'] for p in POLICIES if p.startswith('ours'))}")
    print(f"\ntotal wall time {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "padding": padding, "timing": timing}, f, indent=2)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n**Command:** "
                   f"`{C.command_line()}`  \n**Batch:** {args.batch} per device; synthetic: {args.per_family} training "
                   f"items per family; SMR-like: {args.smr_samples} synthesised lengths, {args.text_only:.0%} text "
                   f"only\n\nPadding (share of a padded batch's LM tokens; attention work padded / packed in "
                   f"brackets; packed rows have none):\n\n{pad_table}\n\nTraining samples/s (tiny model, CPU):\n\n"
                   f"{time_table}\n")
        tm = timing.get("llava_hd") or next(iter(timing.values()))
        smr_t = timing["smr"]

        def gain(t):
            return t["random, packed"]["samples_per_s"] / t["random, padded"]["samples_per_s"]

        summary = ["[bench_packing.py](bench_packing.py)",
                   "padding of training batches and samples/s: packed vs padded, modality-length grouping "
                   "(tiny, cpu)",
                   f"padding SMR-like {padding['smr']['random']['padded_fraction']:.0%} → 0 packed; samples/s packed "
                   f"/ padded: llava_hd {gain(tm):.2f}×, SMR-like LM {gain(smr_t):.2f}×",
                   "no target (reported)", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_packing", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
