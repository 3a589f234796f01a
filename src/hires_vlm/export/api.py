"""``export_model``: a saved model folder → a folder in another library's layout, written safely.

The export reads the source (refusing, before loading any weight, a method the format cannot
express), builds the target model around the source's own tensors, and writes it with its
processor into a temporary folder beside ``out``. There it loads the result back with the target
library's own classes and compares it with the source on a probe image (the self-test; skip it
with ``verify=False``), writes ``export_report.json``, and only then renames the folder to
``out``. An existing non-empty ``out`` is refused unless ``overwrite``; then it is moved aside to
``<out>.replaced-<time>`` — never deleted. Weights are safetensors only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..fsio import OutputExistsError, atomic_write_json, refuse_occupied
from .hub_layout import rewrite_to_hub_layout
from .llava_hf import FORMAT as LLAVA_HF
from .llava_hf import build_hf_model, build_hf_processor, check_exportable, plan_export
from .verify import PROBE_PROMPT, compare, probe_image, tolerance

log = logging.getLogger(__name__)

FORMATS = (LLAVA_HF,)
REPORT_FILE = "export_report.json"
WEIGHT_SUFFIXES = (".safetensors",)
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SHARD_SIZE = "4GB"  # each shard is read whole once more, to give its tensors the Hub names


class ExportVerificationError(ValueError):
    """The self-test found the export computing something else than its source; nothing was written."""


def _check_paths(src: Path, out: Path) -> None:
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents or o in s.parents:
        raise ValueError(f"--out {out} overlaps the source model folder {src}; export into a separate folder")


def _aside_name(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = out.with_name(f"{out.name}.replaced-{stamp}")
    n = 1
    while candidate.exists():
        candidate = out.with_name(f"{out.name}.replaced-{stamp}-{n}")
        n += 1
    return candidate


def _publish(staging: Path, out: Path) -> Path | None:
    """Rename ``staging`` to ``out``; an existing non-empty ``out`` is first moved aside (returned)."""
    aside = None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists() or out.is_symlink():
        aside = _aside_name(out)
        os.replace(out, aside)
    os.replace(staging, out)
    return aside


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_files(folder: Path) -> list[str]:
    """The files of the export (safetensors only, else an error), given the usual permissions
    (``mkdtemp`` and some writers make them private)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    bad = [f for f in files if f.endswith(FORBIDDEN_SUFFIXES)]
    if bad:
        raise AssertionError(f"the export wrote pickle files {bad}; only safetensors are allowed")
    if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        raise AssertionError("the export wrote no safetensors weights")
    return files


def _self_test(model, processor, staging: Path, plan, device: str, probe_size=None) -> dict:
    """Load the staged folder with transformers' classes and compare it with the source on a probe image."""
    import transformers
    from transformers import AutoProcessor

    dtype = next(model.parameters()).dtype
    hf_model = getattr(transformers, plan.architecture).from_pretrained(staging, dtype=dtype).to(device).eval()
    hf_processor = AutoProcessor.from_pretrained(staging)
    backend = "pil" if type(hf_processor.image_processor).__name__.endswith("Pil") else "torchvision"
    image = probe_image(int(model.config.vision_config.image_size), probe_size)
    result = compare(model, processor, hf_model, hf_processor, image, PROBE_PROMPT)
    tol = tolerance(dtype, result.max_abs_logit)
    resampler = model.config.image_resampler
    pixels_comparable = (resampler == "pillow") == (backend == "pil")
    failures, notes = [], []
    if result.max_abs_dlogits_same_pixels > tol:
        failures.append(f"max |Δlogits| on identical pixels is {result.max_abs_dlogits_same_pixels:.3g} > {tol:g}")
    if pixels_comparable and (result.max_abs_dlogits is None or result.max_abs_dlogits > tol):
        failures.append(f"max |Δlogits| of the full pipelines is {result.max_abs_dlogits} > {tol:g}")
    if not pixels_comparable:
        notes.append(f"transformers loaded the {backend} image processor and the model was trained on {resampler!r} "
                     "pixels: the full-pipeline numbers include that 1-2 grey-level difference")
    if not result.input_ids_match:
        diff = result.text_difference
        notes.append(f"the {model.config.template!r} prompt tokenises differently: our encoder (template pieces one "
                     f"by one) gives {diff['ours']} where transformers (the rendered chat template whole) gives "
                     f"{diff['transformers']}, from token {diff['position']}; the full-pipeline logits are compared "
                     "on transformers' ids. A server of the export sees the latter")
        log.warning("export: %s", notes[-1])
    report = {
        "prompt": PROBE_PROMPT, "dtype": str(dtype).removeprefix("torch."),
        "tolerance": tol, "image_processor_backend": backend, "source_resampler": resampler,
        "full_pipeline_comparable": pixels_comparable, **result.to_dict(), "passed": not failures, "notes": notes,
    }
    if failures:
        raise ExportVerificationError("the export does not reproduce its source: " + "; ".join(failures)
                                      + f". Nothing was written. Details: {report}")
    return report


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, format: str = LLAVA_HF, *,
                 overwrite: bool = False, verify: bool = True, device: str = "cpu",
                 probe_size: tuple[int, int] | None = None) -> dict:
    """Export the saved model in ``model_dir`` to ``out`` in ``format``; returns the export report."""
    from .. import __version__
    from ..model import HiResVLMConfig, check_model_dir, load_model
    from ..model.loading import model_fingerprint

    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not supported; choose one of {list(FORMATS)}")
    src = check_model_dir(model_dir)
    out = Path(out).absolute()
    _check_paths(src, out)
    refuse_occupied(out, overwrite)
    check_exportable(HiResVLMConfig.from_pretrained(src).method)  # refuse before loading any weight

    import transformers

    fingerprint = model_fingerprint(src)
    model, processor = load_model(src, device=device)
    plan = plan_export(model)
    hf_model, rules = build_hf_model(model, plan)
    hf_processor = build_hf_processor(processor, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        hf_model.save_pretrained(staging, max_shard_size=SHARD_SIZE)
        rewrite_to_hub_layout(staging, plan.tower_level)
        hf_processor.save_pretrained(staging)
        del hf_model
        report = {
            "format": format,
            "source": {"model_dir": os.fspath(src.absolute()), "fingerprint": fingerprint,
                       "method": plan.method.to_dict(), "image_resampler": model.config.image_resampler},
            "transformers_version": transformers.__version__,
            "hires_vlm_version": __version__,
            **plan.to_dict(),
            "weights": [r.to_dict() for r in rules],
        }
        report["verification"] = (_self_test(model, processor, staging, plan, device, probe_size) if verify
                                  else {"skipped": "--no-verify"})
        report["files"] = sorted(_check_files(staging) + [REPORT_FILE])
        atomic_write_json(staging / REPORT_FILE, report)
        aside = _publish(staging, out)
        if aside is not None:
            log.warning("the previous %s was moved to %s", out, aside)
            report["replaced_previous"] = os.fspath(aside)
            atomic_write_json(out / REPORT_FILE, report)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder, never the user's
    return report


__all__ = ["FORMATS", "REPORT_FILE", "ExportVerificationError", "OutputExistsError", "export_model"]
