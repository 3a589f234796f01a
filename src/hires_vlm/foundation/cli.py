"""``hires-vlm foundation build|verify``: make the tiny foundation, or check one against its hashes."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("foundation", help="build or verify the tiny pretrained foundation (tower + LM)")
    fsub = p.add_subparsers(dest="foundation_command", required=True)
    b = fsub.add_parser("build", help="pretrain the tower (contrastive) and the LM (text) on the benchmark's world")
    b.add_argument("--out", required=True, help="output directory (written atomically)")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--items-per-family", type=int, help="items drawn per family (default 400)")
    b.add_argument("--vision-steps", type=int, help="contrastive steps of the tower (default 1200)")
    b.add_argument("--lm-steps", type=int, help="LM steps (default 600)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_build)
    v = fsub.add_parser("verify", help="check a foundation's files against the hashes of its manifest")
    v.add_argument("path", nargs="?", default="shipped", help="a foundation directory (default: the shipped one)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_verify)


def _build(args) -> int:
    from .pretrain import FoundationRecipe, build_foundation

    recipe = FoundationRecipe(seed=args.seed)
    for arg, name in (("items_per_family", "items_per_family"), ("vision_steps", "vision_steps"),
                      ("lm_steps", "lm_steps")):
        value = getattr(args, arg)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{arg.replace('_', '-')} must be at least 1, got {value}")
            setattr(recipe, name, value)
    out = build_foundation(args.out, recipe, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"foundation written to {out}")
    return 0


def _verify(args) -> int:
    from .store import FoundationError, load_foundation

    try:
        f = load_foundation(args.path)
    except FoundationError as e:
        print(f"error: {e}")
        return 1
    info = {"path": f.path, **f.describe(), "sizes": f.sizes, "files": len(f.manifest["files"]),
            "metrics": f.manifest.get("metrics", {})}
    print(json.dumps(info, indent=1) if args.json else
          f"{f.path}: {len(f.manifest['files'])} files match their hashes (fingerprint {f.fingerprint})")
    return 0
