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
    try:
        from . import synthetic
    except ImportError:
        return
    if hasattr(synthetic, "add_parser"):
        synthetic.add_parser(data_sub)
