"""Methods: each a config + a connector composed from ``connectors`` — ``llava``, ``llava_hd``,
``monkey``, ``slime``, ``inf_llava``, ``onevision`` (LLaVA-OneVision anyres_max), ``internvl`` (InternVL
dynamic tiling), ``qwen2vl`` (Qwen2-VL native dynamic resolution, on its own native tower) — with paper
and official presets."""

from .base import Dims, MethodConfig, MethodOutput, TextContext, VisualMethod
from .llava import LlavaConfig, LlavaHDConfig, LlavaHDMethod, LlavaMethod
from .registry import (
    METHODS,
    PRESETS,
    build_method,
    method_names,
    preset_names,
    register_method,
    register_preset,
    resolve_method_config,
)

register_method(LlavaMethod)
register_method(LlavaHDMethod)
register_preset("llava", LlavaConfig)
register_preset("llava_hd", LlavaHDConfig)


def _import_method_modules() -> None:
    """Every other module of this package defines a method and registers it (and its presets) on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "registry", "llava") and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_method_modules()

__all__ = [
    "METHODS", "PRESETS", "Dims", "LlavaConfig", "LlavaHDConfig", "LlavaHDMethod", "LlavaMethod", "MethodConfig",
    "MethodOutput", "TextContext", "VisualMethod", "build_method", "method_names", "preset_names", "register_method",
    "register_preset", "resolve_method_config",
]
