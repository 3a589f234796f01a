"""Key maps: every source tensor name → one of our parameters (or a check), and the audit of the result.

A :class:`KeyMap` is an ordered list of rules; the first rule that matches a source name decides:

* ``exact(src, dst)`` / ``prefix(src_prefix, dst_prefix)`` — the tensor is loaded as ``dst``;
* ``verify(pattern, what, check)`` — a tensor our modules recompute instead of storing (a fixed
  sin-cos table, rotary frequencies, constant buffers): it is checked, not loaded;
* ``refuse(pattern, why)`` — a tensor of a variant we do not support: named in the error.

:func:`remap` applies a map to a :class:`~.checkpoint.Checkpoint` against the shapes of our
model's state dict and refuses, with one message listing (at most ``LIST_LIMIT`` of each, with
counts) the source tensors no rule takes, the parameters no source gives, the shapes that differ,
the checks that fail and the names two sources both claim.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .checkpoint import Checkpoint, CheckpointMismatch

LIST_LIMIT = 20

Check = Callable[[torch.Tensor], "str | None"]  # returns what is wrong, or None


@dataclass
class Load:
    target: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # may raise CheckpointMismatch


@dataclass
class Verify:
    what: str
    check: Check


@dataclass
class Refuse:
    why: str


Action = Load | Verify | Refuse


@dataclass
class _Rule:
    kind: str  # exact | prefix | regex
    pattern: str | re.Pattern
    make: Callable[[str], Action]


@dataclass
class KeyMap:
    rules: list[_Rule] = field(default_factory=list)

    def exact(self, src: str, dst: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "KeyMap":
        """``src`` is loaded as ``dst`` (through ``transform``, which may refuse with CheckpointMismatch)."""
        self.rules.append(_Rule("exact", src, lambda _k, d=dst, f=transform: Load(d, f)))
        return self

    def prefix(self, src: str, dst: str) -> "KeyMap":
        self.rules.append(_Rule("prefix", src, lambda k, s=src, d=dst: Load(d + k[len(s):])))
        return self

    def verify(self, pattern: str, what: str, check: Check) -> "KeyMap":
        self.rules.append(_Rule("regex", re.compile(pattern), lambda _k: Verify(what, check)))
        return self

    def refuse(self, pattern: str, why: str) -> "KeyMap":
        self.rules.append(_Rule("regex", re.compile(pattern), lambda _k: Refuse(why)))
        return self

    def action(self, key: str) -> Action | None:
        for rule in self.rules:
            if rule.kind == "exact" and key == rule.pattern:
                return rule.make(key)
            if rule.kind == "prefix" and key.startswith(rule.pattern):
                return rule.make(key)
            if rule.kind == "regex" and rule.pattern.search(key):
                return rule.make(key)
        return None


@dataclass
class RemapResult:
    state_dict: dict[str, torch.Tensor]
    verified: list[str]  # source names checked, not loaded
    fresh: list[str]  # our parameters left to their initialisation (allowed missing)
    sources: dict[str, str]  # our name → source name


def _shape(s) -> str:
    return "[" + ", ".join(str(int(x)) for x in s) + "]"


def _section(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    out = [f"  {len(lines)} {title}:"]
    out += [f"    {line}" for line in lines[:LIST_LIMIT]]
    if len(lines) > LIST_LIMIT:
        out.append(f"    … and {len(lines) - LIST_LIMIT} more")
    return out


def remap(ckpt: Checkpoint, keymap: KeyMap, target_shapes: dict[str, torch.Size], *, what: str,
          transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
          optional: Iterable[str] = (), allow_missing: Iterable[str] = (),
          dtype: torch.dtype | None = None) -> RemapResult:
    """Map every tensor of ``ckpt`` onto ``target_shapes``; refuse with the full list of problems.

    ``transforms``: per *target* name, applied after loading (e.g. new embedding rows for added
    tokens) — the shape check is on the result. ``optional``: targets that may stay unset (a tied
    LM head). ``allow_missing``: target prefixes that may be missing and are then freshly
    initialised (connector modules of a stage that had not trained them yet).
    """
    transforms = transforms or {}
    optional = set(optional)
    allow_missing = tuple(allow_missing)
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    unmapped, refused, mismatched, failed, duplicated, verified = [], [], [], [], [], []
    for key in ckpt.keys():
        act = keymap.action(key)
        if act is None:
            unmapped.append(f"{key} {_shape(ckpt.shape(key))}")
            continue
        if isinstance(act, Refuse):
            refused.append(f"{key}: {act.why}")
            continue
        if isinstance(act, Verify):
            problem = act.check(ckpt.tensor(key))
            if problem:
                failed.append(f"{key} ({act.what}): {problem}")
            else:
                verified.append(key)
            continue
        target = act.target
        if target not in target_shapes:
            unmapped.append(f"{key} {_shape(ckpt.shape(key))} → {target}, which our model does not have")
            continue
        if target in sources:
            duplicated.append(f"{target} ← {sources[target]} and {key}")
            continue
        expected = tuple(target_shapes[target])
        src_shape = ckpt.shape(key)
        if target not in transforms and tuple(src_shape) != expected:
            mismatched.append(f"{key} {_shape(src_shape)} → {target} expects {_shape(expected)}")
            continue
        tensor = ckpt.tensor(key)
        if act.transform is not None:
            try:
                tensor = act.transform(tensor)
            except CheckpointMismatch as err:  # err reads "(what it is): what is wrong"
                failed.append(f"{key} {err}")
                sources[target] = key  # given, though wrong: not also "missing"
                continue
        if target in transforms:
            tensor = transforms[target](tensor)
            if tuple(tensor.shape) != expected:
                mismatched.append(f"{key} {_shape(src_shape)} → {target} expects {_shape(expected)}")
                continue
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[target] = tensor.contiguous()
        sources[target] = key
    missing, fresh = [], []
    for target, shape in target_shapes.items():
        if target in out or target in optional:
            continue
        if allow_missing and target.startswith(allow_missing):
            fresh.append(target)
        else:
            missing.append(f"{target} {_shape(shape)}")
    lines = (_section("source tensor(s) that no module of ours takes", unmapped)
             + _section("source tensor(s) of an unsupported variant", refused)
             + _section("parameter(s) of ours that the checkpoint does not give", missing)
             + _section("tensor(s) with the wrong shape", mismatched)
             + _section("check(s) that failed", failed)
             + _section("parameter(s) given twice", duplicated))
    if lines:
        raise CheckpointMismatch(f"{what} does not match our modules; nothing was written:\n" + "\n".join(lines))
    return RemapResult(out, verified, fresh, sources)


# ---------------------------------------------------------------------- common checks
def close_to(expected: torch.Tensor, atol: float, what: str = "the expected values") -> Check:
    """A check that a tensor equals ``expected`` up to ``atol`` (e.g. a table stored in half precision)."""

    def check(t: torch.Tensor) -> str | None:
        if tuple(t.shape) != tuple(expected.shape):
            return f"shape {_shape(t.shape)}, expected {_shape(expected.shape)}"
        diff = (t.float() - expected.float()).abs().max().item() if t.numel() else 0.0
        if not diff <= atol:  # also catches NaN
            return f"differs from {what} by up to {diff:.3g} (tolerance {atol:g})"
        return None

    return check


def arange_check(t: torch.Tensor) -> str | None:
    """``position_ids`` buffers that older transformers saved: ``[[0, 1, …, n−1]]``."""
    flat = t.reshape(-1)
    if not torch.equal(flat.long(), torch.arange(flat.numel())):
        return "is not 0, 1, …, n−1"
    return None
