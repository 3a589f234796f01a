"""Every difference between the transformers releases this package supports, in one place.

The package supports transformers from the lower bound in ``pyproject.toml`` (5.20, the first
release with the dataclass ``PreTrainedConfig`` and ``SubConfigSpec`` that ``HiResVLMConfig`` is
written in) to the newest release; the drift check (``scripts/test.sh --latest``) runs the suite
against the newest one and ``scripts/test.sh --lowest`` against the lower bounds. When a release renames something, the branch
goes here, named by the releases it tells apart and detected by the feature rather than by the
version string (a backport or a patch release then takes the right branch by itself).

* **KV cache name** — transformers 5.24 renamed ``past_key_values`` to ``cache``: the argument of
  every model's ``forward``, the field of every ``ModelOutput`` and the key ``generate`` keeps in
  its model kwargs. 5.20–5.23 know only ``past_key_values``. 5.24 still accepts the old argument,
  with a ``FutureWarning`` per call (removal announced for 5.40), and its ``ModelOutput`` renames
  ``past_key_values=`` to ``cache=`` in every subclass's ``__init__``, so an output dataclass that
  declares the old field fails to construct. :data:`CACHE_NAME` is the name of the installed release;
  :func:`model_output` gives an output dataclass the field under that name.
* **Activation checkpointing** — transformers 5.23 renamed the ``TrainingArguments`` field
  ``gradient_checkpointing`` (and ``…_kwargs``) to ``activation_checkpointing``, and the model
  methods ``gradient_checkpointing_enable/disable`` to ``activation_checkpointing_enable/disable``;
  the old names still work there with a ``FutureWarning`` (removal announced for v6), 5.20–5.22 know
  only the old ones. :func:`checkpointing_arguments` and :func:`set_activation_checkpointing`.
* **Hidden-state capture** — transformers 5.x releases with ``utils.output_capturing`` record
  ``output_hidden_states`` through hooks installed on the layers at the first forward that asks;
  :func:`install_output_capturing_hooks` installs them on all layers ahead of time (a no-op where
  the module does not exist, i.e. releases that record hidden states without hooks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

#: ``"cache"`` on transformers ≥ 5.24, ``"past_key_values"`` before.
CACHE_NAME: str = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
#: Both spellings, newest first: what a ``forward`` of ours accepts whichever release called it.
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values")


def model_output(cls):
    """``@dataclass`` for a ``ModelOutput`` subclass whose KV-cache field is declared as ``cache``.

    On releases before 5.24 the field is renamed ``past_key_values`` (same position, same default),
    which is what their ``generate`` and their users read.
    """
    if CACHE_NAME != "cache":
        if "cache" not in cls.__dict__.get("__annotations__", {}):
            raise TypeError(f"{cls.__name__} declares no 'cache' field")
        cls.__annotations__ = {(CACHE_NAME if k == "cache" else k): v for k, v in cls.__annotations__.items()}
        setattr(cls, CACHE_NAME, cls.__dict__["cache"])
        delattr(cls, "cache")
    return dataclasses.dataclass(cls)


def pop_cache(kwargs: dict) -> Any:
    """Remove the KV cache from ``kwargs`` under either name and return it (``None`` if absent)."""
    given = [name for name in CACHE_NAMES if kwargs.get(name) is not None]
    if len(given) > 1:
        raise ValueError("pass the KV cache once, as `cache` or as `past_key_values`, not both")
    values = [kwargs.pop(name, None) for name in CACHE_NAMES]
    return next((v for v in values if v is not None), None)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """The keyword argument that hands ``cache`` to a transformers model of the installed release."""
    return {CACHE_NAME: cache}


def cache_of(output) -> Any:
    """The KV cache a transformers model returned (without the 5.24+ deprecation warning)."""
    return getattr(output, CACHE_NAME, None)


def checkpointing_arguments(enabled: bool, **kwargs: Any) -> dict[str, Any]:
    """``TrainingArguments`` keywords that switch activation (gradient) checkpointing on or off."""
    import dataclasses as _dc

    from transformers import TrainingArguments

    new = "activation_checkpointing" in {f.name for f in _dc.fields(TrainingArguments)}
    name = "activation_checkpointing" if new else "gradient_checkpointing"
    return {name: bool(enabled), f"{name}_kwargs": (kwargs or None) if enabled else None}


def set_activation_checkpointing(model, enabled: bool, **kwargs: Any) -> None:
    """Switch activation checkpointing of a ``PreTrainedModel`` on or off (``kwargs`` for the enable call)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs or None) if enabled else model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_enable(kwargs or None) if enabled else model.gradient_checkpointing_disable()


def install_output_capturing_hooks(model) -> None:
    """Install transformers' hidden-state capturing hooks on every ``PreTrainedModel`` in ``model``."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # a release that records hidden states without hooks
        return
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            maybe_install_capturing_hooks(module)
