"""Benchmark: generation with the KV cache against without, and batched against one by one.

Same prompts and images in every mode, greedy decoding (``do_sample=False``), ``--new-tokens``
tokens per sample (``min_new_tokens`` = ``max_new_tokens``, so every mode generates the same number
of tokens and tokens/s compare; EOS is thereby suppressed alike everywhere). Modes:

* ``batched + cache``: all ``--batch`` prompts in one ``model.generate`` call, left-padded by the
  processor and again after image expansion, KV cache (``use_cache=True``);
* ``batched, no cache``: the same prompts decoded greedily with every step re-running the whole
  sequence (``use_cache=False`` in the LM's forward). Not ``model.generate(use_cache=False)``:
  transformers forces the cache on for a decoder-only model fed ``inputs_embeds`` (which is how
  ``HiResVLM.generate`` hands over the merged sequence), so ``HiResVLM.generate`` refuses that flag;
* ``one by one + cache``: one call per prompt.

The three modes run round-robin in one process (load from other jobs falls on all alike);
tokens/s = generated tokens / median wall time of a call (including the image encoding and
prefill). Outputs: the generated ids of every sample are compared between the modes; a
difference is reported with its first position and the top-2 logit margin there (random weights
give near-flat logits, where different but equally valid float summation orders can flip a tie).

Model: the tiny default of ``--method`` (``llava_hd``) on CPU, or ``--real`` (CLIP-L/14-336 +
8B-shaped Llama, bf16; for ``--device cuda``, not run here). Images: the synthetic benchmark's.

Usage::

    python benchmarks/bench_generate.py                   # tiny llava_hd, CPU, ≈1 min
    python benchmarks/bench_generate.py --method slime --new-tokens 64
    python benchmarks/bench_generate.py --real --device cuda --new-tokens 128
    python benchmarks/bench_generate.py --smoke           # test suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def samples(n: int):
    from hires_vlm.data.synthetic import FAMILIES

    families = sorted(FAMILIES)
    out = []
    for i in range(n):
        s = FAMILIES[families[i % len(families)]](seed=1, index=i, split="test")
        out.append((s.question, s.pil()))
    return out


def first_divergence(a, b) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 for the tiny model, bfloat16 with --real")
    p.add_argument("--real", action="store_true", help="CLIP-L/14-336 + 8B-shaped Llama (for a GPU)")
    p.add_argument("--vision-layers", type=int, default=None)
    p.add_argument("--text-layers", type=int, default=None)
    p.add_argument("--method", default="llava_hd", choices=list(C.METHODS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per mode (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1)")
    p.add_argument("--smoke", action="store_true", help="batch 2, 4 new tokens; test suite")
    C.add_output_arguments(p)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.dtype is None:
        args.dtype = "bfloat16" if (args.real or cuda) else "float32"
    if args.threads is None and not cuda:
        args.threads = 1
    if args.smoke:
        args.batch, args.new_tokens, args.repeats = 2, 4, 1
    if args.real and not cuda and not (args.vision_layers and args.text_layers):
        p.error("--real builds 8B parameters: use --device cuda, or shrink it with --vision-layers and --text-layers")
    import torch

    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine(args.device)
    label = C.METHODS[args.method][0]
    model_name = "CLIP-L/14-336 + 8B-shaped Llama" if args.real else "tiny default (S=112, CLIP 2x64, Llama 2x128)"
    from hires_vlm.data.synthetic import DEFAULT_SIZE_RANGE

    C.print_header(f"Generation benchmark: {label}, {model_name}; {args.batch} prompts with synthetic benchmark "
                   f"images ({DEFAULT_SIZE_RANGE[0]}–{DEFAULT_SIZE_RANGE[1]} px sides), {args.new_tokens} new "
                   f"tokens each, greedy; {args.dtype} on {args.device}", info)
    dev = torch.device(args.device)
    model, proc = C.build_model(C.method_spec(args.method, args.real), real=args.real, device=args.device,
                                dtype=args.dtype, vision_layers=args.vision_layers, text_layers=args.text_layers)
    model.eval()
    data = samples(args.batch)

    def to_dev(inputs):
        out = {k: v.to(dev) for k, v in inputs.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(model.vision_tower.dtype)
        return out

    batched = to_dev(proc([q for q, _ in data], [im for _, im in data]))
    singles = [to_dev(proc(q, im)) for q, im in data]
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def run_batched(use_cache):
        out = model.generate(**batched, use_cache=use_cache, **gen)
        sync()
        return [row.tolist() for row in out]

    def run_single():
        res = []
        for inputs in singles:
            res.append(model.generate(**inputs, use_cache=True, **gen)[0].tolist())
        sync()
        return res

    eos = model.language_model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    embed = model.get_input_embeddings()

    def run_no_cache():
        """Greedy decoding that re-runs the whole sequence at every step (what no KV cache costs)."""
        with torch.no_grad():
            merged = model.merge_inputs(batched["input_ids"], batched["attention_mask"], batched.get("pixel_values"),
                                        batched.get("image_sizes"), None, padding_side="left")
            emb, mask = merged.inputs_embeds, merged.attention_mask
            new = []
            for _ in range(args.new_tokens):
                pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
                logits = model.language_model(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                                              use_cache=False, logits_to_keep=1).logits[:, -1].float()
                logits[:, eos] = float("-inf")  # min_new_tokens = max_new_tokens, as in the other modes
                nxt = logits.argmax(-1)
                new.append(nxt)
                emb = torch.cat([emb, embed(nxt)[:, None].to(emb.dtype)], 1)
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        sync()
        return torch.stack(new, 1).tolist()

    modes = {"batched + cache": lambda: run_batched(True), "batched, no cache": run_no_cache,
             "one by one + cache": run_single}
    outputs = {k: fn() for k, fn in modes.items()}  # also the warm-up
    t_start = time.time()
    times = C.interleaved(modes, args.repeats, warmup=0)
    med = {k: C.median(v) for k, v in times.items()}
    total_tokens = args.batch * args.new_tokens

    ref = outputs["batched + cache"]
    checks = {}
    for k, outs in outputs.items():
        diffs = [(i, first_divergence(a, b)) for i, (a, b) in enumerate(zip(ref, outs)) if a != b]
        checks[k] = diffs
    # Where a mode differs, the margin between the two best logits at that step (no-cache path,
    # one sample): near-zero margins mean a float tie, not a bug.
    margins = {}
    for k, diffs in checks.items():
        for i, pos in diffs:
            with torch.no_grad():
                inputs = singles[i]
                merged = model.merge_inputs(inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"),
                                            inputs.get("image_sizes"), None, padding_side="left")
                prefix = torch.tensor([ref[i][:pos]], device=dev, dtype=torch.long)
                emb = torch.cat([merged.inputs_embeds, model.get_input_embeddings()(prefix)], 1)
                mask = torch.ones(emb.shape[:2], dtype=torch.long, device=dev)
                logits = model.language_model(inputs_embeds=emb, attention_mask=mask).logits[0, -1].float()
                top = torch.topk(logits, 2).values
                margins[(k, i)] = float(top[0] - top[1])

    header = ["mode", "calls", "time per call ms", "tokens/s", "tokens/s relative to batched + cache", "outputs = batched + cache"]
    rows = []
    for k in modes:
        tps = total_tokens / med[k]
        same = "identical" if not checks[k] else (
            f"{len(checks[k])}/{args.batch} differ (first at token " +
            ", ".join(f"{pos}, margin {margins.get((k, i), float('nan')):.1e}" for i, pos in checks[k][:3]) + ")")
        rows.append([k, "1" if k.startswith("batched") else str(args.batch), f"{med[k] * 1e3:.1f}", f"{tps:.1f}",
                     f"{med['batched + cache'] / med[k]:.2f}×", same])
    table = C.markdown_table(header, rows)
    print(table)
    r_cache = med["batched, no cache"] / med["batched + cache"]
    r_batch = med["one by one + cache"] / med["batched + cache"]
    identical = all(not v for v in checks.values())
    print(f"\nratio: generate tokens/s with KV cache / without = {r_cache:.2f}x")
    print(f"ratio: generate tokens/s batched (batch {args.batch}, left-padded) / one by one = {r_batch:.2f}x")
    print(f"outputs identical across the modes: {identical}")
    print(f"\ntotal wall time {time.time() - t_start:.0f} s (timed part)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "seconds": med, "outputs": outputs,
                       "differences": {k: v for k, v in checks.items()},
                       "margins_at_differences": {f"{k}/{i}": m for (k, i), m in margins.items()}}, f, indent=2)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Model:** {label}, {model_name}, {args.dtype}; "
                   f"{args.batch} prompts with synthetic benchmark images ({DEFAULT_SIZE_RANGE[0]}–"
                   f"{DEFAULT_SIZE_RANGE[1]} px sides) × {args.new_tokens} new tokens, greedy\n\n{table}\n")
        section += ("\nThe no-cache row is a greedy loop re-running the whole sequence each step: transformers "
                    "keeps the cache on for `inputs_embeds`, so `HiResVLM.generate` refuses `use_cache=False`.\n")
        summary = ["[bench_generate.py](bench_generate.py)",
                   f"generate tokens/s: KV cache / no cache; batched ({args.batch}) / one by one ({label}, "
                   f"{'real' if args.real else 'tiny'}, {args.device})",
                   f"cache {r_cache:.2f}×, batching {r_batch:.2f}×",
                   "outputs identical: " + ("yes" if identical else "no (see table)"),
                   f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_generate", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
