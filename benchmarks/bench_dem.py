"""Benchmark: INF-LLaVA's windowed dual-perspective enhancement vs one full cross-attention.

Peer: the *same* module (``DualPerspectiveEnhancement``, official settings: 8 heads, one shared
attention with output projection and post-LN residual, d = 1024) run with one window covering
the whole map (``cols = rows = 1``), i.e. one full cross-attention over the whole high-resolution
maps in each direction. Input: random local and global maps of CLIP-L/14-336 geometry (S = 336,
24×24 tokens per tile) for canvases of 1008², 1344² and 2016² (3×3, 4×4, 6×6 tiles).
Random weights; only time and memory are measured. Both variants run in the same invocation, and
the table prints their ratios.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the timed
runs. On CPU each case runs in its own subprocess. "peak MiB" is the peak of torch's CPU
allocations above the inputs during the first timed run, from ``torch.profiler``'s memory
timeline (every tensor and kernel buffer through torch's allocator; tracemalloc would see none of
them). "RSS MiB" is the process's view: after a warm-up on a small map the kernel's peak-RSS counter
is reset (``/proc/self/clear_refs`` = 5, Linux) and the peak (``VmHWM``) minus the resident memory
before the timed runs is reported (glibc's mmap threshold is fixed so freed blocks go back at
once); without ``clear_refs``, ``ru_maxrss`` minus the RSS before (an upper bound). Ratios use
"peak MiB".

Attention kernel: ``--attention auto`` lets PyTorch choose (flash/memory-efficient kernels where
available, which never materialise the L×L scores), ``--attention math`` forces the explicit
``softmax(QKᵀ/√d)V`` the papers' memory argument assumes. A case whose explicit score matrices
alone would exceed ``--max-gb`` is skipped and its estimate printed, so as not to exhaust the host.

Usage::

    python benchmarks/bench_dem.py                      # CPU, forward, auto kernel (≈2 min)
    python benchmarks/bench_dem.py --attention math     # explicit attention (full 2016² skipped on CPU)
    python benchmarks/bench_dem.py --device cuda --backward --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

TILE, PATCH, DIM, HEADS = 336, 14, 1024, 8
GRID = TILE // PATCH  # 24 tokens per tile side


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _torch_cpu_peak(prof) -> int | None:
    """Peak bytes of CPU tensors created during a profiled region, above what existed before it,
    from the profiler's memory timeline (every allocation through torch's CPU allocator)."""
    try:
        from torch.profiler._memory_profiler import Action

        timeline = prof._memory_profile().timeline
    except Exception:  # private API: absent or changed in this torch
        return None
    cur = peak = 0
    for _, action, (key, _version), size in timeline:
        if key.device.type != "cpu" or action == Action.PREEXISTING:
            continue
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak


def score_bytes(n_tiles: int, variant: str, batch: int, elem: int = 4) -> int:
    """Bytes of the explicit attention score matrix of one direction (what 'math' materialises)."""
    tokens = n_tiles * n_tiles * GRID * GRID
    window = GRID * GRID if variant == "windowed" else tokens
    windows = tokens // window
    return batch * windows * HEADS * window * window * elem


def run_case(size: int, variant: str, device: str, repeats: int, backward: bool, attention: str,
             batch: int, dtype: str, threads: int | None) -> dict:
    """One case in this process: build, warm up, reset the peak counter, time ``repeats`` runs."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hires_vlm.connectors import DualPerspectiveEnhancement

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    n = size // TILE
    module = DualPerspectiveEnhancement(
        DIM, HEADS, shared=True, bias=True, block="residual_post_ln",
        global_query_windows="contiguous", local_query_windows="strided",
    ).to(device=device, dtype=dt)
    module.requires_grad_(backward)
    side = n * GRID
    local = torch.randn(batch, side, side, DIM, device=device, dtype=dt)
    glob = torch.randn(batch, side, side, DIM, device=device, dtype=dt)
    cols = rows = n if variant == "windowed" else 1
    kernel = sdpa_kernel(SDPBackend.MATH) if attention == "math" else None

    def step(lm, gm, c, r):
        with torch.set_grad_enabled(backward):
            g_out, l_out = module(lm, gm, c, r)
            if backward:
                (g_out.float().sum() + l_out.float().sum()).backward()
                module.zero_grad(set_to_none=True)
        return g_out, l_out

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with kernel if kernel is not None else _null():
        # warm-up on a small map (threads, kernels, allocator) that does not raise the peak
        small = torch.randn(1, GRID, GRID, DIM, device=device, dtype=dt)
        step(small, small, 1, 1)
        del small
        if device.startswith("cuda"):  # on a GPU a full-size warm-up is cheap and settles cuBLAS/cuDNN choices
            step(local, glob, cols, rows)
        sync()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            method = "torch.cuda.max_memory_allocated - allocated before"
        else:
            reset = _reset_peak_rss()
            base_kb = _status_kb("VmRSS")
            method = ("VmHWM after clear_refs - VmRSS before (subprocess per case)" if reset
                      else "ru_maxrss - VmRSS before (subprocess per case; upper bound)")
        times, torch_peak = [], None
        for rep in range(repeats):
            profiler = None
            if rep == 0 and not device.startswith("cuda"):
                from torch.profiler import ProfilerActivity, profile

                profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                   with_stack=True)
                profiler.__enter__()
            sync()
            t0 = time.perf_counter()
            out = step(local, glob, cols, rows)
            sync()
            times.append(time.perf_counter() - t0)
            del out
            if profiler is not None:
                profiler.__exit__(None, None, None)
                torch_peak = _torch_cpu_peak(profiler)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() - base
            torch_peak = peak
        else:
            hwm = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = (hwm - base_kb) * 1024
    return {"size": size, "variant": variant, "tokens": batch * side * side, "windows": batch * (n * n if
            variant == "windowed" else 1), "seconds": min(times), "median": sorted(times)[len(times) // 2],
            "peak_bytes": torch_peak if torch_peak is not None else peak, "rss_bytes": peak, "memory_method":
            method if torch_peak is None or device.startswith("cuda") else
            "torch CPU allocations above the inputs (profiler memory timeline, first timed run); "
            "RSS column: " + method, "repeats": repeats}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _subprocess_case(args, size, variant, repeats) -> dict:
    cmd = [sys.executable, __file__, "--_case", f"{size}:{variant}:{repeats}", "--device", args.device,
           "--attention", args.attention, "--batch", str(args.batch), "--dtype", args.dtype]
    if args.backward:
        cmd.append("--backward")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # A fixed mmap threshold makes glibc hand large blocks back at once, so the RSS column follows live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"size": size, "variant": variant, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[1008, 1344, 2016], help="canvas sides, multiples of 336")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case (min is reported)")
    p.add_argument("--big-repeats", type=int, default=1, help="timed runs per case at sides >= 2016")
    p.add_argument("--backward", action="store_true", help="time forward + backward (training) instead of forward")
    p.add_argument("--attention", choices=["auto", "math"], default="auto")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip cases whose explicit scores exceed this (math)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._case:
        size, variant, repeats = args._case.split(":")
        res = run_case(int(size), variant, args.device, int(repeats), args.backward, args.attention, args.batch,
                       args.dtype, args.threads)
        print(json.dumps(res))
        return 0
    for s in args.sizes:
        if s % TILE:
            p.error(f"size {s} is not a multiple of the tile size {TILE}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda asked for but torch sees no CUDA device")
    import torch

    elem = torch.tensor([], dtype=getattr(torch, args.dtype)).element_size()
    print(f"DEM benchmark: S={TILE}, patch {PATCH} ({GRID}x{GRID} tokens/tile), d={DIM}, {HEADS} heads, "
          f"batch {args.batch}, {args.dtype}, device {args.device}, "
          f"{'forward+backward' if args.backward else 'forward (no grad)'}, attention kernel '{args.attention}', "
          f"torch {torch.__version__}, {torch.get_num_threads() if not args.threads else args.threads} CPU threads")
    results = []
    t_start = time.time()
    for size in args.sizes:
        n = size // TILE
        repeats = args.big_repeats if size >= 2016 else args.repeats
        row = {}
        for variant in ("windowed", "full"):
            est = score_bytes(n, variant, args.batch, elem)
            if args.attention == "math" and est > args.max_gb * 2 ** 30:
                why = f"scores alone ≈ {est / 2 ** 30:.1f} GiB per direction > --max-gb {args.max_gb}"
                row[variant] = {"size": size, "variant": variant, "skipped": why}
                continue
            if args.device.startswith("cuda"):
                try:
                    row[variant] = run_case(size, variant, args.device, repeats, args.backward, args.attention,
                                            args.batch, args.dtype, args.threads)
                except torch.OutOfMemoryError as exc:
                    row[variant] = {"size": size, "variant": variant, "error": f"out of memory: {exc}"[:120]}
                torch.cuda.empty_cache()
            else:
                row[variant] = _subprocess_case(args, size, variant, repeats)
        results.append(row)

    method = next((r[v]["memory_method"] for r in results for v in r if "memory_method" in r[v]), "-")
    print(f"peak memory: {method}")
    print()
    head = (f"{'canvas':>7} {'tiles':>5} {'tokens/map':>10} {'variant':>9} {'windows':>7} {'time ms':>10} "
            f"{'peak MiB':>9} {'RSS MiB':>8} {'reps':>4}")
    print(head)
    print("-" * len(head))
    for row in results:
        for variant in ("windowed", "full"):
            r = row[variant]
            n = r["size"] // TILE
            if "seconds" in r:
                print(f"{r['size']:>6}² {n}x{n:<3} {r['tokens']:>10} {variant:>9} {r['windows']:>7} "
                      f"{r['seconds'] * 1e3:>10.1f} {r['peak_bytes'] / 2 ** 20:>9.1f} "
                      f"{r['rss_bytes'] / 2 ** 20:>8.1f} {r['repeats']:>4}")
            else:
                print(f"{r['size']:>6}² {n}x{n:<3} {'':>10} {variant:>9} {'':>7} {r.get('skipped') or r.get('error')}")
    print()
    print(f"{'canvas':>7} {'time full / windowed':>21} {'peak mem full / windowed':>25}")
    for row in results:
        w, f = row["windowed"], row["full"]
        size = w["size"]
        if "seconds" in w and "seconds" in f:
            mem = f["peak_bytes"] / w["peak_bytes"] if w["peak_bytes"] > 0 else float("nan")
            print(f"{size:>6}² {f['seconds'] / w['seconds']:>20.1f}x {mem:>24.1f}x")
        else:
            print(f"{size:>6}² {'-':>21} {'-':>25}")
    print(f"\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
