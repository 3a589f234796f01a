"""The ``hires-vlm`` command line: a thin layer over the library's public functions.

Each subcommand parses its arguments and calls one function; heavy imports happen inside the
handlers so that ``hires-vlm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _train(args) -> int:
    from .train.config import load_config
    from .train.runner import run_training

    cfg = load_config(args.config, args.set)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    results = run_training(cfg, stages=args.stage or None)
    if int(os.environ.get("RANK", "0")) == 0:
        print("\nstage            steps   first loss   last loss   seconds   output")
        for r in results:
            if r.skipped:
                print(f"{r.name:<16} (already done)                                   {r.final_dir}")
                continue
            fl = f"{r.first_loss:.4f}" if r.first_loss is not None else "-"
            ll = f"{r.last_loss:.4f}" if r.last_loss is not None else "-"
            print(f"{r.name:<16} {r.steps:>5}   {fl:>10}   {ll:>9}   {r.seconds:>7.1f}   {r.final_dir}")
    return 0


def _generate(args) -> int:
    from .imaging import load_image
    from .model import load_model

    images = [load_image(p) for p in args.image] if args.image else [None]  # bad input fails before the load
    reduction = _token_reduction(args)
    model, processor = load_model(args.model, args.device)
    if reduction:
        model.set_token_reduction(**reduction)
    device = model.device
    prompts = [args.prompt] * len(images)
    inputs = {k: v.to(device) for k, v in processor(prompts, images).items()}
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.temperature > 0:
        kwargs.update(do_sample=True, temperature=args.temperature)
    else:
        kwargs.update(do_sample=False)
    out = model.generate(**inputs, **kwargs)
    for path, text in zip(args.image or ["(no image)"], processor.batch_decode(out)):
        print(text if len(images) == 1 else f"{path}: {text}")
    return 0


def _inspect(args) -> int:
    from .inspect_cut import run_inspect

    if (args.image is None) == (args.size is None):
        raise ValueError("give an IMAGE file or --size WIDTHxHEIGHT (one of the two)")
    text, _ = run_inspect(args.image, size=args.size, method=args.method, config_file=args.config, model_dir=args.model,
                          tile_size=args.tile_size, patch_size=args.patch_size, as_json=args.json,
                          figure=args.save_figure, route=args.route, prompt=args.prompt, gamma=args.gamma,
                          token_reduction=_token_reduction(args))
    print(text)
    return 0


def _token_reduction(args) -> dict:
    """``--fastv-keep`` / ``--fastv-layer`` / ``--visionzip-keep`` as ``token_reduction`` changes (validated)."""
    from .model.reduction import resolve_token_reduction

    out = {k: v for k, v in (("fastv_keep", args.fastv_keep), ("fastv_layer", args.fastv_layer),
                             ("visionzip_keep", args.visionzip_keep)) if v is not None}
    resolve_token_reduction(out)
    return out


def _add_reduction_flags(p) -> None:
    p.add_argument("--fastv-keep", type=float, metavar="F",
                   help="FastV: keep this fraction (0 < F ≤ 1) of each image's visual tokens from LM layer K on, "
                        "those the last prompt token attends to most (default: off)")
    p.add_argument("--fastv-layer", type=int, metavar="K",
                   help="FastV's K (default 2; the tiny LM has 2 layers: use 1)")
    p.add_argument("--visionzip-keep", type=float, metavar="F",
                   help="VisionZip: keep this fraction of each view's tokens, chosen by the tower's attention "
                        "(llava and llava_hd only; default: off)")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1x1")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hires-vlm",
        description="High-resolution LLaVA-style vision-language models: train, evaluate, compare, serve.",
    )
    parser.add_argument("--version", action="version", version=f"hires-vlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model through the stages of a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stages.0.training.max_steps=20 (repeatable)")
    p.add_argument("--stage", action="append", default=[], help="run only this stage (repeatable)")
    p.add_argument("--output-dir", help="override run.output_dir")
    p.set_defaults(func=_train)

    p = sub.add_parser("generate", help="answer a prompt about an image with a saved model")
    p.add_argument("--model", required=True, help="model directory (from train, build or import)")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for a batch)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    _add_reduction_flags(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("inspect", help="show how a method cuts an image and how many visual tokens it gets")
    p.add_argument("image", nargs="?", help="image file (or give --size)")
    p.add_argument("--size", type=_size, metavar="WxH", help="an image size instead of a file, e.g. 1920x1080 "
                                                           "(the cut depends only on the size)")
    p.add_argument("--method", help="method preset (llava, llava_hd, monkey, slime, slime-paper, inf_llava, "
                                      "onevision, internvl, …)")
    p.add_argument("--config", help="method YAML, or a training config (its model.method is used)")
    p.add_argument("--model", help="a saved model directory: its method and tower geometry")
    p.add_argument("--tile-size", type=int, help="tower input size S (default 336, CLIP-L/14-336)")
    p.add_argument("--patch-size", type=int, help="ViT patch size (default 14)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--save-figure", metavar="PNG", help="save a picture of the cut and the views")
    p.add_argument("--route", action="store_true",
                   help="also count the visual tokens left after the text-guided router (SliME), running a model "
                        "in eval mode: --model DIR, else a small random one at the tower geometry")
    p.add_argument("--prompt", help="the text the router compares the image with (with --route)")
    p.add_argument("--gamma", type=float, help="the router's cumulative mass γ (with --route; default: the method's)")
    _add_reduction_flags(p)
    p.set_defaults(func=_inspect)

    _optional_commands(sub)
    return parser


# Modules that register their own subcommands with ``add_parser(subparsers)``.
SUBCOMMAND_MODULES = (
    "hires_vlm.demo",
    "hires_vlm.build_cli",
    "hires_vlm.importers.cli",
    "hires_vlm.eval.cli_eval",
    "hires_vlm.eval.cli_score",
    "hires_vlm.data.cli",
    "hires_vlm.theory.cli_group",
    "hires_vlm.foundation.cli",
    "hires_vlm.export.cli",
    "hires_vlm.serve.cli",
)


def _optional_commands(sub) -> None:
    from importlib import import_module

    for module in SUBCOMMAND_MODULES:
        import_module(module).add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
