"""Name → method, and presets (paper vs official behaviour of each method).

``resolve_method_config`` accepts a preset name (``"slime-paper"``), a dict with ``preset`` or
``name`` plus field overrides, or a config object, and fails with the list of valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Dims, MethodConfig, VisualMethod

METHODS: dict[str, type[VisualMethod]] = {}
PRESETS: dict[str, Callable[[], MethodConfig]] = {}


def register_method(cls: type[VisualMethod]) -> type[VisualMethod]:
    METHODS[cls.config_class.name] = cls
    return cls


def register_preset(name: str, factory: Callable[[], MethodConfig]) -> None:
    PRESETS[name] = factory


def method_names() -> list[str]:
    return sorted(METHODS)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def resolve_method_config(spec: str | dict[str, Any] | MethodConfig) -> MethodConfig:
    if isinstance(spec, MethodConfig):
        return spec
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"a method is a preset name, a dict or a MethodConfig, got {type(spec).__name__}")
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"method preset {preset!r} is not supported; choose one of {preset_names()}")
        base = PRESETS[preset]()
        name = spec.pop("name", base.name)
        if name != base.name:
            raise ValueError(f"preset {preset!r} is method {base.name!r}, not {name!r}")
        return base.replace(**spec) if spec else base
    name = spec.get("name")
    if name not in METHODS:
        raise ValueError(f"method {name!r} is not supported; choose one of {method_names()}")
    return METHODS[name].config_class.from_dict(spec)


def build_method(cfg: MethodConfig, dims: Dims) -> VisualMethod:
    if cfg.name not in METHODS:
        raise ValueError(f"method {cfg.name!r} is not supported; choose one of {method_names()}")
    return METHODS[cfg.name](cfg, dims)
