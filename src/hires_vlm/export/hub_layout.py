"""The tensor names of the ``llava-hf`` checkpoints on the Hub, which every LLaVA loader reads.

transformers 5 holds a Llava / LlavaNext model as ``model.language_model.*``, ``lm_head``,
``model.vision_tower.*`` (a CLIP tower without its old ``vision_model.`` level),
``model.multi_modal_projector.*`` and ``model.image_newline``, and maps the Hub names onto those
when it loads a file. Its ``save_pretrained`` writes Hub names back for all of them but the CLIP
level, so a file it writes says ``vision_tower.embeddings.*`` where every ``llava-hf`` checkpoint —
and so the loaders of vLLM, SGLang, TGI and transformers 4, all written against those — say
``vision_tower.vision_model.embeddings.*``. :func:`rewrite_to_hub_layout` renames the tensors of
the written files to the Hub layout, whatever names the installed transformers wrote; transformers
5.20–5.24 load that layout into the same modules (the export's self-test loads it back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: transformers 5 module prefix → Hub name prefix (first match wins).
HUB_PREFIXES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)
#: towers whose Hub checkpoints keep a level that transformers 5 folds away: class name → that level.
FOLDED_TOWER_LEVEL = {"CLIPVisionModel": "vision_model."}
INDEX_FILE = "model.safetensors.index.json"


def tower_level(tower) -> str:
    """The level (``"vision_model."``) the Hub layout has above ``tower``'s own names, or ``""``."""
    level = FOLDED_TOWER_LEVEL.get(type(tower).__name__, "")
    return level if level and not hasattr(tower, level.rstrip(".")) else ""


def hub_name(name: str, level: str = "") -> str:
    """A tensor name of transformers 5 (or already a Hub name) → its Hub name."""
    for new, old in HUB_PREFIXES:
        if name.startswith(new):
            name = old + name[len(new):]
            break
    if level and name.startswith("vision_tower.") and not name.startswith("vision_tower." + level):
        name = "vision_tower." + level + name[len("vision_tower."):]
    return name


def rewrite_to_hub_layout(folder: str | os.PathLike, level: str = "") -> int:
    """Rename the tensors of every safetensors file in ``folder`` (and its index) to the Hub layout;
    returns how many names changed. One file in memory at a time; each rewritten atomically."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    changed = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            names = list(f.keys())
            metadata = f.metadata() or {}
        renames = {n: hub_name(n, level) for n in names}
        moved = sum(1 for old, new in renames.items() if old != new)
        if not moved:
            continue
        if len(set(renames.values())) != len(renames):
            raise AssertionError(f"renaming {path.name} to the Hub layout would merge tensors")
        tensors = load_file(path)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({renames[k]: v for k, v in tensors.items()}, tmp, metadata={**metadata, "format": "pt"})
        del tensors
        os.replace(tmp, path)
        changed += moved
    index = folder / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {hub_name(k, level): v for k, v in data["weight_map"].items()}
        tmp = index.with_name(f".{index.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, index)
    return changed
