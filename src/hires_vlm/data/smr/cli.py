"""``hires-vlm data smr``: build the SMR instruction JSON from the released source datasets.

``add_parser(subparsers)`` registers the ``smr`` sub-command; ``run(args)`` runs it and returns
the exit status (0 built, 2 nothing could be built). The lead wires it under ``hires-vlm data``;
``python -m hires_vlm.data.smr`` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .build import SMRError, build_smr, report_path
from .registry import SOURCES, get_source

DESCRIPTION = """\
Build SliME's SMR science-and-math reasoning instruction set (LLaVA conversation JSON) from the
released source datasets. Missing sources are reported and skipped. Records whose image is
missing or unreadable are skipped and counted; exact duplicates (same image bytes, same
normalised question) are removed; MATH-Vision test-mini is held out. The output is written
atomically; the per-source report goes to <out>.report.json."""


def _epilog() -> str:
    lines = ["expected layout of --sources DIR (one subfolder per source, names case-insensitive):"]
    for spec in SOURCES.values():
        aliases = f" (or {', '.join(spec.folders[1:])})" if len(spec.folders) > 1 else ""
        lines.append(f"  {spec.folders[0]}/{aliases}")
        lines.append(f"      {spec.layout}")
        if spec.default_limit:
            lines.append(f"      capped at {spec.default_limit} random records (--limit)")
    return "\n".join(lines)


def _source_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [get_source(name).name for name in names]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError(f"expected NAME=N, got {text!r}")
        return get_source(name).name, int(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``smr`` on ``subparsers``; the parsed namespace's ``func`` is :func:`run`."""
    parser = subparsers.add_parser(
        "smr",
        help="build the SMR instruction JSON from the source datasets",
        description=DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sources", required=True, metavar="DIR",
                        help="folder with one subfolder per source dataset")
    parser.add_argument("--out", required=True, metavar="FILE", help="output JSON file")
    parser.add_argument("--only", type=_source_names, metavar="NAME,...",
                        help=f"build only these sources ({', '.join(SOURCES)})")
    parser.add_argument("--image-root", metavar="DIR",
                        help="write image paths relative to DIR (default: --sources)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-source caps")
    parser.add_argument("--limit", type=_limit, action="append", default=[], metavar="NAME=N",
                        help="cap a source at N random records (0: no cap); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        report = build_smr(
            args.sources,
            args.out,
            sources=args.only,
            image_root=args.image_root,
            seed=args.seed,
            limits=dict(args.limit),
            progress=not args.no_progress,
        )
    except SMRError as error:
        print(f"hires-vlm data smr: {error}", file=sys.stderr)
        return 2
    print(report.format_table())
    print(f"wrote {report.total.kept} records to {args.out} (report: {report_path(args.out)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hires-vlm data")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["smr", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
