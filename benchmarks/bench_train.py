"""Benchmark: training-step throughput, peak memory and model FLOPs utilisation per method.

One training step = forward with labels (loss), backward, AdamW step, zero grad; the trainable parts
are the connector and the LM (the tower stays frozen, as in the SFT stages). The batch: ``--batch``
samples of the synthetic benchmark (``hires_vlm.data.synthetic``, its own images at its default
sizes, printed in the header; one question and answer each, encoded and collated as the training
data pipeline does) or, with
``--data random --sizes …``, images of given sizes with a fixed question. Preprocessing is done
once beforehand and not timed.

Methods: ``llava``, ``llava_hd``, ``monkey``, ``slime`` (routed, γ = 0.95, training noise on),
``slime`` with γ = 1, ``inf_llava``; each with and without gradient checkpointing (the LM's and the
tower's, ``use_reentrant=False``).

CPU (default, the tiny model): the step times are taken in one process, all methods and both
checkpointing settings round-robin, so load from other jobs falls on all alike; the peak memory of
each method runs in its own subprocess (``VmHWM`` after ``clear_refs`` minus ``VmRSS`` before the
step, after a first step has created the optimizer state; see ``_common.py``). Peak memory is
thus what the step adds on top of weights and optimizer state: activations and gradients.

GPU (``--device cuda``; written for, not run on, this CPU-only machine): one subprocess per method,
``max_memory_allocated`` above the memory before the step, and MFU = model FLOPs per step /
step time / the GPU's dense bf16 peak (table in ``_common.py``). Model FLOPs per step:
6·N_LM·T_LM (N_LM = LM parameters without the input embedding, T_LM = non-pad tokens after image
expansion) + the frozen tower's forward FLOPs (``clip_tower_flops``: projections and attention of
every view); the connector's share is left out. ``--real`` builds CLIP-L/14-336 + an 8B-shaped
Llama (bf16 weights and bf16 AdamW state: ~64 GB before activations; shrink with
``--text-layers``).

Usage::

    python benchmarks/bench_train.py                         # tiny model, CPU, ≈1.5 min
    python benchmarks/bench_train.py --device cuda --real --text-layers 16 --batch 4
    python benchmarks/bench_train.py --smoke                 # test suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

QUESTION, ANSWER = "What pattern fills the small square?", "vertical"


def make_batch(proc, n: int, data: str, sizes: list[tuple[int, int]]) -> dict:
    """``n`` samples encoded and collated like the training pipeline (``LlavaDataset`` + ``LlavaCollator``)."""
    import torch

    from hires_vlm.data.llava_json import LlavaCollator
    from hires_vlm.data.synthetic import FAMILIES

    families = sorted(FAMILIES)
    items = []
    for i in range(n):
        if data == "synthetic":
            s = FAMILIES[families[i % len(families)]](seed=0, index=i)
            img, q, a = s.pil(), s.question, s.answer
        else:
            w, h = sizes[i % len(sizes)]
            img, q, a = C.make_image(w, h, seed=i), QUESTION, ANSWER
        b = proc.image_processor([img])
        counts = [proc.method_config.max_visual_tokens(r, proc.grid) for r in b.records]
        enc = proc.encoder.encode([{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}], counts)
        items.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                      "pixel_values": b.pixel_values,
                      "image_sizes": torch.tensor([r.image_size for r in b.records]).reshape(-1, 2)})
    return LlavaCollator(proc.tokenizer.pad_token_id)(items)


class Case:
    """One method's model, optimizer and batch; ``step(gc)`` runs one training step."""

    def __init__(self, args, key: str):
        import torch

        self.key, self.label = key, C.METHODS[key][0]
        self.dev = torch.device(args.device)
        self.model, proc = C.build_model(C.method_spec(key, args.real), real=args.real, device=args.device,
                                         dtype=args.dtype, vision_layers=args.vision_layers,
                                         text_layers=args.text_layers)
        m = self.model
        m.train()
        m.vision_tower.requires_grad_(False)
        params = [p for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5)
        batch = make_batch(proc, args.batch, args.data, args.size_pairs)
        self.batch = {k: v.to(self.dev) for k, v in batch.items()}
        self.batch["pixel_values"] = self.batch["pixel_values"].to(m.vision_tower.dtype)
        self.views = int(batch["pixel_values"].shape[0])
        self.gc = None
        lm = m.language_model
        embed = lm.get_input_embeddings().weight.numel()
        self.n_lm = sum(p.numel() for p in lm.parameters()) - embed
        self.n_trainable = sum(p.numel() for p in params)
        vc = m.config.vision_config
        self.tower = dict(layers=vc.num_hidden_layers, tokens=(vc.image_size // vc.patch_size) ** 2 + 1,
                          hidden=vc.hidden_size, intermediate=vc.intermediate_size)
        self.tokens = None

    def set_gc(self, on: bool) -> None:
        if self.gc is on:
            return
        from hires_vlm import compat

        compat.set_activation_checkpointing(self.model, on, use_reentrant=False)
        self.gc = on

    def step(self, gc: bool):
        self.set_gc(gc)
        out = self.model(**self.batch, use_cache=False)
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.tokens is None:
            self.tokens = int(out.attention_mask.sum())
            self.visual_tokens = int(out.visual_tokens.sum())
        return float(out.loss.detach())

    def model_flops(self) -> float:
        t = self.tower
        tower = C.clip_tower_flops(self.views, t["layers"], t["tokens"], t["hidden"], t["intermediate"])
        return 6.0 * self.n_lm * self.tokens + tower


def measure_memory(args, key: str, case: Case | None = None) -> dict:
    """Peak memory of one step with and without checkpointing (after a first step made the optimizer state)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    case = case or Case(args, key)
    cuda = case.dev.type == "cuda"
    out = {"key": key}
    for gc in (False, True):
        case.step(gc)  # warm-up; creates the AdamW state on the first call
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            case.step(gc)
            torch.cuda.synchronize()
            out[f"peak_gc{int(gc)}"] = torch.cuda.max_memory_allocated() - base
            out["memory_method"] = "CUDA: max_memory_allocated above the memory before the step"
        else:
            with C.PeakRSS() as p:
                case.step(gc)
            out[f"peak_gc{int(gc)}"] = p.delta_bytes
            out["memory_method"] = p.method
    return out


def time_cases(cases: list[Case], args, gcs) -> dict:
    import torch

    cuda = cases[0].dev.type == "cuda"

    def timed(case, gc):
        def f():
            case.step(gc)
            if cuda:
                torch.cuda.synchronize()
        return f

    fns = {(c.key, gc): timed(c, gc) for c in cases for gc in gcs}
    t = C.interleaved(fns, args.repeats, warmup=1)
    return {k: C.median(v) for k, v in t.items()}


def run_gpu_method(args, key: str) -> dict:
    """CUDA: one subprocess per method does memory and timing (a dedicated GPU needs no round-robin)."""
    case = Case(args, key)  # one model per process: an 8B one fills the GPU
    res = measure_memory(args, key, case)
    med = time_cases([case], args, (False, True))
    res.update(summarise(case, med, args))
    return res


def summarise(case: Case, med: dict, args) -> dict:
    import torch

    out = {"key": case.key, "method": case.label, "views": case.views, "tokens": case.tokens,
           "visual_tokens": case.visual_tokens, "trainable": case.n_trainable, "flops": case.model_flops()}
    peak = None
    if case.dev.type == "cuda":
        peak = C.gpu_peak_tflops(torch.cuda.get_device_name())
    for gc in (False, True):
        if (case.key, gc) not in med:
            continue
        s = med[(case.key, gc)]
        out[f"step_gc{int(gc)}"] = s
        out[f"samples_per_s_gc{int(gc)}"] = args.batch / s
        out[f"tflops_gc{int(gc)}"] = out["flops"] / s / 1e12
        if peak and args.dtype == "bfloat16":
            out[f"mfu_gc{int(gc)}"] = out[f"tflops_gc{int(gc)}"] / peak
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 for the tiny model on CPU, bfloat16 on CUDA / --real")
    p.add_argument("--real", action="store_true", help="CLIP-L/14-336 + 8B-shaped Llama (for a GPU)")
    p.add_argument("--vision-layers", type=int, default=None)
    p.add_argument("--text-layers", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=list(C.METHODS), choices=list(C.METHODS))
    p.add_argument("--batch", type=int, default=8, help="samples per step")
    p.add_argument("--data", choices=["synthetic", "random"], default="synthetic")
    p.add_argument("--sizes", nargs="+", default=["672x672", "1008x672", "672x1008", "1344x1344"],
                   help="WxH image sizes for --data random (cycled)")
    p.add_argument("--gc", choices=["both", "off", "on"], default="both", help="gradient checkpointing settings")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per case (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--profile", action="store_true", help="torch.profiler top-10 of one llava_hd step")
    p.add_argument("--smoke", action="store_true", help="2 methods, batch 2, in-process; test suite")
    C.add_output_arguments(p)
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.dtype is None:
        args.dtype = "bfloat16" if (args.real or cuda) else "float32"
    if args.threads is None and not cuda:
        args.threads = 1
    if args.smoke:
        args.methods, args.batch, args.repeats, args.no_memory = ["llava", "slime"], 2, min(args.repeats, 2), True
    args.size_pairs = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    if args.real and not cuda and not (args.vision_layers and args.text_layers):
        p.error("--real trains 8B parameters: use --device cuda, or shrink it with --vision-layers and --text-layers")
    if args._case:
        kind, key = args._case.split(":")
        print(json.dumps(measure_memory(args, key) if kind == "memory" else run_gpu_method(args, key)))
        return 0
    import torch

    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    gcs = {"both": (False, True), "off": (False,), "on": (True,)}[args.gc]
    info = C.machine(args.device)
    model_name = "CLIP-L/14-336 + 8B-shaped Llama" if args.real else "tiny default (S=112, CLIP 2x64, Llama 2x128)"
    from hires_vlm.data.synthetic import DEFAULT_SIZE_RANGE

    lo, hi = DEFAULT_SIZE_RANGE
    data = (f"synthetic benchmark images ({lo}–{hi} px sides)" if args.data == "synthetic"
            else f"random images {', '.join(args.sizes)}")
    C.print_header(f"Training-step benchmark: {model_name}; batch {args.batch} of {data}; {args.dtype} on "
                   f"{args.device}; trainable: connector + LM (tower frozen); AdamW", info)
    passthrough = ["--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch), "--data", args.data,
                   "--repeats", str(args.repeats), "--sizes", *args.sizes]
    if args.real:
        passthrough.append("--real")
    for flag, v in (("--vision-layers", args.vision_layers), ("--text-layers", args.text_layers),
                    ("--threads", args.threads)):
        if v:
            passthrough += [flag, str(v)]
    t_start = time.time()
    results: dict[str, dict] = {}
    if cuda:
        for key in args.methods:
            results[key] = C.run_subprocess_case(__file__, passthrough + ["--_case", f"gpu:{key}"])
    else:
        torch.manual_seed(0)
        cases = [Case(args, key) for key in args.methods]
        med = time_cases(cases, args, gcs)
        for c in cases:
            results[c.key] = summarise(c, med, args)
        if args.profile:
            prof_case = next((c for c in cases if c.key == "llava_hd"), cases[0])
            prof_text = profile_step(prof_case)
        del cases
        if not args.no_memory:
            for key in args.methods:
                results[key].update(C.run_subprocess_case(__file__, passthrough + ["--_case", f"memory:{key}"]))
    mem_method = next((r["memory_method"] for r in results.values() if "memory_method" in r), "not measured")
    mem_method = mem_method.replace("subprocess per case", "one subprocess per method")

    header = ["method", "views", "LM tokens", "step ms", "samples/s", "peak MiB", "step ms (GC)", "samples/s (GC)",
              "peak MiB (GC)", "model TFLOP/s"]
    if cuda:
        header += ["MFU", "MFU (GC)"]
    rows = []
    for key in args.methods:
        r = results[key]
        if "error" in r:
            rows.append([C.METHODS[key][0], r["error"]] + [""] * (len(header) - 2))
            continue

        def cell(name, fmt, scale=1.0):
            return fmt.format(r[name] * scale) if name in r else "-"

        row = [r["method"], str(r["views"]), str(r["tokens"]), cell("step_gc0", "{:.1f}", 1e3),
               cell("samples_per_s_gc0", "{:.1f}"), cell("peak_gc0", "{:.1f}", 2 ** -20),
               cell("step_gc1", "{:.1f}", 1e3), cell("samples_per_s_gc1", "{:.1f}"),
               cell("peak_gc1", "{:.1f}", 2 ** -20), cell("tflops_gc0", "{:.4f}")]
        if cuda:
            row += [cell("mfu_gc0", "{:.1%}"), cell("mfu_gc1", "{:.1%}")]
        rows.append(row)
    table = C.markdown_table(header, rows)
    print(table)
    print(f"\npeak memory: {mem_method}")
    if not cuda:
        print("MFU: not computed on CPU (no peak figure); model TFLOP/s = (6·N_LM·T_LM + tower forward FLOPs) / step")
    ratios = {}
    base = results.get("llava", {})
    for key in args.methods:
        r = results[key]
        if "step_gc0" in r and "step_gc0" in base and key != "llava":
            ratios[key] = r["samples_per_s_gc0"] / base["samples_per_s_gc0"]
            print(f"ratio: training samples/s {key} / llava = {ratios[key]:.2f}x")
        if "step_gc0" in r and "step_gc1" in r:
            extra = f", peak memory with/without = {r['peak_gc1'] / r['peak_gc0']:.2f}x" if r.get("peak_gc0") else ""
            print(f"ratio: gradient checkpointing step time with/without for {key} = "
                  f"{r['step_gc1'] / r['step_gc0']:.2f}x{extra}")
    if not cuda and args.profile:
        print(prof_text)
    print(f"\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items() if k != "size_pairs"},
                       "results": results}, f, indent=2, default=str)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Model:** {model_name}, {args.dtype}; batch {args.batch} "
                   f"of {data}; **peak memory:** {mem_method}\n\n{table}\n")
        if not cuda and args.profile:
            section += f"\n```text\n{prof_text.strip()}\n```\n"
        summary = ["[bench_train.py](bench_train.py)",
                   f"training samples/s per method ({'real' if args.real else 'tiny'} model, {args.device}), "
                   "with/without gradient checkpointing",
                   ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items() if k != "llava") + " of llava",
                   "no target (reported); MFU on GPU only", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_train", section, summary)
    return 0


def profile_step(case: Case, n: int = 10) -> str:
    """torch.profiler's top-``n`` operators (self CPU time) of one training step."""
    from torch.profiler import ProfilerActivity, profile

    case.step(False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        case.step(False)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n, max_name_column_width=40)
    return f"\ntorch.profiler, one training step of {case.label} (batch of {case.views} views), top {n} by self CPU time:\n{table}"


if __name__ == "__main__":
    sys.exit(main())
