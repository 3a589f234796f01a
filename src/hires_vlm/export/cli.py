"""``hires-vlm export``: a saved model → another library's layout (see ``hires_vlm.export``)."""

from __future__ import annotations

FORMAT_CHOICES = ("llava_hf",)  # = api.FORMATS, kept here so that ``hires-vlm --help`` imports nothing heavy


def _probe_size(text: str) -> tuple[int, int]:
    from ..cli import _size

    return _size(text)


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a saved llava / llava_hd model in transformers' LLaVA / LLaVA-NeXT layout "
                                      "(for vLLM, SGLang, TGI)")
    p.add_argument("--format", required=True, choices=FORMAT_CHOICES, help="target layout")
    p.add_argument("--model", required=True, help="saved model directory (from train, build or import)")
    p.add_argument("--out", required=True, help="output directory (written into a temporary folder beside it, then "
                                                "renamed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out; the old folder is moved aside to <out>.replaced-<time>, not deleted")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the self-test (load the export with transformers and compare logits on a probe image; "
                        "needs memory for a second copy of the model)")
    p.add_argument("--device", default="cpu", help="device the model is loaded on and the self-test runs on (cpu, cuda, …; default cpu)")
    p.add_argument("--probe-size", type=_probe_size, metavar="WxH", help="size of the self-test's probe image")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .api import export_model

    report = export_model(args.model, args.out, args.format, overwrite=args.overwrite, verify=not args.no_verify,
                          device=args.device, probe_size=args.probe_size)
    print(f"exported {args.model} → {args.out} as {report['architecture']} ({report['format']}, "
          f"transformers {report['transformers_version']})")
    check = report["verification"]
    if "skipped" in check:
        print("  self-test skipped (--no-verify)")
    else:
        full = check["max_abs_dlogits"]
        print(f"  self-test on a {check['image_size'][0]}x{check['image_size'][1]} probe: max |Δlogits| "
              f"{check['max_abs_dlogits_same_pixels']:.2e} on identical pixels, "
              f"{'n/a' if full is None else f'{full:.2e}'} through both pipelines (tolerance {check['tolerance']:g})")
        for note in check.get("notes", []):
            print(f"  note: {note}")
    if report.get("replaced_previous"):
        print(f"  the previous {args.out} was moved to {report['replaced_previous']}")
    return 0
