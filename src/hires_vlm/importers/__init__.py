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

from ..lazy import lazy_exports

# Exported lazily (PEP 562), so that ``hires-vlm --help`` and ``hires_vlm.importers.cli`` do not
# import torch and transformers; the first use of a name imports its module.
_EXPORTS = {
    "FORMATS": "llava", "detect_format": "llava", "Checkpoint": "checkpoint", "CheckpointMismatch": "checkpoint",
    "ImportResult": "common", "ImportSpec": "common", "assemble": "common", "write_model_dir": "common",
    "KeyMap": "keymap", "remap": "keymap", "prepare": "api", "convert": "api", "import_checkpoint": "api",
    "import_llava": "api", "import_llava_hf": "api", "import_slime": "api", "import_inf_llava": "api",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
