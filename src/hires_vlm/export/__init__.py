"""Export hires-vlm models to the layouts other libraries and serving engines load.

``llava_hf``: ``llava`` → transformers' ``LlavaForConditionalGeneration`` and ``llava_hd`` →
``LlavaNextForConditionalGeneration``, each with its processor (image processor, tokenizer with
the ``<image>`` token, chat template), so that ``from_pretrained`` of transformers — and vLLM,
SGLang or TGI, which serve those classes — load it. Methods with no such architecture (SliME,
INF-LLaVA, monkey) are refused with the reason. ``hires-vlm export`` is the same call.

    from hires_vlm.export import export_model
    report = export_model("runs/llava_hd/finetune/final", "exports/llava_hd-hf", "llava_hf")
"""

from __future__ import annotations

from ..lazy import lazy_exports

# Exported lazily (PEP 562), so that ``hires-vlm --help`` and ``hires_vlm.export.cli`` do not import
# torch and transformers; the first use of a name imports its module.
_EXPORTS = {
    "FORMATS": "api", "REPORT_FILE": "api", "ExportVerificationError": "api", "export_model": "api",
    "ExportRefused": "llava_hf", "check_exportable": "llava_hf", "compare": "verify", "probe_image": "verify",
}
__all__ = ["FORMATS", "REPORT_FILE", "ExportRefused", "ExportVerificationError", "check_exportable", "compare",
           "export_model", "probe_image"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
