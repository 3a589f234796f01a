"""``hires-vlm theory …``: reproducible studies of the papers' theory (SliME §2.3 bilinear problem)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("theory", help="theory studies: 'bilinear' (SliME §2.3 alternating vs simultaneous)")
    theory_sub = p.add_subparsers(dest="theory_command", metavar="THEORY_COMMAND", required=True)
    from . import cli

    cli.add_parser(theory_sub)
