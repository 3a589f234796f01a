"""Benchmark: our image processor against transformers' LLaVA-NeXT image processors, both backends.

Ours: ``HiResImageProcessor`` with the ``llava_hd`` imaging spec (S = 336, CLIP mean/std, LLaVA-NeXT's
default grids, squashed global view, fit-and-pad canvas, tiles row-major), once with each resampler:
``pillow`` (the official code's pixels, our default) and ``torch`` (``image_resampler: torch``).
Peers, each paired with the resampler that produces its pixels:

* ``LlavaNextImageProcessorPil`` — transformers' NumPy/Pillow backend ↔ ours·pillow;
* ``LlavaNextImageProcessor`` — transformers' default, torchvision backend ↔ ours·torch. It needs
  torchvision; where only a torchvision wheel built for a CUDA torch exists next to a CPU torch (this
  machine), ``--torchvision DIR`` imports its Python transforms from ``DIR`` (``pip install --no-deps
  --target DIR torchvision==<the release matching torch>``) without its C ops, which the processor does
  not use. Without torchvision its columns read n/a.

Both peers get ``shortest_edge`` = crop = 336, the same mean/std, and the same grids as pinpoints
(transformers reads pinpoints as (height, width), we read grids as (width, height): the peers get
``flip_pairs`` of our canvases, and the script checks both choose the same grid for every image).

All run on the same decoded RGB images (336² to 2016², several aspect ratios) in one process,
round-robin, single-threaded by default (as in a data-loader worker; ``--threads`` changes it).
Reported per size: the views, the max absolute difference of the normalised views of each pair (same
view order: global view, then tiles row-major), the median time per image of each, and the ratios.
The ``batch`` row processes all images in one call (the peers pad every image to the largest view
count; we do not).

Bounds: every LLaVA-NeXT processor must run two antialiased bicubic resizes per image (image → the
S×S global view, image → the canvas's content box). ``Pillow floor`` / ``torch floor`` time exactly
those two calls with each kernel (the torch one including the copy out of Pillow), so
``peer / floor`` is the largest ratio any processor producing that peer's pixels can reach here.
``--baseline-rev REV`` also times our processor as it was at git revision ``REV`` (its
``src/hires_vlm/imaging`` loaded from git into a temporary package) and checks bit-identical views.

Usage::

    python benchmarks/bench_preprocess.py                 # ≈1–2 min on 2 cores
    python benchmarks/bench_preprocess.py --torchvision /tmp/tv --profile --readme
    python benchmarks/bench_preprocess.py --baseline-rev d90e189   # + our processor before an optimisation
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

S = 336
DEFAULT_SIZES = ["336x336", "672x504", "1008x672", "800x1344", "1344x1344", "2016x1134", "1512x2016", "2016x2016"]
SMOKE_SIZES = ["336x336", "672x504"]
TARGET = 5.0


def peer_kwargs(spec, tile: int = S) -> dict:
    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, flip_pairs

    canvases = [(c * tile, r * tile) for c, r in spec.grid_candidates]  # (width, height)
    return dict(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                image_grid_pinpoints=[list(p) for p in flip_pairs(canvases)], image_mean=list(CLIP_MEAN),
                image_std=list(CLIP_STD))


def build(tile: int = S):
    """(spec, ours·pillow, ours·torch, transformers PIL peer)."""
    import dataclasses

    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD, HiResImageProcessor
    from hires_vlm.methods import resolve_method_config

    spec = resolve_method_config("llava_hd").imaging_spec(tile, CLIP_MEAN, CLIP_STD)
    ours = HiResImageProcessor(spec)
    ours_torch = HiResImageProcessor(dataclasses.replace(spec, resampler="torch"))
    return spec, ours, ours_torch, LlavaNextImageProcessorPil(**peer_kwargs(spec, tile))


def import_torchvision(path: str | None):
    """torchvision, or None when it is not installed.

    A torchvision wheel built for a CUDA torch cannot load its C ops next to a CPU-only torch, and its
    import then fails registering fake kernels for them; the image transforms the peer uses are pure
    Python over ``torch.nn.functional.interpolate``, so that case is imported without those kernels.
    """
    if path:
        sys.path.insert(0, os.path.abspath(path))
    try:
        import torchvision
        return torchvision
    except ImportError:
        return None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch.library

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda fn: fn)
    try:
        import torchvision
    finally:
        torch.library.register_fake = register_fake
    print(f"note: torchvision {torchvision.__version__} imported without its C ops (built for another torch); "
          "its resize is torch's interpolate")
    return torchvision


def build_torchvision_peer(spec, tile: int = S):
    """transformers' default ``LlavaNextImageProcessor`` (torchvision backend); call after
    :func:`import_torchvision` found it, and before anything imports transformers' image utilities."""
    from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor

    return LlavaNextImageProcessor(**peer_kwargs(spec, tile))


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
    """The same two resizes with torch's uint8 antialiased bicubic kernel, from the PIL image (its copy out
    of Pillow included), run the way our ``torch`` resampler runs it (channels-last in and out)."""
    from hires_vlm.imaging.resample import TorchPixels

    def run():
        pixels = np.asarray(img)
        return [TorchPixels.resize(pixels, size) for size in sizes]

    return run


def grey_level_diff(img, sizes, run_torch) -> int:
    """Largest difference, in grey levels, between Pillow's and torch's resize of ``img``."""
    from PIL import Image

    worst = 0
    for (w, h), got in zip(sizes, run_torch()):
        ref = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        worst = max(worst, int(np.abs(ref - got.astype(np.int16)).max()))
    return worst


def compare_outputs(ours, peer, img, spec) -> tuple[int, int, float, bool]:
    """(our views, peer views, max |difference| of the normalised views, same grid) for one image."""
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


def _fmt_ms(v):
    return "n/a" if v is None else f"{v:.2f}"


def _fmt_ratio(v, bold=True):
    if v is None:
        return "n/a"
    return f"**{v:.1f}×**" if bold else f"{v:.1f}×"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=None, help="WxH image sizes (default: 336² … 2016², 8 sizes)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per processor and size (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as a loader worker)")
    p.add_argument("--torchvision", metavar="DIR", help="import torchvision from DIR for the default-backend peer")
    p.add_argument("--profile", action="store_true", help="print cProfile top-10 of each processor on the batch")
    p.add_argument("--baseline-rev", help="also time our processor (pillow) as of this git revision (before/after)")
    p.add_argument("--smoke", action="store_true", help="two small sizes, 2 repeats (test suite)")
    C.add_output_arguments(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats = args.sizes or SMOKE_SIZES, min(args.repeats, 2)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in (args.sizes or DEFAULT_SIZES)]

    import torch

    torch.set_num_threads(args.threads)
    have_tv = import_torchvision(args.torchvision) is not None  # before transformers decides it has none
    spec, ours, ours_t, peer = build(S)
    tv = build_torchvision_peer(spec) if have_tv else None
    info = C.machine("cpu")
    if tv is not None:
        import torchvision

        info["torchvision"] = torchvision.__version__
    C.print_header("Preprocessing benchmark: hires-vlm HiResImageProcessor (llava_hd, S=336; pillow and torch "
                   "resamplers) vs transformers LlavaNextImageProcessorPil and LlavaNextImageProcessor", info)
    if tv is None:
        print("torchvision is not importable: the LlavaNextImageProcessor (torchvision backend) columns read n/a\n")
    images = [C.make_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    base = baseline_processor(args.baseline_rev, spec) if args.baseline_rev else None

    results = []
    for img in images:
        floor, rs_sizes = pillow_floor(img, spec)
        fns = {"ours": lambda img=img: ours([img]), "peer": lambda img=img: peer(img, return_tensors="pt"),
               "ours_torch": lambda img=img: ours_t([img]), "floor": floor,
               "torch_floor": torch_floor(img, rs_sizes)}
        if tv is not None:
            fns["tv"] = lambda img=img: tv(img, return_tensors="pt")
        if base is not None:
            fns["baseline"] = lambda img=img: base([img])
        t = C.interleaved(fns, args.repeats)
        med = {k: C.median(v) * 1e3 for k, v in t.items()}
        nv_ours, nv_peer, diff, ok = compare_outputs(ours, peer, img, spec)
        rec = spec.record_for(img.size)
        r = {"size": img.size, "grid": rec.grid, "views_ours": nv_ours, "views_peer": nv_peer, "same_grid": ok,
             "max_abs_diff": diff, "ours_ms": med["ours"], "peer_ms": med["peer"], "floor_ms": med["floor"],
             "ratio": med["peer"] / med["ours"],
             "max_ratio_pillow": med["peer"] / med["floor"] if med["floor"] > 1e-2 else float("inf"),
             "ours_torch_ms": med["ours_torch"], "torch_floor_ms": med["torch_floor"],
             "ratio_torch_vs_pil_peer": med["peer"] / med["ours_torch"],
             "torch_vs_pillow_levels": grey_level_diff(img, rs_sizes, fns["torch_floor"]),
             "tv_ms": None, "ratio_tv": None, "max_abs_diff_tv": None, "max_ratio_torch": None, "same_grid_tv": None}
        if tv is not None:
            nv_t, nv_tv, diff_tv, ok_tv = compare_outputs(ours_t, tv, img, spec)
            r.update(tv_ms=med["tv"], ratio_tv=med["tv"] / med["ours_torch"], max_abs_diff_tv=diff_tv,
                     same_grid_tv=ok_tv and nv_t == nv_tv, ratio_pillow_vs_tv_peer=med["tv"] / med["ours"],
                     max_ratio_torch=med["tv"] / med["torch_floor"] if med["torch_floor"] > 1e-2 else float("inf"))
        if base is not None:
            r["baseline_ms"] = med["baseline"]
            r["baseline_identical"] = bool(torch.equal(base([img]).pixel_values, ours([img]).pixel_values))
        results.append(r)

    # one call over all images: a mixed batch
    batch_fns = {"ours": lambda: ours(images), "peer": lambda: peer(images, return_tensors="pt"),
                 "ours_torch": lambda: ours_t(images)}
    if tv is not None:
        batch_fns["tv"] = lambda: tv(images, return_tensors="pt")
    if base is not None:
        batch_fns["baseline"] = lambda: base(images)
    tb = C.interleaved(batch_fns, max(3, args.repeats // 3))
    bmed = {k: C.median(v) * 1e3 for k, v in tb.items()}
    batch = {"images": len(images), "ours_ms": bmed["ours"], "peer_ms": bmed["peer"],
             "ours_torch_ms": bmed["ours_torch"], "ratio": bmed["peer"] / bmed["ours"],
             "ratio_torch_vs_pil_peer": bmed["peer"] / bmed["ours_torch"],
             "tv_ms": bmed.get("tv"), "ratio_tv": bmed["tv"] / bmed["ours_torch"] if tv is not None else None,
             "peer_views": int(np.prod(batch_fns["peer"]()["pixel_values"].shape[:2])),
             "ours_views": int(ours(images).pixel_values.shape[0])}
    if base is not None:
        batch["baseline_ms"] = bmed["baseline"]
        batch["baseline_identical"] = bool(torch.equal(base(images).pixel_values, ours(images).pixel_values))

    header = ["image (w×h)", "grid", "views ours/peers", "max abs diff: pillow pair / torch pair",
              "ours·pillow ms", "PIL peer ms", "ratio (same pixels)", "ours·torch ms", "torchvision peer ms",
              "ratio (same pixels)", "PIL peer / ours·torch", "Pillow floor ms (bound)", "torch floor ms (bound)",
              "torch vs Pillow (grey levels)"]
    if base is not None:
        header += [f"ours @ {args.baseline_rev[:10]} ms", "speed-up vs that", "bit-identical"]
    rows = []
    for r in results:
        w, h = r["size"]
        d_tv = "n/a" if r["max_abs_diff_tv"] is None else f"{r['max_abs_diff_tv']:.1e}"
        row = [f"{w}×{h}", f"{r['grid'][0]}×{r['grid'][1]}", f"{r['views_ours']}/{r['views_peer']}",
               f"{r['max_abs_diff']:.1e} / {d_tv}" + ("" if r["same_grid"] and r["same_grid_tv"] is not False
                                                     else " (grid differs!)"),
               _fmt_ms(r["ours_ms"]), _fmt_ms(r["peer_ms"]), _fmt_ratio(r["ratio"]), _fmt_ms(r["ours_torch_ms"]),
               _fmt_ms(r["tv_ms"]), _fmt_ratio(r["ratio_tv"]), _fmt_ratio(r["ratio_torch_vs_pil_peer"], bold=False),
               f"{r['floor_ms']:.2f} ({_fmt_ratio(r['max_ratio_pillow'], bold=False)})",
               f"{r['torch_floor_ms']:.2f} ({_fmt_ratio(r['max_ratio_torch'], bold=False)})",
               f"{r['torch_vs_pillow_levels']}"]
        if base is not None:
            row += [f"{r['baseline_ms']:.2f}", f"{r['baseline_ms'] / r['ours_ms']:.2f}×",
                    "yes" if r["baseline_identical"] else "NO"]
        rows.append(row)
    brow = [f"batch of {batch['images']}", "mixed", f"{batch['ours_views']}/{batch['peer_views']} (peers pad)", "",
            f"{batch['ours_ms']:.1f}", f"{batch['peer_ms']:.1f}", _fmt_ratio(batch["ratio"]),
            f"{batch['ours_torch_ms']:.1f}", "n/a" if batch["tv_ms"] is None else f"{batch['tv_ms']:.1f}",
            _fmt_ratio(batch["ratio_tv"]), _fmt_ratio(batch["ratio_torch_vs_pil_peer"], bold=False), "", "", ""]
    if base is not None:
        brow += [f"{batch['baseline_ms']:.1f}", f"{batch['baseline_ms'] / batch['ours_ms']:.2f}×",
                 "yes" if batch["baseline_identical"] else "NO"]
    rows.append(brow)
    table = C.markdown_table(header, rows)
    print(table)

    def span(key):
        vals = [r[key] for r in results if r.get(key) is not None]
        return (min(vals), max(vals), sum(v >= TARGET for v in vals), len(vals)) if vals else None

    print()
    lines = []
    pil_span, tv_span, cross_span = span("ratio"), span("ratio_tv"), span("ratio_torch_vs_pil_peer")
    lines.append(f"ratio: preprocess images/s ours·pillow / transformers LlavaNextImageProcessorPil (same pixels) = "
                 f"{batch['ratio']:.2f}x on the mixed batch; per size {pil_span[0]:.2f}x .. {pil_span[1]:.2f}x "
                 f"(>= {TARGET:.0f}x at {pil_span[2]}/{pil_span[3]} sizes)")
    if tv_span:
        lines.append(f"ratio: preprocess images/s ours·torch / transformers LlavaNextImageProcessor (torchvision, same "
                     f"pixels) = {batch['ratio_tv']:.2f}x on the mixed batch; per size {tv_span[0]:.2f}x .. "
                     f"{tv_span[1]:.2f}x (>= {TARGET:.0f}x at {tv_span[2]}/{tv_span[3]} sizes)")
        slow = span("ratio_pillow_vs_tv_peer")
        lines.append(f"ratio: ours·pillow / LlavaNextImageProcessor (torchvision) = {slow[0]:.2f}x .. {slow[1]:.2f}x "
                     "per size (different kernels: Pillow vs torch)")
    lines.append(f"ratio: ours·torch / LlavaNextImageProcessorPil = {batch['ratio_torch_vs_pil_peer']:.2f}x on the "
                 f"mixed batch; per size {cross_span[0]:.2f}x .. {cross_span[1]:.2f}x (>= {TARGET:.0f}x at "
                 f"{cross_span[2]}/{cross_span[3]} sizes; pixels differ by <= "
                 f"{max(r['torch_vs_pillow_levels'] for r in results)} grey levels)")
    diffs = [r["max_abs_diff"] for r in results]
    tv_diffs = [r["max_abs_diff_tv"] for r in results if r["max_abs_diff_tv"] is not None]
    lines.append(f"max abs difference of the views: ours·pillow vs PIL peer {max(diffs):.2e}"
                 + (f"; ours·torch vs torchvision peer {max(tv_diffs):.2e}" if tv_diffs else "")
                 + f"; grids agree: {all(r['same_grid'] and r['same_grid_tv'] is not False for r in results)}")
    worst = min(results, key=lambda r: r["max_ratio_pillow"])
    lines.append(f"bound: no processor producing Pillow's pixels can be more than {worst['max_ratio_pillow']:.1f}x "
                 f"faster than the PIL peer at {worst['size'][0]}x{worst['size'][1]} (peer / two Pillow resizes)")
    if tv is not None:
        worst = min(results, key=lambda r: r["max_ratio_torch"])
        lines.append(f"bound: no processor producing torch's pixels can be more than {worst['max_ratio_torch']:.1f}x "
                     f"faster than the torchvision peer at {worst['size'][0]}x{worst['size'][1]} "
                     "(peer / two torch resizes)")
    if base is not None:
        lines.append(f"ratio: preprocess time ours @ {args.baseline_rev} / ours now = "
                     f"{batch['baseline_ms'] / batch['ours_ms']:.2f}x on the mixed batch; outputs bit-identical: "
                     f"{all(r['baseline_identical'] for r in results) and batch['baseline_identical']}")
    print("\n".join(lines))

    prof_text = ""
    if args.profile:
        names = {"ours": "ours·pillow", "peer": "peer LlavaNextImageProcessorPil", "ours_torch": "ours·torch",
                 "tv": "peer LlavaNextImageProcessor (torchvision)"}
        for key, name in names.items():
            if key in batch_fns:
                txt = profile_top(batch_fns[key])
                prof_text += f"\ncProfile, {name}, 5 calls on the batch of {len(images)} (sorted by own time):\n{txt}\n"
        print(prof_text)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results, "batch": batch}, f, indent=2, default=str)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}" + (f"; torchvision {info['torchvision']}" if tv else "")
                   + f"  \n**Date:** {C.today()}  \n**Command:** `{C.command_line()}`\n\n{table}\n\n```text\n"
                   + "\n".join(lines) + "\n```\n")
        if prof_text:
            section += f"\n```text{prof_text}```\n"
        latest = f"ours·pillow / PIL peer {pil_span[0]:.1f}–{pil_span[1]:.1f}×"
        if tv_span:
            latest += f"; ours·torch / torchvision peer {tv_span[0]:.1f}–{tv_span[1]:.1f}×"
        latest += f"; ours·torch / PIL peer {cross_span[0]:.1f}–{cross_span[1]:.1f}× (per size)"
        met = f"met for ours·torch vs PIL peer at {cross_span[2]}/{cross_span[3]} sizes"
        if tv_span:
            met += f", vs torchvision peer at {tv_span[2]}/{tv_span[3]}"
        summary = ["[bench_preprocess.py](bench_preprocess.py)",
                   "images/s, ours (pillow / torch resampler) / transformers `LlavaNextImageProcessorPil` and "
                   "`LlavaNextImageProcessor` (llava_hd, S=336)", latest,
                   f"≥ {TARGET:.0f}×: {met}; resize-bound elsewhere (see below)", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_preprocess", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
