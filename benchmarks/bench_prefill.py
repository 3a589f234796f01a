"""Benchmark: visual tokens, prefill time and peak memory of every method at three image sizes.

The last column gives the views and visual tokens (before routing) the same images get at
CLIP-L/14-336 geometry, computed from each method's token count without running a model.

Methods: ``llava``, ``llava_hd``, ``monkey``, ``slime`` with γ = 1 (every local token: the count
before routing), ``slime`` routed at γ = 0.95 (eval mode, no router noise) and ``inf_llava``
(official preset). Square images of 672², 1008², 1344² (a smooth pattern plus noise), one prompt.

Prefill = one forward of the full model in eval mode over the prompt and the image, as
``generate`` starts: vision tower over all views, connector, placeholder expansion, LM forward
building the KV cache, logits for the last position only (``logits_to_keep=1``). Image
preprocessing is done beforehand and not timed. Median of ``--repeats`` after a warm-up.

Models: the tiny default (``build_tiny``: S = 112, 8×8 tokens per view, 2-layer 128-wide Llama;
SliME and monkey with 4×4 queries per tile, as the tiny configs) on CPU — always available. ``--real`` builds CLIP-L/14-336 + an 8B-shaped Llama (hidden 4096, 32
layers, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256) with random weights, constructed
directly on the device in bf16 (``torch.device`` context; no fp32 copy); meant for ``--device
cuda`` and not run on this CPU-only machine. ``--vision-layers`` / ``--text-layers`` shrink it.

Timing: on CPU all methods are built in one process and, per size, their prefills run round-robin
(load from other jobs falls on all alike), single-threaded by default; median of ``--repeats``. On
CUDA each method runs in its own process (a dedicated GPU needs no round-robin).

Peak memory: above the level after building the model and a warm-up prefill (weights excluded).
CPU: one subprocess per method, sizes ascending, ``VmHWM`` after ``clear_refs`` minus ``VmRSS``
before the prefill (see ``_common.py``); CUDA: ``max_memory_allocated`` above the memory before.

Usage::

    python benchmarks/bench_prefill.py                    # tiny model, CPU, ≈1 min
    python benchmarks/bench_prefill.py --real --device cuda --repeats 5
    python benchmarks/bench_prefill.py --smoke            # one size; test suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

PROMPT = "Describe the image in detail."


class Case:
    """One method's model and its inputs at every size; ``prefill(side)`` runs one prefill."""

    def __init__(self, args, key: str):
        import torch

        self.key, self.label = key, C.METHODS[key][0]
        self.dev = torch.device(args.device)
        self.model, self.proc = C.build_model(C.method_spec(key, args.real), real=args.real, device=args.device,
                                              dtype=args.dtype, vision_layers=args.vision_layers,
                                              text_layers=args.text_layers)
        self.model.eval()
        self.inputs = {}
        for side in args.sizes:
            inputs = {k: v.to(self.dev) for k, v in self.proc(PROMPT, C.make_image(side, side, seed=side)).items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.vision_tower.dtype)
            self.inputs[side] = inputs

    def prefill(self, side: int):
        import torch

        with torch.no_grad():
            out = self.model(**self.inputs[side], use_cache=True, logits_to_keep=1)
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    def describe(self, side: int, out) -> dict:
        return {"key": self.key, "method": self.label, "size": side,
                "views": int(self.inputs[side]["pixel_values"].shape[0]),
                "visual_tokens": int(out.visual_tokens.sum()),
                "max_visual_tokens": self.proc.max_visual_tokens((side, side)),
                "sequence": int(out.attention_mask.shape[1]), "params": C.count_params(self.model)}


def real_geometry(key: str, side: int) -> tuple[int, int]:
    """(views, visual tokens before any routing) of a ``side``² image at CLIP-L/14-336 geometry
    (S = 336, 24×24 tokens per view), from the method's own token count — no model is run."""
    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD
    from hires_vlm.methods import resolve_method_config

    cfg = resolve_method_config(C.method_spec(key, real=True))
    rec = cfg.imaging_spec(336, CLIP_MEAN, CLIP_STD).record_for((side, side))
    return rec.num_views, cfg.max_visual_tokens(rec, 24)


def measure_method(args, key: str, timing: bool) -> list[dict]:
    """Peak memory (and, with ``timing``, the median time) of one method at every size, ascending."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    case = Case(args, key)
    cuda = case.dev.type == "cuda"
    out = []
    for side in sorted(args.sizes):
        case.prefill(side)  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            res = case.prefill(side)
            first = time.perf_counter() - t0
            peak, mem = torch.cuda.max_memory_allocated() - base, "CUDA: max_memory_allocated above the memory before"
        else:
            with C.PeakRSS() as p:
                t0 = time.perf_counter()
                res = case.prefill(side)
                first = time.perf_counter() - t0
            peak, mem = p.delta_bytes, p.method
        r = case.describe(side, res)
        del res
        r.update(peak_bytes=peak, memory_method=mem)
        if timing:
            r["times"] = [first] + C.time_calls(lambda: case.prefill(side), args.repeats - 1)
            r["seconds"] = C.median(r["times"])
        out.append(r)
    return out


def time_round_robin(args) -> dict[tuple[str, int], dict]:
    """All methods built in this process; per size, their prefills round-robin (load falls on all alike)."""
    cases = [Case(args, key) for key in args.methods]
    out = {}
    for side in args.sizes:
        fns = {c.key: (lambda c=c: c.prefill(side)) for c in cases}
        times = C.interleaved(fns, args.repeats, warmup=1)
        for c in cases:
            r = c.describe(side, c.prefill(side))
            r.update(times=times[c.key], seconds=C.median(times[c.key]))
            out[(c.key, side)] = r
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 for the tiny model on CPU, bfloat16 with --real")
    p.add_argument("--real", action="store_true", help="CLIP-L/14-336 + 8B-shaped Llama (for a GPU)")
    p.add_argument("--vision-layers", type=int, default=None, help="with --real: fewer tower layers")
    p.add_argument("--text-layers", type=int, default=None, help="with --real: fewer LM layers")
    p.add_argument("--sizes", type=int, nargs="+", default=[672, 1008, 1344], help="square image sides")
    p.add_argument("--methods", nargs="+", default=list(C.METHODS), choices=list(C.METHODS))
    p.add_argument("--repeats", type=int, default=5, help="timed prefills per case (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1)")
    p.add_argument("--inline", action="store_true", help="run every method in this process (indicative memory)")
    p.add_argument("--smoke", action="store_true", help="one size, 2 repeats, in-process; test suite")
    C.add_output_arguments(p)
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.dtype is None:
        args.dtype = "bfloat16" if (args.real or cuda) else "float32"
    if args.threads is None and not cuda:
        args.threads = 1
    if args.smoke:
        args.sizes, args.repeats, args.inline = [672], min(args.repeats, 2), True
    if args.real and not cuda and not (args.vision_layers and args.text_layers):
        p.error("--real builds 8B parameters (16 GB in bf16): use --device cuda, or shrink it on CPU with "
                "--vision-layers and --text-layers")
    if args._case:
        kind, key = args._case.split(":")
        print(json.dumps(measure_method(args, key, timing=kind == "both")))
        return 0
    import torch

    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine(args.device)
    model_name = ("CLIP-L/14-336 + 8B-shaped Llama (random weights)" if args.real else
                  "tiny default (S=112, CLIP 2x64, Llama 2x128)")
    if args.real and (args.vision_layers or args.text_layers):
        model_name += f", shrunk to {args.vision_layers or 24} tower / {args.text_layers or 32} LM layers"
    C.print_header(f"Prefill benchmark: {model_name}; {args.dtype} on {args.device}", info)
    passthrough = ["--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats), "--sizes",
                   *map(str, args.sizes)]
    if args.real:
        passthrough.append("--real")
    for flag, v in (("--vision-layers", args.vision_layers), ("--text-layers", args.text_layers),
                    ("--threads", args.threads)):
        if v:
            passthrough += [flag, str(v)]
    t_start = time.time()
    results: list[dict] = []
    if cuda:  # a dedicated GPU: each method in its own process, time and memory together
        for key in args.methods:
            r = C.run_subprocess_case(__file__, passthrough + ["--_case", f"both:{key}"])
            results += ([dict(r, key=key, method=C.METHODS[key][0], size=s) for s in args.sizes]
                        if isinstance(r, dict) else r)
    else:  # shared CPU: times round-robin in this process, memory per method in subprocesses
        timed = time_round_robin(args)
        for key in args.methods:
            if args.inline:
                mem = measure_method(args, key, timing=False)
            else:
                mem = C.run_subprocess_case(__file__, passthrough + ["--_case", f"memory:{key}"])
            by_size = {m["size"]: m for m in mem} if isinstance(mem, list) else {}
            for side in args.sizes:
                r = timed[(key, side)]
                m = by_size.get(side, {"memory_method": "-", "peak_bytes": None,
                                       "memory_error": mem.get("error") if isinstance(mem, dict) else "?"})
                r.update({k: v for k, v in m.items() if k in ("peak_bytes", "memory_method", "memory_error")})
                results.append(r)
    mem_method = next((r["memory_method"] for r in results if "memory_method" in r), "-")
    if args.inline:
        mem_method = mem_method.replace("subprocess per case", "all methods in one process: indicative only")
    else:
        mem_method = mem_method.replace("subprocess per case", "one subprocess per method, sizes ascending")

    base = {r["size"]: r for r in results if r.get("key") == "llava" and "seconds" in r}
    header = ["method", "image", "views", "visual tokens (max)", "sequence", "prefill ms", "× llava time",
              "peak MiB", "at CLIP-L/14-336: views, max visual tokens"]
    rows = []
    for r in sorted(results, key=lambda r: (r["size"], list(C.METHODS).index(r["key"]))):
        if "error" in r:
            rows.append([r["method"], f"{r['size']}²", "", "", "", r["error"], "", "", ""])
            continue
        rel = f"{r['seconds'] / base[r['size']]['seconds']:.1f}×" if r["size"] in base else "-"
        rv, rt = real_geometry(r["key"], r["size"])
        rows.append([r["method"], f"{r['size']}²", str(r["views"]), f"{r['visual_tokens']} ({r['max_visual_tokens']})",
                     str(r["sequence"]), f"{r['seconds'] * 1e3:.1f}", rel,
                     f"{r['peak_bytes'] / 2 ** 20:.1f}" if r.get("peak_bytes") is not None else
                     str(r.get("memory_error", "-")), f"{rv}, {rt}"])
    table = C.markdown_table(header, rows)
    print(table)
    print(f"\npeak memory: {mem_method}")
    ratios = {}
    for side in args.sizes:
        by = {r["key"]: r for r in results if r["size"] == side and "seconds" in r}
        if "llava_hd" in by and "slime" in by:
            ratios[side] = by["llava_hd"]["seconds"] / by["slime"]["seconds"]
            print(f"ratio: prefill time llava_hd / slime(γ=0.95) at {side}² = {ratios[side]:.2f}x "
                  f"({by['llava_hd']['visual_tokens']} vs {by['slime']['visual_tokens']} visual tokens)")
        if "slime_all" in by and "slime" in by:
            kept = by["slime"]["visual_tokens"] / max(by["slime_all"]["visual_tokens"], 1)
            print(f"ratio: slime routing at {side}² keeps {kept:.2f} of the tokens, prefill time γ=1 / γ=0.95 = "
                  f"{by['slime_all']['seconds'] / by['slime']['seconds']:.2f}x")
    print(f"\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results}, f, indent=2)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Model:** {model_name}, {args.dtype} on {args.device}; "
                   f"**peak memory:** {mem_method}\n\n{table}\n")
        summary = ["[bench_prefill.py](bench_prefill.py)",
                   f"prefill time per method and size ({'real' if args.real else 'tiny'} model, {args.device})",
                   "llava_hd / slime(γ=0.95): " + ", ".join(f"{s}² {r:.2f}×" for s, r in ratios.items()),
                   "no target (reported)", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_prefill", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
