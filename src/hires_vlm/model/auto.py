"""hires-vlm in transformers' Auto classes: registration, and what a saved directory needs for ``trust_remote_code``.

Two ways in, both ending in the installed package's classes (the identity is kept: an
``AutoModel`` loaded either way is a :class:`~hires_vlm.model.HiResVLM`):

* ``import hires_vlm.model`` registers the classes (:func:`register_auto_classes`), so ``AutoConfig``,
  ``AutoModel``, ``AutoModelForImageTextToText``, ``AutoProcessor`` and ``AutoImageProcessor`` know
  ``model_type = "hires_vlm"``; ``import hires_vlm`` has that import happen as soon as transformers'
  Auto classes are loaded (:mod:`hires_vlm.auto_registration`).
* without the import, ``trust_remote_code=True``: every ``save_pretrained`` writes an ``auto_map``
  into its JSON file and the import shims below into the directory; transformers' dynamic-module
  loader imports a shim, which imports the class from the installed package. The shims hold no
  code of their own, so a directory never carries a stale copy of the library.
"""

from __future__ import annotations

import os

SHIMS: dict[str, tuple[str, str]] = {  # shim module → (module of the class, class)
    "configuration_hires_vlm": ("hires_vlm.model.configuration", "HiResVLMConfig"),
    "modeling_hires_vlm": ("hires_vlm.model.modeling", "HiResVLM"),
    "processing_hires_vlm": ("hires_vlm.model.processing", "HiResVLMProcessor"),
    "image_processing_hires_vlm": ("hires_vlm.model.image_processing", "HiResVLMImageProcessor"),
}


def _ref(shim: str) -> str:
    return f"{shim}.{SHIMS[shim][1]}"


CONFIG_AUTO_MAP = {
    "AutoConfig": _ref("configuration_hires_vlm"),
    "AutoModel": _ref("modeling_hires_vlm"),
    "AutoModelForImageTextToText": _ref("modeling_hires_vlm"),
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": _ref("processing_hires_vlm")}
IMAGE_PROCESSOR_AUTO_MAP = {"AutoImageProcessor": _ref("image_processing_hires_vlm"), **PROCESSOR_AUTO_MAP}

_SHIM_TEXT = '''"""Written by hires-vlm's save_pretrained for transformers' trust_remote_code loader.

The class is the installed hires-vlm package's (pip install hires-vlm); this file holds no code of its own.
"""

from {module} import {name}  # noqa: F401
'''


def write_import_shims(directory: str | os.PathLike) -> list[str]:
    """Write the shim modules that ``auto_map`` names into ``directory`` (unchanged files are not rewritten)."""
    written = []
    for shim, (module, name) in SHIMS.items():
        path = os.path.join(directory, shim + ".py")
        text = _SHIM_TEXT.format(module=module, name=name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    continue
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def register_auto_classes() -> None:
    """Make ``model_type = "hires_vlm"`` known to transformers' Auto classes (idempotent)."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from ..auto_registration import mark_registered
    from .configuration import HiResVLMConfig
    from .image_processing import HiResVLMImageProcessor
    from .modeling import HiResVLM
    from .processing import HiResVLMProcessor

    AutoConfig.register(HiResVLMConfig.model_type, HiResVLMConfig, exist_ok=True)
    AutoModel.register(HiResVLMConfig, HiResVLM, exist_ok=True)
    AutoModelForImageTextToText.register(HiResVLMConfig, HiResVLM, exist_ok=True)
    AutoImageProcessor.register(HiResVLMConfig, slow_image_processor_class=HiResVLMImageProcessor, exist_ok=True)
    AutoProcessor.register(HiResVLMConfig, HiResVLMProcessor, exist_ok=True)
    mark_registered()
