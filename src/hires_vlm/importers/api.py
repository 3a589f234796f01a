"""The import entry points: read a checkpoint of a format, map it, check it, write a model directory."""

from __future__ import annotations

from collections.abc import Sequence

from .common import ImportResult, ImportSpec, assemble, write_model_dir
from .llava import FORMATS, prepare_llava, prepare_llava_hf


def prepare(fmt: str, src: str, *, vision: str | None = None, lm_dir: str | None = None,
            adapters: Sequence[str] = (), template: str | None = None, slime_router: str = "release",
            init_missing: bool = False, pos_embed: str = "checkpoint") -> ImportSpec:
    """Read a checkpoint of format ``fmt`` into an :class:`ImportSpec` (nothing mapped yet)."""
    adapters = list(adapters or ())
    if fmt == "llava":
        return prepare_llava(src, vision=vision, lm_dir=lm_dir, adapters=adapters, template=template,
                             init_missing=init_missing)
    if fmt == "llava_hf":
        if adapters:
            raise ValueError("--adapter is for the stage files of llava, slime and inf_llava runs, not llava_hf")
        return prepare_llava_hf(src, template=template, vision=vision, lm_dir=lm_dir)
    if fmt == "slime":
        from .slime import prepare_slime

        return prepare_slime(src, vision=vision, lm_dir=lm_dir, adapters=adapters, template=template,
                             router=slime_router, init_missing=init_missing, pos_embed=pos_embed)
    if fmt == "inf_llava":
        from .inf_llava import prepare_inf_llava

        return prepare_inf_llava(src, vision=vision, lm_dir=lm_dir, adapters=adapters, template=template,
                                 init_missing=init_missing)
    raise ValueError(f"format {fmt!r} is not supported; choose one of {list(FORMATS)}")


def convert(fmt: str, src: str, *, dtype=None, **kwargs) -> ImportResult:
    """Read, map, check and load: the model and processor in memory (nothing written)."""
    return assemble(prepare(fmt, src, **kwargs), dtype=dtype)


def import_checkpoint(fmt: str, src: str, out: str, *, overwrite: bool = False, dtype=None, **kwargs) -> ImportResult:
    """``convert`` then write ``out`` atomically (model, processor, ``import_report.json``)."""
    result = convert(fmt, src, dtype=dtype, **kwargs)
    write_model_dir(result, out, overwrite=overwrite)
    return result


def import_llava(src: str, out: str, **kwargs) -> ImportResult:
    return import_checkpoint("llava", src, out, **kwargs)


def import_llava_hf(src: str, out: str, **kwargs) -> ImportResult:
    return import_checkpoint("llava_hf", src, out, **kwargs)


def import_slime(src: str, out: str, **kwargs) -> ImportResult:
    return import_checkpoint("slime", src, out, **kwargs)


def import_inf_llava(src: str, out: str, **kwargs) -> ImportResult:
    return import_checkpoint("inf_llava", src, out, **kwargs)
