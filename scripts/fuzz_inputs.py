#!/usr/bin/env python3
"""Fuzz the data paths with malformed and extreme inputs: ``data check``, a short training, ``eval``.

    python scripts/fuzz_inputs.py [--n 3000] [--seed 0] [--out DIR] [--keep]

Draws ``--n`` records (seeded) from the classes in :data:`CLASSES` — corrupt, truncated, empty,
mislabelled, decompression-bomb, extreme-aspect, 1-pixel and odd-mode images, and records with
bad types, NUL bytes, lone surrogates, escaping or absolute paths, misplaced or miscounted
``<image>`` placeholders, missing files, over-long text — plus good ones, writes them as one LLaVA
training file and one synthetic-benchmark test split, and runs them through

1. ``LlavaDataset.scan`` (what ``hires-vlm data check`` runs),
2. one epoch of training of the tiny ``llava_hd`` model (``run_training``),
3. ``evaluate`` on the test split,

then checks that nothing crashed and that every path counted exactly what was injected (each class
says what each path must do with it). Then every extreme image goes through every method's image
processor in a fresh process, which reports its peak memory. ``tests/test_fuzz_inputs.py`` runs a
few hundred records of this in the suite; the README quotes a run of this script.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

LONG_TEXT = "word " * 3000
QUESTION = "What colour is the circle?"


@dataclass
class Case:
    record: object  # the training record (also the test record, with an id, where it applies)
    train: str  # what data check / training must report: "ok" or the skip reason
    eval: str  # what evaluation must do: "ok", "record" (loader skips it) or "sample" (skipped at load)


def _conv(question: str = QUESTION, answer: str = "red", image: bool = True, system: str | None = None):
    turns = [{"from": "system", "value": system}] if system is not None else []
    return turns + [{"from": "human", "value": ("<image>\n" if image else "") + question},
                    {"from": "gpt", "value": answer}]


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _good_image(rng: random.Random) -> Image.Image:
    w, h = rng.choice([(60, 40), (40, 60), (80, 80), (100, 30), (30, 100)])
    return Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` (grey) with one tiny compressed row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


# ---------------------------------------------------------------------- image classes
# Each writes the file for record i under ``root / "images"`` and returns (relative path, train, eval).
def _img_good(rng, root, name):
    _good_image(rng).save(root / name)
    return name, "ok", "ok"


def _img_truncated(rng, root, name):
    data = _png_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    (root / name).write_bytes(data[: len(data) // 2])
    return name, "bad_image", "sample"


def _img_truncated_jpeg(rng, root, name):
    name = name.replace(".png", ".jpg")
    data = _png_bytes(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    (root / name).write_bytes(data[: len(data) // 3])
    return name, "bad_image", "sample"


def _img_random_bytes(rng, root, name):
    (root / name).write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
    return name, "bad_image", "sample"


def _img_empty(rng, root, name):
    (root / name).write_bytes(b"")
    return name, "bad_image", "sample"


def _img_text(rng, root, name):
    (root / name).write_text("this is not an image\n")
    return name, "bad_image", "sample"


def _img_bomb(rng, root, name):
    (root / name).write_bytes(_bomb_png(rng.choice([20_000, 40_000]), 20_000))
    return name, "bad_image", "sample"


def _img_too_long_side(rng, root, name):
    (root / name).write_bytes(_bomb_png(1, 70_000))
    return name, "bad_image", "sample"


def _img_one_pixel(rng, root, name):
    Image.new("RGB", (1, 1), (rng.randrange(256), 0, 0)).save(root / name)
    return name, "ok", "ok"


def _img_extreme(rng, root, name):
    w, h = rng.choice([(1, 20_000), (20_000, 1), (3, 9_000), (12_000, 2)])
    Image.new("L", (w, h), 128).save(root / name)
    return name, "ok", "ok"


def _img_odd_mode(rng, root, name):
    mode = rng.choice(["CMYK", "I;16", "I", "F", "P", "LA", "1", "RGBA", "L", "YCbCr"])
    base = Image.effect_noise((48, 32), 50)  # mode L
    if mode in ("CMYK", "YCbCr"):
        name = name.replace(".png", ".jpg")
        base.convert("RGB").convert(mode).save(root / name, "JPEG")
    elif mode == "F":
        name = name.replace(".png", ".tif")
        base.convert("F").save(root / name)
    elif mode in ("I;16", "I"):  # 16-bit PNG, 32-bit TIFF
        name = name if mode == "I;16" else name.replace(".png", ".tif")
        base.convert("I").point(lambda v: v * 200).convert(mode).save(root / name)
    elif mode == "P":
        base.convert("RGB").convert("P").save(root / name, transparency=0)
    else:
        base.convert(mode).save(root / name)
    return name, "ok", "ok"


def _img_animated(rng, root, name):
    name = name.replace(".png", ".gif")
    frames = [Image.new("P", (40, 40), c) for c in (1, 2, 3)]
    frames[0].save(root / name, save_all=True, append_images=frames[1:])
    return name, "ok", "ok"


def _img_broken_exif(rng, root, name):
    name = name.replace(".png", ".jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    img = _good_image(rng)
    data = _png_bytes(img, "JPEG", exif=exif.tobytes())
    i = data.find(b"Exif")
    data = data[: i + 10] + bytes(rng.randrange(256) for _ in range(12)) + data[i + 22:]  # mangle the block
    (root / name).write_bytes(data)
    return name, "ok", "ok"


def _img_directory(rng, root, name):
    (root / name).mkdir()
    return name, "missing_image", "sample"


def _img_symlink_out(rng, root, name):
    outside = root.parent.parent / "outside.png"
    if not outside.exists():
        _good_image(rng).save(outside)
    os.symlink(outside, root / name)
    return name, "path_escape", "record"


IMAGE_CLASSES = {
    "good image": (_img_good, 30), "truncated PNG": (_img_truncated, 4), "truncated JPEG": (_img_truncated_jpeg, 4),
    "random bytes": (_img_random_bytes, 3), "empty file": (_img_empty, 2), "text as image": (_img_text, 2),
    "decompression bomb": (_img_bomb, 2), "side > 65536": (_img_too_long_side, 1), "1 pixel": (_img_one_pixel, 3),
    "extreme aspect": (_img_extreme, 3), "odd mode": (_img_odd_mode, 8), "animated GIF": (_img_animated, 1),
    "broken EXIF": (_img_broken_exif, 2), "directory as image": (_img_directory, 1),
    "symlink out of folder": (_img_symlink_out, 1),
}


# ---------------------------------------------------------------------- record classes
def _rec_image_not_str(rng, root):
    return {"image": rng.choice([123, 4.5, True, {"p": 1}, [1, 2]]), "conversations": _conv()}, "bad_record", "record"


def _rec_nul_path(rng, root):
    return {"image": "images/a\x00b.png", "conversations": _conv()}, "path_escape", "record"


def _rec_absolute(rng, root):
    return {"image": rng.choice(["/etc/passwd", str(root.parent.parent / "outside.png")]),
            "conversations": _conv()}, "path_escape", "record"


def _rec_escape(rng, root):
    return {"image": "../../outside.png", "conversations": _conv()}, "path_escape", "record"


def _rec_missing_file(rng, root):
    return {"image": f"images/nope-{rng.randrange(10**6)}.png", "conversations": _conv()}, "missing_image", "sample"


def _rec_surrogate(rng, root, good):
    return {"image": good, "conversations": _conv(question="colour \ud800?")}, "bad_conversation", "sample"


def _rec_not_object(rng, root):
    return rng.choice([["a", "list"], "a string", 42, None]), "bad_record", "record"


def _rec_system_image(rng, root, good):
    return {"image": good, "conversations": _conv(image=False, system="<image> look")}, "placeholder_mismatch", "ok"


def _rec_two_placeholders(rng, root, good):
    return {"image": good, "conversations": _conv(question="<image> twice " + QUESTION)}, "placeholder_mismatch", "ok"


def _rec_no_conversations(rng, root, good):
    if rng.random() < 0.3:
        return {"image": good}, "bad_record", "record"
    rec = {"image": good, "conversations": rng.choice(["text", [], [{"from": "human"}], {"from": "human", "value": "x"}])}
    return rec, "bad_conversation", "record"


def _rec_too_long(rng, root, good):
    return {"image": good, "conversations": _conv(question=LONG_TEXT)}, "too_long", "sample"


RECORD_CLASSES = {
    "image not a string": (_rec_image_not_str, 3), "NUL in path": (_rec_nul_path, 2), "absolute path": (_rec_absolute, 2),
    "../ escape": (_rec_escape, 2), "missing file": (_rec_missing_file, 3), "lone surrogate": (_rec_surrogate, 2),
    "record not an object": (_rec_not_object, 3), "<image> in system turn": (_rec_system_image, 2),
    "two placeholders, one image": (_rec_two_placeholders, 2), "bad conversations": (_rec_no_conversations, 3),
    "too long": (_rec_too_long, 2),
}
NEEDS_GOOD = {_rec_surrogate, _rec_system_image, _rec_two_placeholders, _rec_no_conversations, _rec_too_long}


def make_cases(n: int, root: Path, seed: int = 0) -> tuple[list[Case], Counter]:
    """``n`` records drawn by weight from every class (each class at least once), files under ``root``."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    classes = [(k, "image", f, w) for k, (f, w) in IMAGE_CLASSES.items()] + \
              [(k, "record", f, w) for k, (f, w) in RECORD_CLASSES.items()]
    order = [c for c in classes] + rng.choices(classes, weights=[c[3] for c in classes], k=max(0, n - len(classes)))
    rng.shuffle(order)
    good_path = "images/good-anchor.png"
    _good_image(rng).save(root / good_path)
    cases, drawn = [], Counter()
    for i, (label, kind, fn, _) in enumerate(order):
        drawn[label] += 1
        if kind == "image":
            rel, train, ev = fn(rng, root / "images", f"f{i:05d}.png")
            rec = {"image": f"images/{rel}", "conversations": _conv()}
        else:
            rec, train, ev = fn(rng, root, good_path) if fn in NEEDS_GOOD else fn(rng, root)
        if isinstance(rec, dict):
            rec = {"id": f"r{i:05d}", **rec}
        cases.append(Case(rec, train, ev))
    return cases, drawn


def write_data(cases: list[Case], root: Path) -> tuple[Path, Path]:
    """The training file (every record) and a synthetic-benchmark folder whose test split is the same."""
    train = root / "train.json"
    train.write_text(json.dumps([c.record for c in cases], ensure_ascii=True))
    bench = root  # the eval loader reads root/test.json with images relative to root
    test = []
    for c in cases:
        rec = c.record
        if isinstance(rec, dict):
            rec = {**rec, "family": "fuzz", "qtype": "colour"}
        test.append(rec)
    (bench / "test.json").write_text(json.dumps(test, ensure_ascii=True))
    return train, bench


# ---------------------------------------------------------------------- the three paths
def run_check(train: Path, root: Path, processor) -> Counter:
    from hires_vlm.data.llava_json import LlavaDataset

    return LlavaDataset(str(train), str(root), processor, max_length=1024).scan(progress=False)


def run_training(train: Path, root: Path, out: Path) -> dict:
    from hires_vlm.train.config import load_config
    from hires_vlm.train.runner import run_training as run

    config = Path(__file__).resolve().parents[1] / "src/hires_vlm/configs/llava_hd/tiny.yaml"
    cfg = load_config(config, [f"run.output_dir={out}", f"data.train={train}", f"data.image_folder={root}",
                               "data.max_length=1024", "stages=[{name: sft, trainable: {connector: 1.0e-3}}]",
                               "training.num_train_epochs=1", "training.per_device_train_batch_size=8",
                               "training.logging_steps=100", "training.save_steps=100000", "training.disable_tqdm=true"])
    (result,) = run(cfg)
    return result.data_skips | {"final": result.final_dir}


def run_eval(model_dir: str, bench: Path, out: Path) -> dict:
    from hires_vlm.eval.runner import evaluate

    return evaluate(model_dir, "synthetic", bench, out, batch_size=8, max_new_tokens=2, progress=False)


def expected(cases: list[Case]) -> tuple[Counter, Counter]:
    return Counter(c.train for c in cases), Counter(c.eval for c in cases)


# ---------------------------------------------------------------------- memory
# Peak RSS from /proc (VmHWM, per address space): getrusage's ru_maxrss survives exec, so a child
# started by a large parent would report the parent's peak.
MEMORY_SCRIPT = r"""
import sys
from hires_vlm.imaging import HiResImageProcessor, load_image, ImageLoadError
from hires_vlm.methods import resolve_method_config
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
base = hwm()
out = []
for method in sys.argv[2:]:
    spec = resolve_method_config(method).imaging_spec(336, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    try:
        views = HiResImageProcessor(spec)([load_image(sys.argv[1])]).pixel_values.shape[0]
    except ImageLoadError:
        views = "refused"
    out.append(f"{method}={views}")
print(" ".join(out), (hwm() - base) // 1024)
"""
MEMORY_METHODS = ("llava", "llava_hd", "slime", "slime-paper", "inf_llava", "inf_llava-paper", "monkey")
EXTREME = {"1x50000": (1, 50_000), "50000x1": (50_000, 1), "1x300000": (1, 300_000), "3x65000": (3, 65_000),
           "8192x8192": (8192, 8192), "1x1": (1, 1)}


def peak_memory(root: Path, methods=MEMORY_METHODS) -> dict[str, dict]:
    """Peak RSS (MiB, above the process's start) of every extreme image through every method."""
    out = {}
    for label, (w, h) in EXTREME.items():
        path = root / f"extreme-{label}.png"
        if max(w, h) > 65_536:
            path.write_bytes(_bomb_png(w, h))
        else:
            Image.new("L", (w, h), 100).save(path)
        proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), *methods], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            out[label] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}
            continue
        views, mib = proc.stdout.rsplit(" ", 1)
        out[label] = {"views": views, "peak_mib": int(mib), "file_bytes": path.stat().st_size}
    return out


def run(n: int, seed: int, out: Path, memory: bool = True) -> dict:
    from hires_vlm.tiny import build_tiny

    t0 = time.time()
    data = out / "data"
    cases, drawn = make_cases(n, data, seed)
    train, bench = write_data(cases, data)
    want_train, want_eval = expected(cases)
    _, processor = build_tiny("llava_hd", seed=0, max_length=1024)
    report = {"n": len(cases), "seed": seed, "classes": dict(sorted(drawn.items())),
              "expected_train": dict(want_train), "expected_eval": dict(want_eval)}
    report["check"] = dict(run_check(train, data, processor))
    skips = run_training(train, data, out / "run")
    report["training"] = {k: v for k, v in skips.items() if k != "examples"}
    ev = run_eval(skips["final"], bench, out / "eval")
    report["eval"] = {"n_questions": ev["counts"]["n_questions"], "n_answered": ev["counts"]["n_answered"],
                      "skipped_records": ev["skipped_records"], "skipped_samples": ev["skipped_samples"]}
    if memory:
        report["memory"] = peak_memory(data)
    report["seconds"] = round(time.time() - t0, 1)
    report["problems"] = problems(report, want_train, want_eval)
    return report


def problems(report: dict, want_train: Counter, want_eval: Counter) -> list[str]:
    """Every way the three paths' counts differ from what was injected."""
    out = []
    if Counter(report["check"]) != want_train:
        out.append(f"data check counted {report['check']}, injected {dict(want_train)}")
    tr = report["training"]
    seen = Counter(tr["screened"]) + Counter(tr["at_load"])
    bad = want_train - Counter({"ok": want_train["ok"]})
    if seen != bad or tr["records_skipped"] != sum(bad.values()):
        out.append(f"training skipped {dict(seen)}, injected {dict(bad)}")
    ev = report["eval"]
    if sum(ev["skipped_records"].values()) != want_eval["record"]:
        out.append(f"eval's loader skipped {ev['skipped_records']}, injected {want_eval['record']}")
    if sum(ev["skipped_samples"].values()) != want_eval["sample"]:
        out.append(f"eval skipped {ev['skipped_samples']} at load, injected {want_eval['sample']}")
    if ev["n_answered"] != want_eval["ok"]:
        out.append(f"eval answered {ev['n_answered']}, expected {want_eval['ok']}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="records (default 3000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="work folder (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hires-vlm-fuzz-"))
    try:
        report = run(args.n, args.seed, out, memory=not args.no_memory)
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['n']} records, seed {report['seed']}, {report['seconds']} s")
        print("injected (training view):", report["expected_train"])
        print("data check:              ", report["check"])
        print("training skipped:        ", {"screened": report["training"]["screened"],
                                            "at load": report["training"]["at_load"]})
        print("eval:                    ", report["eval"])
        for label, m in report.get("memory", {}).items():
            print(f"memory {label:>10}: {m}")
        print("problems:", report["problems"] or "none")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
