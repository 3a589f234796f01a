"""Methods: each a config + a connector composed from ``connectors`` — ``llava``, ``llava_hd``,
``monkey``, ``slime``, ``inf_llava`` — with paper and official presets."""

from .base import Dims, MethodConfig, MethodOutput, VisualMethod
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

__all__ = [
    "METHODS", "PRESETS", "Dims", "LlavaConfig", "LlavaHDConfig", "LlavaHDMethod", "LlavaMethod", "MethodConfig",
    "MethodOutput", "VisualMethod", "build_method", "method_names", "preset_names", "register_method",
    "register_preset", "resolve_method_config",
]
