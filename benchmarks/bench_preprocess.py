"""Benchmark: our image processor against transformers' LLaVA-NeXT image processor (PIL backend).

Ours: ``HiResImageProcessor`` with the ``llava_hd`` imaging spec (S = 336, CLIP mean/std, LLaVA-NeXT's
default grids, squashed global view, fit-and-pad canvas, tiles row-major).
Peer: ``transformers``' ``LlavaNextImageProcessorPil`` (the NumPy/Pillow backend; the torchvision
backend ``LlavaNextImageProcessor`` needs torchvision, which cannot be installed next to this
CPU-only torch build) with ``shortest_edge`` = crop = 336, the same mean/std, and the same grids as
pinpoints. transformers reads pinpoints as (height, width) and we read grids as (width, height), so
the peer gets ``flip_pairs`` of our canvases: both then choose the same grid for every image.

Both run on the same decoded RGB images (sizes 336² to 2016², several aspect ratios; a smooth
pattern plus noise) in the same process, round-robin, single-threaded by default (as in a data
loader worker; ``--threads`` changes it). Reported per size: views each produces, the max absolute
difference of the normalised views (same order in both: global view, then tiles row-major), the
median time per image of each, images/s, and the ratio. The ``batch`` row processes all images in
one call (the peer pads every image to the largest view count; we do not).

Floor: both processors must run the same two antialiased bicubic Pillow resizes per image (image →
global view S×S, image → the canvas's content box); ``Pillow floor`` times exactly those calls, so
``peer / floor`` is the largest ratio any processor can reach while producing Pillow's pixels.
``--what-if`` also times the same two resizes with torch's uint8 antialiased bicubic kernel (what
transformers' torchvision backend uses), with its largest difference from Pillow in grey levels.
``--baseline-rev REV`` also times our processor as it was at git revision ``REV`` (its
``src/hires_vlm/imaging`` loaded from git into a temporary package) and checks that both give
bit-identical views.

Usage::

    python benchmarks/bench_preprocess.py                 # ≈1 min on 2 cores
    python benchmarks/bench_preprocess.py --profile       # + cProfile top-10 of both on the batch
    python benchmarks/bench_preprocess.py --what-if --readme
    python benchmarks/bench_preprocess.py --baseline-rev d90e189   # + our processor before the optimisation
    python benchmarks/bench_preprocess.py --smoke         # seconds; for the test suite
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

S = 336
DEFAULT_SIZES = ["336x336", "672x504", "1008x672", "800x1344", "1344x1344", "2016x1134", "1512x2016", "2016x2016"]
SMOKE_SIZES = ["336x336", "672x504"]
TARGET = 5.0


def build(tile: int = S):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor, flip_pairs
    from hires_vlm.methods import resolve_method_config

    spec = resolve_method_config("llava_hd").imaging_spec(tile, CLIP_MEAN, CLIP_STD)
    ours = HiResImageProcessor(spec)
    canvases = [(c * tile, r * tile) for c, r in spec.grid_candidates]  # (width, height)
    peer = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=[list(p) for p in flip_pairs(canvases)], image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return spec, ours, peer


def baseline_processor(rev: str, spec):
    """``HiResImageProcessor`` as it was at git revision ``rev`` (``src/hires_vlm/imaging`` only), for a
    before/after comparison in the same run."""
    import importlib
    import subprocess
    import tempfile

    pkg = "_baseline_imaging"
    root = tempfile.mkdtemp(prefix="bench_preprocess_")
    os.makedirs(os.path.join(root, pkg))
    listing = subprocess.run(["git", "-C", C.ROOT, "ls-tree", "--name-only", rev, "src/hires_vlm/imaging/"],
                             capture_output=True, text=True, check=True).stdout.split()
    for path in listing:
        if path.endswith(".py"):
            text = subprocess.run(["git", "-C", C.ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True,
                                  check=True).stdout
            with open(os.path.join(root, pkg, os.path.basename(path)), "w") as f:
                f.write(text)
    sys.path.insert(0, root)
    mod = importlib.import_module(pkg)
    return mod.HiResImageProcessor(mod.ImagingSpec.from_dict(spec.to_dict()))


def pillow_floor(img, spec):
    """The two Pillow resizes every LLaVA-NeXT processor has to run for this image."""
    from PIL import Image

    s = spec.tile_size
    left, top, right, bottom = spec.record_for(img.size).content_box
    sizes = [(s, s), (right - left, bottom - top)]

    def run():
        for size in sizes:
            img.resize(size, Image.Resampling.BICUBIC)  # same size: Pillow returns a copy, no resampling

    return run, sizes


def torch_floor(img, sizes):
    """The same resizes with torch's uint8 antialiased bicubic (channels-last), from the PIL image."""
    import torch
    import torch.nn.functional as F

    def run():
        with warnings.catch_warnings():  # read-only array from Pillow: the kernel only reads it
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None]
        return [F.interpolate(t, size=(h, w), mode="bicubic", antialias=True) for w, h in sizes]

    return run


def grey_level_diff(img, sizes, run_torch) -> int:
    from PIL import Image

    outs = run_torch()
    worst = 0
    for (w, h), t in zip(sizes, outs):
        ref = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        got = t[0].permute(1, 2, 0).numpy().astype(np.int16)
        worst = max(worst, int(np.abs(ref - got).max()))
    return worst


def compare_outputs(ours, peer, img, spec) -> tuple[int, int, float, bool]:
    """(our views, peer views, max |difference|, same grid) for one image."""
    import torch

    from hires_vlm.imaging import flip_pairs
    from transformers.image_processing_utils import select_best_resolution

    a = ours([img])
    b = peer(img, return_tensors="pt")
    pa, pb = a.pixel_values, b["pixel_values"][0]
    rec = a.records[0]
    # transformers works in (height, width): its canvas for this image, flipped back to (width, height)
    pins = flip_pairs([(c * spec.tile_size, r * spec.tile_size) for c, r in spec.grid_candidates])
    best_hw = select_best_resolution((img.size[1], img.size[0]), [list(p) for p in pins])
    same_grid = tuple(flip_pairs([best_hw])[0]) == tuple(rec.canvas_size)
    n = min(pa.shape[0], pb.shape[0])
    diff = float((pa[:n] - pb[:n].to(pa.dtype)).abs().max()) if n else float("nan")
    if pa.shape[0] != pb.shape[0]:
        diff = float("inf")
    return pa.shape[0], pb.shape[0], diff, same_grid and torch.isfinite(pa).all().item()


def profile_top(fn, n: int = 10, calls: int = 5) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    st.print_stats(n)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
    head = [ln for ln in lines[:start] if "function calls" in ln]
    out = head + lines[start:start + n + 1]
    root = os.path.dirname(C.ROOT)
    return "\n".join(ln.replace(sys.prefix + "/lib/python3.11/site-packages/", "").replace(root + "/", "")
                     for ln in out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=None, help="WxH image sizes (default: 336² … 2016², 8 sizes)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per processor and size (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a loader worker)")
    p.add_argument("--what-if", action="store_true", help="also time torch's uint8 antialiased resize floor")
    p.add_argument("--profile", action="store_true", help="print cProfile top-10 of both processors on the batch")
    p.add_argument("--baseline-rev", help="also time our processor as of this git revision (before/after)")
    p.add_argument("--smoke", action="store_true", help="two small sizes, 2 repeats (test suite)")
    p.add_argument("--readme", action="store_true", help="update this benchmark's rows in benchmarks/README.md")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats = args.sizes or SMOKE_SIZES, min(args.repeats, 2)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in (args.sizes or DEFAULT_SIZES)]

    import torch

    torch.set_num_threads(args.threads)
    info = C.machine("cpu")
    C.print_header("Preprocessing benchmark: hires-vlm HiResImageProcessor (llava_hd, S=336) vs transformers "
                   "LlavaNextImageProcessorPil", info)
    spec, ours, peer = build(S)
    images = [C.make_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    base = baseline_processor(args.baseline_rev, spec) if args.baseline_rev else None

    rows, results = [], []
    for img in images:
        floor, rs_sizes = pillow_floor(img, spec)
        fns = {"ours": lambda img=img: ours([img]), "peer": lambda img=img: peer(img, return_tensors="pt"),
               "floor": floor}
        if args.what_if:
            fns["torch_floor"] = torch_floor(img, rs_sizes)
        if base is not None:
            fns["baseline"] = lambda img=img: base([img])
        t = C.interleaved(fns, args.repeats)
        med = {k: C.median(v) for k, v in t.items()}
        nv_ours, nv_peer, diff, ok = compare_outputs(ours, peer, img, spec)
        rec = spec.record_for(img.size)
        r = {"size": img.size, "grid": rec.grid, "views_ours": nv_ours, "views_peer": nv_peer, "same_grid": ok,
             "max_abs_diff": diff, "ours_ms": med["ours"] * 1e3, "peer_ms": med["peer"] * 1e3,
             "floor_ms": med["floor"] * 1e3, "ratio": med["peer"] / med["ours"],
             "max_ratio_pillow": med["peer"] / med["floor"] if med["floor"] > 1e-5 else float("inf")}
        if args.what_if:
            r["torch_floor_ms"] = med["torch_floor"] * 1e3
            r["torch_vs_pillow_levels"] = grey_level_diff(img, rs_sizes, fns["torch_floor"])
        if base is not None:
            r["baseline_ms"] = med["baseline"] * 1e3
            r["baseline_identical"] = bool(torch.equal(base([img]).pixel_values, ours([img]).pixel_values))
        results.append(r)

    # one call over all images: a mixed batch
    batch_fns = {"ours": lambda: ours(images), "peer": lambda: peer(images, return_tensors="pt")}
    if base is not None:
        batch_fns["baseline"] = lambda: base(images)
    tb = C.interleaved(batch_fns, max(3, args.repeats // 3))
    bmed = {k: C.median(v) for k, v in tb.items()}
    batch = {"images": len(images), "ours_ms": bmed["ours"] * 1e3, "peer_ms": bmed["peer"] * 1e3,
             "ratio": bmed["peer"] / bmed["ours"],
             "peer_views": int(np.prod(batch_fns["peer"]()["pixel_values"].shape[:2])),
             "ours_views": int(ours(images).pixel_values.shape[0])}
    if base is not None:
        batch["baseline_ms"] = bmed["baseline"] * 1e3
        batch["baseline_identical"] = bool(torch.equal(base(images).pixel_values, ours(images).pixel_values))

    header = ["image (w×h)", "grid", "views ours/peer", "max abs diff", "ours ms", "peer ms", "ours img/s",
              "peer img/s", "ratio", "Pillow floor ms", "peer/floor (max ratio)"]
    if args.what_if:
        header += ["torch uint8 floor ms", "torch vs Pillow (grey levels)"]
    if base is not None:
        header += [f"ours @ {args.baseline_rev[:10]} ms", "speed-up vs that", "bit-identical"]
    for r in results:
        w, h = r["size"]
        row = [f"{w}×{h}", f"{r['grid'][0]}×{r['grid'][1]}", f"{r['views_ours']}/{r['views_peer']}",
               f"{r['max_abs_diff']:.1e}" + ("" if r["same_grid"] else " (grid differs!)"),
               f"{r['ours_ms']:.2f}", f"{r['peer_ms']:.2f}", f"{1e3 / r['ours_ms']:.0f}", f"{1e3 / r['peer_ms']:.0f}",
               f"**{r['ratio']:.1f}×**", f"{r['floor_ms']:.2f}", f"{r['max_ratio_pillow']:.1f}×"]
        if args.what_if:
            row += [f"{r['torch_floor_ms']:.2f}", f"{r['torch_vs_pillow_levels']}"]
        if base is not None:
            row += [f"{r['baseline_ms']:.2f}", f"{r['baseline_ms'] / r['ours_ms']:.2f}×",
                    "yes" if r["baseline_identical"] else "NO"]
        rows.append(row)
    brow = [f"batch of {batch['images']}", "mixed", f"{batch['ours_views']}/{batch['peer_views']} (peer pads)", "",
            f"{batch['ours_ms']:.1f}", f"{batch['peer_ms']:.1f}", f"{batch['images'] * 1e3 / batch['ours_ms']:.0f}",
            f"{batch['images'] * 1e3 / batch['peer_ms']:.0f}", f"**{batch['ratio']:.1f}×**", "", ""]
    if args.what_if:
        brow += ["", ""]
    if base is not None:
        brow += [f"{batch['baseline_ms']:.1f}", f"{batch['baseline_ms'] / batch['ours_ms']:.2f}×",
                 "yes" if batch["baseline_identical"] else "NO"]
    rows.append(brow)
    table = C.markdown_table(header, rows)
    print(table)
    met = [r for r in results if r["ratio"] >= TARGET]
    worst = min(results, key=lambda r: r["ratio"])
    print()
    print(f"ratio: preprocess images/s ours / transformers-PIL = {batch['ratio']:.2f}x on the mixed batch; "
          f"per size {min(r['ratio'] for r in results):.2f}x .. {max(r['ratio'] for r in results):.2f}x "
          f"(target >= {TARGET:.0f}x met at {len(met)}/{len(results)} sizes)")
    print(f"max abs difference of the views both produce: {max(r['max_abs_diff'] for r in results):.2e}; "
          f"grids agree: {all(r['same_grid'] for r in results)}")
    print(f"Pillow-resize bound: peer/floor at {worst['size'][0]}x{worst['size'][1]} is "
          f"{worst['max_ratio_pillow']:.1f}x, so no processor producing Pillow's pixels can be "
          f"{TARGET:.0f}x faster there" if worst["max_ratio_pillow"] < TARGET else
          "Pillow-resize bound does not prevent the target at any size")

    if base is not None:
        print(f"ratio: preprocess time ours @ {args.baseline_rev} / ours now = "
              f"{batch['baseline_ms'] / batch['ours_ms']:.2f}x on the mixed batch; outputs bit-identical: "
              f"{all(r['baseline_identical'] for r in results) and batch['baseline_identical']}")

    prof_text = ""
    if args.profile:
        for name, fn in (("ours", batch_fns["ours"]), ("peer (transformers PIL)", batch_fns["peer"])):
            txt = profile_top(fn)
            prof_text += f"\ncProfile, {name}, 5 calls on the batch of {len(images)} (sorted by own time):\n{txt}\n"
        print(prof_text)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results, "batch": batch}, f, indent=2, default=str)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`\n\n{table}\n")
        if prof_text:
            section += f"\n```text{prof_text}```\n"
        summary = ["[bench_preprocess.py](bench_preprocess.py)",
                   "images/s, ours / transformers `LlavaNextImageProcessorPil` (llava_hd, S=336)",
                   f"{batch['ratio']:.1f}× mixed batch; {min(r['ratio'] for r in results):.1f}–"
                   f"{max(r['ratio'] for r in results):.1f}× per size",
                   f"≥ {TARGET:.0f}×: " + ("met" if batch["ratio"] >= TARGET and len(met) == len(results) else
                                          f"met at {len(met)}/{len(results)} sizes (Pillow-resize bound, see below)"),
                   f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_preprocess", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
