"""Import official checkpoints into hires-vlm model directories.

Formats (``FORMATS``): ``llava`` (original LLaVA-1.5 / LLaVA-NeXT ``LlavaLlamaForCausalLM``),
``llava_hf`` (transformers' ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``,
v4 and v5 key layouts), ``slime`` (SliME's gated mixture + local compressor) and ``inf_llava``
(INF-LLaVA's dual-perspective enhancement). Each maps **every** source tensor onto our modules,
checks shapes and the fixed tables the official code stores, and refuses with the list of what
does not fit; then it writes a normal model directory (``HiResVLM.from_pretrained`` + processor)
atomically. ``hires-vlm import`` is the same call.

    from hires_vlm.importers import import_checkpoint
    import_checkpoint("llava", "/models/llava-v1.5-7b", "/models/llava15-hires",
                      vision="/models/clip-vit-large-patch14-336")
"""

from __future__ import annotations

from collections.abc import Sequence

from .checkpoint import Checkpoint, CheckpointMismatch
from .common import ImportResult, ImportSpec, assemble, write_model_dir
from .llava import FORMATS, detect_format, prepare_llava, prepare_llava_hf
from .keymap import KeyMap, remap


def prepare(fmt: str, src: str, *, vision: str | None = None, lm_dir: str | None = None,
            adapters: Sequence[str] = (), template: str | None = None, slime_router: str = "release",
            init_missing: bool = False) -> ImportSpec:
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
                             router=slime_router, init_missing=init_missing)
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


__all__ = ["FORMATS", "Checkpoint", "CheckpointMismatch", "ImportResult", "ImportSpec", "KeyMap", "assemble",
           "convert", "detect_format", "import_checkpoint", "import_inf_llava", "import_llava", "import_llava_hf",
           "import_slime", "prepare", "remap", "write_model_dir"]
