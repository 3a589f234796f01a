"""``hires-vlm data …``: data tools (``smr`` builder, ``check`` of a LLaVA JSON file, ``synthetic``)."""

from __future__ import annotations


def _check(args) -> int:
    from ..model import HiResVLMProcessor
    from .llava_json import LlavaDataset

    processor = HiResVLMProcessor.from_pretrained(args.model)
    ds = LlavaDataset(args.data, args.image_folder, processor)
    counts = ds.scan()
    total = sum(counts.values())
    print(f"{total} records: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if counts.get("ok", 0) else 2


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="data tools: build SMR, check a LLaVA JSON file, make the synthetic benchmark")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    from .smr import cli as smr_cli

    smr_cli.add_parser(data_sub)
    c = data_sub.add_parser("check", help="try every sample of a LLaVA JSON/JSONL file and count the bad ones")
    c.add_argument("data", help="LLaVA conversation JSON or JSONL")
    c.add_argument("--image-folder", required=True)
    c.add_argument("--model", required=True, help="model directory whose processor and template to use")
    c.set_defaults(func=_check)
    g = data_sub.add_parser("synthetic", help="write the embedded high-resolution benchmark (LLaVA JSON + PNG)")
    g.add_argument("out", help="output folder (created; refused if it holds files the generator did not write)")
    g.add_argument("--train-per-family", type=int, default=500, help="training images per family (default 500)")
    g.add_argument("--test-per-family", type=int, default=50, help="test images per family (default 50)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--families", nargs="+", metavar="NAME",
                   help="task families (default: all: fine_detail counting quadrant tile_border global_layout existence)")
    g.add_argument("--tile-size", type=int, default=112, help="the tower input size S the benchmark is made for")
    g.add_argument("--separability-samples", type=int, default=300,
                   help="images per class for the low-resolution separability measurement (0: skip)")
    g.add_argument("--workers", type=int, help="processes drawing images (default: up to 4; output does not depend on it)")
    g.set_defaults(func=_synthetic)


def _synthetic(args) -> int:
    from .synthetic import generate_benchmark

    info = generate_benchmark(args.out, train_per_family=args.train_per_family,
                              test_per_family=args.test_per_family, seed=args.seed, families=args.families,
                              tile_size=args.tile_size, num_workers=args.workers,
                              separability_samples=args.separability_samples)
    counts = {split: sum(c.values()) for split, c in info.counts.items()}
    state = "written" if info.regenerated else "already complete, kept"
    print(f"{info.out_dir}: {counts['train']} train + {counts['test']} test images "
          f"({', '.join(info.families)}); {state}")
    print(f"  {info.train_json}\n  {info.test_json}\n  {info.out_dir / 'benchmark.json'}")
    return 0
