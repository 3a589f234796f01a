"""Read the tensors and the config of a checkpoint directory, without building its model.

A :class:`Checkpoint` is a read-only name → tensor mapping over one or more files: a single
``model.safetensors``, a sharded one (``model.safetensors.index.json``), a legacy
``pytorch_model.bin`` (sharded or not), or stage-adapter files (``mm_projector.bin``,
``sampler.bin``, ``non_lora_trainables.bin``). Safetensors are opened lazily (shapes come from the
header, a tensor is read when asked for), so a mismatch is reported before anything large is
loaded. Legacy ``.bin`` files go through ``torch.load(path, map_location="cpu",
weights_only=True)`` only: no pickled code runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import torch

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
#: Prefix of keys saved from a PEFT-wrapped model (``non_lora_trainables.bin``).
PEFT_PREFIX = "base_model.model."


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the format or our modules (the message lists what and where)."""


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_config(src: str) -> dict:
    """The ``config.json`` of ``src`` as a dict; a clear error when there is none."""
    if not os.path.isdir(src):
        raise FileNotFoundError(f"checkpoint directory not found: {src!r}")
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint directory {src!r} has no config.json")
    return read_json(path)


def load_bin(path: str) -> dict[str, torch.Tensor]:
    """A legacy ``torch.save`` state dict, loaded with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusing an object, a truncated file, …
        raise CheckpointMismatch(f"cannot read {path!r} as a weights-only torch state dict: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointMismatch(f"{path!r} is not a state dict (a mapping of names to tensors)")
    return obj


class Checkpoint:
    """Name → tensor over several files; later sources override earlier ones for the same name.

    ``origin(name)`` says which file a tensor comes from (for error messages).
    """

    def __init__(self):
        self._entries: dict[str, tuple[str, object]] = {}  # name → (file, loader)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._handles: list = []

    # ------------------------------------------------------------------ adding sources
    def add_safetensors(self, path: str, rename=None) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(path, framework="pt", device="cpu")
        except Exception as exc:
            raise CheckpointMismatch(f"cannot read {path!r} as safetensors: {exc}") from exc
        self._handles.append(handle)
        for key in handle.keys():
            name = rename(key) if rename else key
            self._entries[name] = (path, (handle, key))
            self._shapes[name] = tuple(handle.get_slice(key).get_shape())

    def add_tensors(self, tensors: dict[str, torch.Tensor], origin: str, rename=None) -> None:
        for key, t in tensors.items():
            name = rename(key) if rename else key
            self._entries[name] = (origin, t)
            self._shapes[name] = tuple(t.shape)

    def add_file(self, path: str, rename=None) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path!r}")
        if path.endswith(".safetensors"):
            self.add_safetensors(path, rename)
        else:
            self.add_tensors(load_bin(path), path, rename)

    # ------------------------------------------------------------------ mapping API
    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def origin(self, name: str) -> str:
        return self._entries[name][0]

    def tensor(self, name: str) -> torch.Tensor:
        _, loader = self._entries[name]
        if torch.is_tensor(loader):
            return loader
        handle, key = loader
        return handle.get_tensor(key)

    def dtype(self, name: str) -> torch.dtype:
        return self.tensor(name).dtype


def weight_files(src: str) -> list[str]:
    """The weight files of a model directory, in load order (a shard index lists them)."""
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = os.path.join(src, index_name)
        if os.path.isfile(index):
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise CheckpointMismatch(f"{index!r} has an empty weight_map")
            files = [os.path.join(src, s) for s in shards]
            absent = [f for f in files if not os.path.isfile(f)]
            if absent:
                raise FileNotFoundError(f"{index_name} lists shard(s) that are not in {src!r}: "
                                        f"{[os.path.basename(f) for f in absent]}")
            return files
    for name in (SAFE_SINGLE, BIN_SINGLE):
        path = os.path.join(src, name)
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(
        f"{src!r} holds no weights ({SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}); "
        "for a stage checkpoint that saved only adapters, give them with --adapter and the base LM with --lm-dir"
    )


def open_model_dir(src: str) -> Checkpoint:
    ckpt = Checkpoint()
    for path in weight_files(src):
        ckpt.add_file(path)
    return ckpt


def strip_peft_prefix(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def open_with_adapters(base: Checkpoint | None, adapters: Iterable[str]) -> Checkpoint:
    """``base`` (the LM's tensors, or None) plus stage-adapter files on top (their names win).

    Adapter files keep the full names the official code saves (``model.mm_projector.0.weight``,
    ``model.sampler.post_qformer.query``, …); ``non_lora_trainables.bin`` adds PEFT's
    ``base_model.model.`` in front, which is removed.
    """
    ckpt = base if base is not None else Checkpoint()
    for path in adapters:
        ckpt.add_file(path, rename=strip_peft_prefix)
    return ckpt
