"""``hires-vlm import``: an official checkpoint → a hires-vlm model directory (see ``hires_vlm.importers``)."""

from __future__ import annotations

FORMAT_CHOICES = ("llava", "llava_hf", "slime", "inf_llava")


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="convert an official LLaVA / LLaVA-HF / SliME / INF-LLaVA checkpoint")
    p.add_argument("--format", required=True, choices=FORMAT_CHOICES, help="layout of the source checkpoint")
    p.add_argument("--src", required=True, help="checkpoint directory (config.json + weights + tokenizer)")
    p.add_argument("--out", required=True, help="output model directory (written atomically)")
    p.add_argument("--vision", help="local vision tower (CLIP) directory: the weights when the checkpoint has none "
                                    "(mm_vision_tower names a hub repo), else its config and mean/std")
    p.add_argument("--lm-dir", help="base language model directory (weights + tokenizer) for --adapter; also the "
                                    "tokenizer when --src has none")
    p.add_argument("--adapter", nargs="+", default=[], metavar="FILE",
                   help="stage adapter file(s) (mm_projector.bin, sampler.bin, non_lora_trainables.bin) over --lm-dir; "
                        "--src then gives only config.json")
    p.add_argument("--init-missing", action="store_true",
                   help="freshly initialise connector parameters the checkpoint lacks (an earlier stage's adapters)")
    p.add_argument("--slime-router", choices=("release", "head"), default="release",
                   help="SliME router: 'release' (default; the code the June 2024 checkpoints were trained with, "
                        "preset slime-release) or 'head' (the code after Nov 2024, preset slime)")
    p.add_argument("--pos-embed", choices=("checkpoint", "recompute"), default="checkpoint",
                   help="SliME's fixed position tables: keep the checkpoint's stored (fp16) values, the numbers the "
                        "official code computes with (default), or recompute them in float32")
    p.add_argument("--template", help="conversation template (default: inferred from the tokenizer)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from . import import_checkpoint

    result = import_checkpoint(
        args.format, args.src, args.out, overwrite=args.overwrite, dtype=args.dtype, vision=args.vision,
        lm_dir=args.lm_dir, adapters=args.adapter, template=args.template, slime_router=args.slime_router,
        init_missing=args.init_missing, pos_embed=args.pos_embed,
    )
    n = len(result.remap.sources)
    print(f"imported {args.format} checkpoint {args.src} → {args.out} ({n} tensors mapped, "
          f"{len(result.remap.verified)} checked, method {result.model.config.method['name']})")
    for note in result.notes:
        print(f"  note: {note}")
    return 0
