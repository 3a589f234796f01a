"""A foundation on disk: its manifest, its files' hashes, and loading it into a tiny model.

A foundation directory holds ``foundation.json`` (recipe, sizes, what it was trained on, the
SHA-256 of every file), ``vision_tower.safetensors`` (a ``CLIPVisionModel`` state dict),
``language_model.safetensors`` (a ``LlamaForCausalLM`` state dict), the tokenizer files and a
model card (``README.md``). The shipped one lies in the package (``SHIPPED``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "foundation.json"
VISION_FILE = "vision_tower.safetensors"
LM_FILE = "language_model.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = 1
SHIPPED = str(Path(__file__).resolve().parent.parent / "assets" / "foundation" / "tiny")


class FoundationError(ValueError):
    """A foundation directory that is missing, incomplete or altered."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hashed_files(root: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` but the manifest, sorted."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if rel != MANIFEST:
                out[rel] = sha256_file(full)
    return dict(sorted(out.items()))


def resolve(path: str | None) -> str:
    """``None`` / ``"shipped"`` → the packaged foundation; else the given directory."""
    return SHIPPED if path in (None, "", "shipped") else str(path)


@dataclass(frozen=True)
class Foundation:
    path: str
    manifest: dict

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights and tokenizer: what a model built on it records."""
        files = self.manifest["files"]
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def sizes(self) -> dict:
        return dict(self.manifest["sizes"])

    def describe(self) -> dict:
        """What a model built on this foundation records in its config."""
        shipped = os.path.realpath(self.path) == os.path.realpath(SHIPPED)
        return {"name": self.manifest.get("name", "foundation"), "fingerprint": self.fingerprint,
                "source": "shipped" if shipped else os.path.abspath(self.path),
                "recipe_seed": self.manifest["recipe"]["seed"]}

    def tokenizer(self):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(os.path.join(self.path, TOKENIZER_DIR))

    def state_dicts(self) -> tuple[dict, dict]:
        from safetensors.torch import load_file

        return load_file(os.path.join(self.path, VISION_FILE)), load_file(os.path.join(self.path, LM_FILE))


def load_foundation(path: str | None = None, verify: bool = True) -> Foundation:
    """Read a foundation directory (default: the shipped one), checking every file's hash."""
    root = resolve(path)
    manifest_path = os.path.join(root, MANIFEST)
    if not os.path.isfile(manifest_path):
        hint = ("the package was installed without its data files; reinstall it"
                if root == SHIPPED else "give a directory written by `hires-vlm foundation build`")
        raise FoundationError(f"no foundation at {root!r} ({MANIFEST} missing); {hint}")
    with open(manifest_path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise FoundationError(f"{manifest_path} is not valid JSON ({e}); rebuild the foundation") from None
    if manifest.get("format") != FORMAT:
        raise FoundationError(f"{manifest_path}: format {manifest.get('format')!r} is not {FORMAT}; rebuild it")
    if verify:
        problems = verify_files(root, manifest)
        if problems:
            raise FoundationError(f"foundation {root!r} does not match its manifest: {'; '.join(problems[:4])}. "
                                  "Rebuild it with `hires-vlm foundation build` (or reinstall the package)")
    return Foundation(root, manifest)


def verify_files(root: str, manifest: dict) -> list[str]:
    """Differences between the files under ``root`` and the hashes in ``manifest`` (empty: equal)."""
    want = manifest.get("files", {})
    have = hashed_files(root)
    problems = [f"{name} missing" for name in want if name not in have]
    problems += [f"{name} changed" for name in want if name in have and have[name] != want[name]]
    problems += [f"{name} not listed" for name in have if name not in want]
    return problems


def apply_foundation(model, foundation: Foundation) -> None:
    """Load the foundation's tower and LM weights into a tiny ``HiResVLM`` built with its sizes."""
    vision_sd, lm_sd = foundation.state_dicts()
    tower = model.vision_tower.model
    dtype = next(tower.parameters()).dtype
    missing, unexpected = tower.load_state_dict({k: v.to(dtype) for k, v in vision_sd.items()}, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise FoundationError(f"{foundation.path}: the vision tower does not fit the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    lm = model.language_model
    missing, unexpected = lm.load_state_dict({k: v.to(dtype) for k, v in lm_sd.items()}, strict=False)
    if unexpected or missing:
        raise FoundationError(f"{foundation.path}: the language model does not fit the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.config.foundation = foundation.describe()
