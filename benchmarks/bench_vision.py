"""Benchmark: one batched vision-tower forward over all views against one forward per view.

Ours: ``VisionTower`` runs every view of a batch in one forward (DESIGN.md, stage 2).
Peer: the official INF-LLaVA code encodes its views one at a time — 19 separate forwards per
1008² image (9 contiguous tiles, 9 strided tiles, 1 low-resolution view); the per-view loop here
calls the same tower with one view at a time, so the only difference is batching.

Input: the views our processor makes of one 1008² image (a smooth pattern plus noise) for
``inf_llava`` (official preset: 19 views) and ``llava_hd`` (global view + 2×2 tiles: 5 views).
Tower: CLIP-L/14-336 geometry (S = 336, patch 14, 577 tokens, hidden 1024, MLP 4096, 16 heads),
random weights, feature layer −2 as LLaVA. On CPU the default is ``--layers 4`` of the 24 (times
scale with the layer count; ratios hardly do); ``--full`` runs all 24. GPU: ``--device cuda``
(bf16 by default) — written for, but not run on, this CPU-only machine.

Each method runs in its own subprocess, no gradient (the tower is frozen), single-threaded on CPU by
default. After a one-view warm-up, the first forward of each mode gives its peak memory: CPU —
resident-set high-water mark above the level before the forward (``VmHWM`` after ``clear_refs``,
see ``_common.py``); CUDA — ``max_memory_allocated`` above the memory before. Then both modes run
round-robin; time = median of ``--repeats`` forwards per mode (the first included). Also printed:
tower FLOPs (projections + attention) and achieved TFLOP/s (MFU on CUDA).

Usage::

    python benchmarks/bench_vision.py                    # CPU, 4 layers, ≈2.5 min on a loaded 2-core box
    python benchmarks/bench_vision.py --full             # all 24 layers (≈6× longer)
    python benchmarks/bench_vision.py --device cuda --full --repeats 10
    python benchmarks/bench_vision.py --smoke            # tiny tower; for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

METHODS = ("inf_llava", "llava_hd")
MODES = ("batched", "per_view")


def tower_config(args):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, image_size=args.tile, patch_size=args.patch, projection_dim=768,
        hidden_act="quick_gelu",
    )


def views_for(method: str, tile: int, image_side: int):
    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor
    from hires_vlm.methods import resolve_method_config

    spec = resolve_method_config(method).imaging_spec(tile, CLIP_MEAN, CLIP_STD)
    return HiResImageProcessor(spec)([C.make_image(image_side, image_side, seed=0)]).pixel_values


def run_method(args, method: str) -> list[dict]:
    """Both modes for one method's views, in this process: the peak memory of each mode from its first
    forward, then the forwards of both modes round-robin (so load from other jobs falls on both)."""
    import torch
    from transformers import CLIPVisionModel

    from hires_vlm.vision import VisionTower

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with dev:
        model = CLIPVisionModel(tower_config(args)).to(dtype)
    tower = VisionTower(model, feature_layer=-2).eval().requires_grad_(False)
    pixels = views_for(method, args.tile, args.image).to(dev, dtype)
    v = pixels.shape[0]
    cuda = dev.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward(mode):
        with torch.no_grad():
            if mode == "batched":
                return tower(pixels)
            return torch.cat([tower(pixels[i:i + 1]) for i in range(v)], 0)

    with torch.no_grad():
        tower(pixels[:1])  # warm-up: threads, kernels, allocator — without raising the peak
    if cuda:  # on a GPU full warm-ups are cheap and settle kernel choices
        for mode in MODES:
            forward(mode)
    sync()
    res = {}
    for mode in ("per_view", "batched"):  # smaller peak first
        calls = tower.calls
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            out = forward(mode)
            sync()
            first = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base
            mem = "CUDA: max_memory_allocated above the memory before the forward"
        else:
            with C.PeakRSS() as p:
                t0 = time.perf_counter()
                out = forward(mode)
                first = time.perf_counter() - t0
            peak, mem = p.delta_bytes, p.method
        del out
        res[mode] = {"method": method, "mode": mode, "views": v, "forwards": tower.calls - calls, "times": [first],
                     "peak_bytes": peak, "memory_method": mem}
    more = C.interleaved({m: (lambda m=m: (forward(m), sync())) for m in MODES}, args.repeats - 1, warmup=0)
    tokens = (args.tile // args.patch) ** 2 + 1
    flops = C.clip_tower_flops(v, args.layers, tokens, args.hidden, 4 * args.hidden)
    peak_tf = C.gpu_peak_tflops(torch.cuda.get_device_name()) if cuda else None
    for mode, r in res.items():
        r["times"] += more[mode]
        r["seconds"] = C.median(r["times"])
        r["flops"] = flops
        r["tflops_per_s"] = flops / r["seconds"] / 1e12
        r["mfu"] = r["tflops_per_s"] / peak_tf if peak_tf and args.dtype == "bfloat16" else None
    return [res["batched"], res["per_view"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    p.add_argument("--layers", type=int, default=None, help="tower layers (CPU default 4, CUDA default 24)")
    p.add_argument("--full", action="store_true", help="all 24 layers of CLIP-L/14-336")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--tile", type=int, default=336)
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--image", type=int, default=1008, help="image side in pixels (square)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=["llava", "llava_hd", "monkey", "slime",
                                                                             "inf_llava"])
    p.add_argument("--repeats", type=int, default=2, help="timed forwards per mode (median reported; CPU: 4 layers "
                   "x 19 views take ~20 s a forward)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (CPU default 1: on a shared machine two OpenMP threads stall on each other)")
    p.add_argument("--inline", action="store_true", help="run the cases in this process (no clean peak memory)")
    p.add_argument("--smoke", action="store_true", help="tiny tower (S=112, d=64, 1 layer); test suite")
    C.add_output_arguments(p)
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.smoke:
        args.tile, args.hidden, args.heads, args.image = 112, 64, 4, 336
        args.layers, args.repeats = 1, min(args.repeats, 2)
    if args.layers is None:
        args.layers = 24 if (args.full or cuda) else 4
    if args.dtype is None:
        args.dtype = "bfloat16" if cuda else "float32"
    if args.threads is None and not cuda:
        args.threads = 1
    if args.smoke:
        args.inline = True
    if args._case:
        print(json.dumps(run_method(args, args._case)))
        return 0
    import torch

    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)  # the cases set it too; here so the header says it
    info = C.machine(args.device)
    geometry = (f"S={args.tile}, patch {args.patch}, hidden {args.hidden}, {args.heads} heads, {args.layers} of 24 "
                f"layers" if not args.smoke else f"smoke: S={args.tile}, hidden {args.hidden}, {args.layers} layer")
    C.print_header(f"Vision-tower benchmark: one batched forward vs one forward per view; {geometry}; "
                   f"{args.image}² image; {args.dtype} on {args.device}", info)
    passthrough = ["--device", args.device, "--dtype", args.dtype, "--layers", str(args.layers), "--hidden",
                   str(args.hidden), "--heads", str(args.heads), "--tile", str(args.tile), "--patch", str(args.patch),
                   "--image", str(args.image), "--repeats", str(args.repeats)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    results = {}
    t_start = time.time()
    for method in args.methods:
        rs = run_method(args, method) if args.inline else C.run_subprocess_case(
            __file__, passthrough + ["--_case", method])
        if isinstance(rs, dict):  # an error
            rs = [dict(rs, method=method, mode=m) for m in MODES]
        for r in rs:
            results[(method, r["mode"])] = r
    mem_method = next((r["memory_method"] for r in results.values() if "memory_method" in r), "-")
    mem_method = mem_method.replace("subprocess per case", "all cases in one process: indicative only"
                                    if args.inline else "one subprocess per method")

    header = ["method (views)", "mode", "forwards", "time ms (min–max)", "TFLOP/s", "peak MiB", "batched speed-up",
              "per-view / batched memory"]
    if cuda:
        header.insert(5, "MFU")
    rows = []
    ratios = {}
    for method in args.methods:
        b, s = results[(method, "batched")], results[(method, "per_view")]
        for mode, r in (("batched", b), ("per_view", s)):
            if "error" in r:
                rows.append([method, mode, "", r["error"], "", "", "", ""] + ([""] if cuda else []))
                continue
            speed = mem = ""
            if mode == "batched" and "seconds" in s:
                ratios[method] = s["seconds"] / r["seconds"]
                speed = f"**{ratios[method]:.2f}×**"
                mem = f"{s['peak_bytes'] / r['peak_bytes']:.2f}×" if r["peak_bytes"] else "-"
            spread = f" ({min(r['times']) * 1e3:.0f}–{max(r['times']) * 1e3:.0f})" if len(r["times"]) > 1 else ""
            row = [f"{method} ({r['views']})", "one batched forward" if mode == "batched" else "one forward per view",
                   str(r["forwards"]), f"{r['seconds'] * 1e3:.1f}{spread}", f"{r['tflops_per_s']:.3f}",
                   f"{r['peak_bytes'] / 2 ** 20:.0f}", speed, mem]
            if cuda:
                row.insert(5, f"{r['mfu'] * 100:.1f} %" if r.get("mfu") else "-")
            rows.append(row)
    table = C.markdown_table(header, rows)
    print(table)
    print(f"\npeak memory: {mem_method}")
    for method, ratio in ratios.items():
        print(f"ratio: vision tower {method} time per-view / batched = {ratio:.2f}x")
    print(f"\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": [v for v in results.values()]}, f, indent=2)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Geometry:** {geometry}, {args.dtype}; "
                   f"**peak memory:** {mem_method}\n\n{table}\n")
        summary = ["[bench_vision.py](bench_vision.py)",
                   f"tower time, {args.image}² image, one forward per view / one batched forward ({args.layers} layers,"
                   f" {args.device})",
                   ", ".join(f"{m} {r:.2f}×" for m, r in ratios.items()),
                   "no target; batched faster here: " + ("yes" if all(r >= 1.0 for r in ratios.values()) else "no"),
                   f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_vision", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
