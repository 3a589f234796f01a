"""What a method is: a config (dataclass with closed-set fields) and a connector module.

A method is a small composition of connectors. It says which views it needs
(:meth:`MethodConfig.imaging_spec`), how many visual tokens an image gets at most
(:meth:`VisualMethod.max_visual_tokens`, used by truncation and ``inspect``), and turns the
tower's features of a batch into one token sequence per image (:meth:`VisualMethod.forward`).

Shapes: features ``[v x t x dv]`` for all views of the batch back to back (``records`` say how many
belong to each image) → ``tokens``: a list with one ``[n_i x dl]`` per image.
"""

from __future__ import annotations

import abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..imaging import CutRecord, ImagingSpec


@dataclass
class MethodConfig:
    """Base of every method config. Subclasses add fields; ``Literal`` fields are closed sets."""

    name: ClassVar[str] = ""
    # Fields a training stage may change at run time (e.g. SliME's branches or γ); others are structural.
    runtime_fields: ClassVar[tuple[str, ...]] = ()

    projector: Literal["linear", "mlp2x_gelu", "mlp3x_gelu"] = "mlp2x_gelu"

    def __post_init__(self):
        self.validate()

    # ---------------------------------------------------------------- validation / (de)serialisation
    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f"{self.name}.{f.name}", value, hints[f.name])
        if type(self).imaging_spec is not MethodConfig.imaging_spec:
            self.imaging_spec(14, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the geometry fields, checked by ImagingSpec

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, (list, tuple)) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MethodConfig":
        d = {k: v for k, v in d.items() if k not in ("name", "preset")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} for method {cls.name!r}; valid fields: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(v, hints[k]) for k, v in d.items()}
        return cls(**kwargs)

    def replace(self, **changes) -> "MethodConfig":
        return type(self).from_dict({**self.to_dict(), **changes})

    def bind_tokenizer(self, tokenizer) -> "MethodConfig":
        """Fill fields that depend on the LM's tokenizer (e.g. SliME's separator token id); default: unchanged."""
        return self

    def imaging_spec(self, tile_size: int, mean, std) -> ImagingSpec:
        """The views this method needs; every subclass defines it."""
        raise TypeError(f"{type(self).__name__} does not define imaging_spec")

    def max_visual_tokens(self, record: CutRecord, grid: int) -> int:
        """Visual tokens an image cut as ``record`` gets at most (before any text-dependent selection),
        for a tower with ``grid``×``grid`` tokens per view; every subclass defines it."""
        raise TypeError(f"{type(self).__name__} does not define max_visual_tokens")

    def token_layout(self, record: CutRecord, grid: int) -> dict[str, Any]:
        """What an image's visual tokens are made of, for ``inspect`` (e.g. a map shrunk to a budget);
        default: nothing beyond the count."""
        return {}


def _coerce(value, tp):
    """YAML/JSON values → dataclass values (lists → tuples where the field is a tuple)."""
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_type(name: str, value, tp) -> None:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}={value!r} is not valid; choose one of {list(args)}")
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                _check_type(name, value, a)
                return
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{name}={value!r} matches none of {tp}: {errors}")
    if tp is type(None):
        if value is not None:
            raise TypeError(f"{name} must be None, got {value!r}")
        return
    if origin is tuple:
        if not isinstance(value, tuple):
            raise TypeError(f"{name} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            for i, v in enumerate(value):
                _check_type(f"{name}[{i}]", v, args[0])
        elif len(args) != len(value):
            raise ValueError(f"{name} must have {len(args)} entries, got {value!r}")
        else:
            for i, (v, a) in enumerate(zip(value, args)):
                _check_type(f"{name}[{i}]", v, a)
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        return
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        return
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {value!r}")
        return
    if tp is str and not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")


@dataclass
class Dims:
    """Sizes a method is built for."""

    vision_dim: int  # dv, the tower's hidden size
    text_dim: int  # dl, the LM's hidden size
    tile_size: int  # S, the tower's input size in pixels
    grid: int  # g, tokens per side of one view (S / patch)


@dataclass
class TextContext:
    """What the LM's side offers a connector.

    ``embeddings``: for methods with ``uses_text``, one ``[L_i x dl]`` tensor per image — the LM input
    embeddings of the text of the image's sample the router may look at (prompt only, or all text,
    per the method's ``router_text``). ``embed_tokens``: the LM's input embedding, ids → ``[... x dl]``
    (e.g. SliME's separator is the embedding of a token).
    """

    embeddings: list[torch.Tensor] | None
    embed_tokens: Any


@dataclass
class MethodOutput:
    tokens: list[torch.Tensor]  # one [n_i x dl] per image
    aux: dict[str, Any] = field(default_factory=dict)  # observables: gate weights, kept token indices, …


class VisualMethod(nn.Module, abc.ABC):
    """Base connector. Subclasses set ``config_class`` and implement ``forward`` and ``max_visual_tokens``."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    uses_text: ClassVar[bool] = False  # whether forward needs the text embeddings (SliME's router)

    def __init__(self, cfg: MethodConfig, dims: Dims):
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.dims = dims

    def imaging_spec(self, mean, std) -> ImagingSpec:
        return self.cfg.imaging_spec(self.dims.tile_size, mean, std)

    def max_visual_tokens(self, record: CutRecord) -> int:
        """Visual tokens this image gets at most (before any text-dependent selection)."""
        return self.cfg.max_visual_tokens(record, self.dims.grid)

    def set_runtime(self, **changes) -> None:
        """Change run-time fields (e.g. a training stage's branch or γ); structural fields are refused."""
        bad = sorted(set(changes) - set(self.cfg.runtime_fields))
        if bad:
            raise ValueError(
                f"{sorted(bad)} cannot change at run time for method {self.cfg.name!r}; "
                f"run-time fields: {list(self.cfg.runtime_fields)}"
            )
        self.cfg = self.cfg.replace(**changes)

    @staticmethod
    def split(features: torch.Tensor, records: list[CutRecord]) -> list[torch.Tensor]:
        """Split ``[v x t x d]`` back into one ``[v_i x t x d]`` per image."""
        sizes = [r.num_views for r in records]
        if sum(sizes) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} view features for records expecting {sum(sizes)} views")
        return list(torch.split(features, sizes, dim=0))

    @abc.abstractmethod
    def forward(self, features: torch.Tensor, records: list[CutRecord],
                text: TextContext | None = None) -> MethodOutput:
        """Features of all views of the batch → one token sequence per image.

        ``text``: the LM side (see :class:`TextContext`); the model always passes it.
        """
