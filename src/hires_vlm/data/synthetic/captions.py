"""Captions of the benchmark's visual world: what a tile or a low-resolution view of an item shows.

The text side of the tiny foundation's contrastive pretraining (``hires_vlm.foundation``) and of
the stage-1 alignment data of the demo's recipes. A caption names only what the view holds: a
full-resolution ``S``-px crop is described by the objects whose boxes lie inside it (patterned
squares by their pattern and number, the background texture, the big shape by its
colour and kind); the whole image at low resolution (LLaVA-1.5's single view) by what survives
the reduction — the big shape's colour, kind and side, and how many squares there are, never a
1-px pattern. Captions are canonical (fixed order, fixed words), so equal content gives equal text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .families import _QUADRANTS, Sample
from .probes import lowres_view

_NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_PATTERN_WORD = {"plain": "plain", "horizontal": "horizontal", "vertical": "vertical", "checkered": "checkered"}


def _inside(box: Sequence[int], crop: tuple[int, int, int, int], slack: int = 1) -> bool:
    x0, y0, x1, y1 = crop
    return box[0] >= x0 - slack and box[1] >= y0 - slack and box[2] <= x1 + slack and box[3] <= y1 + slack


def _squares(sample: Sample) -> list[tuple[list[int], str]]:
    """(box, pattern) of every pattern square of an item."""
    m, fam = sample.meta, sample.family
    if fam == "quadrant":
        return [(b, m["pattern"] if q == sample.answer else "plain") for b, q in zip(m["boxes"], _QUADRANTS)]
    if fam == "existence":
        return list(zip(m["boxes"], m["kinds"]))
    if fam == "counting":
        return [(b, "plain") for b in m["boxes"]]
    if fam == "tile_border":
        x0, y0, x1, y1 = m["box"]
        if m["axis"] == "x":  # halves left | right
            mid = (x0 + x1) // 2
            halves = [[x0, y0, mid, y1], [mid, y0, x1, y1]]
        else:
            mid = (y0 + y1) // 2
            halves = [[x0, y0, x1, mid], [x0, mid, x1, y1]]
        return list(zip(halves, m["halves"]))
    return []


def _count_phrase(n: int, noun: str) -> str:
    plural = noun if n == 1 else noun + ("es" if noun.endswith("s") else "s")
    return f"{_NUMBER.get(n, str(n))} {plural}"


def crop_caption(sample: Sample, crop: tuple[int, int, int, int]) -> str:
    """What the full-resolution crop ``(x0, y0, x1, y1)`` of ``sample`` shows, in canonical words."""
    parts: list[str] = []
    fam, m = sample.family, sample.meta
    if fam == "fine_detail":
        parts.append(f"{_PATTERN_WORD[sample.answer]} background")
    squares = [p for b, p in _squares(sample) if _inside(b, crop)]
    if fam == "tile_border" and len(squares) == 2:
        parts.append(f"bar of {squares[0]} and {squares[1]}")
    elif squares:
        for p in sorted(set(squares), key=list(_PATTERN_WORD).index):
            k = squares.count(p)
            parts.append(_count_phrase(k, f"{p} square"))
    if fam == "global_layout" and _inside(m["box"], crop, slack=6):
        parts.append(f"{m['colour']} {m['shape']}")
    return ", ".join(parts) if parts else "nothing"


def lowres_caption(sample: Sample) -> str:
    """What the whole image at low resolution shows: nothing that needs full resolution."""
    fam, m = sample.family, sample.meta
    if fam == "global_layout":
        return f"{m['colour']} {m['shape']} on the {m['side']}"
    if fam in ("quadrant", "existence", "counting"):
        return _count_phrase(len(m["boxes"]), "square")
    if fam == "tile_border":
        return "one bar"
    return "background and discs"


def caption_views(sample: Sample, rng: np.random.Generator, tile_size: int, crops: int = 3
                  ) -> list[tuple[np.ndarray, str]]:
    """``crops`` full-resolution ``tile_size`` crops (half of them centred on an object) and the
    low-resolution view of ``sample``, each with its caption: ``[(uint8 [S x S x 3], caption)]``."""
    h, w = sample.image.shape[:2]
    s = tile_size
    objects = [b for b, _ in _squares(sample)] + list(sample.meta.get("boxes", []))
    if "box" in sample.meta and sample.family == "global_layout":
        objects.append(sample.meta["box"])
    out = []
    for i in range(crops):
        if objects and i % 2 == 0:
            b = objects[int(rng.integers(0, len(objects)))]
            cx = (b[0] + b[2]) / 2 + rng.uniform(-s / 4, s / 4)
            cy = (b[1] + b[3]) / 2 + rng.uniform(-s / 4, s / 4)
            x0, y0 = round(cx - s / 2), round(cy - s / 2)
        else:
            x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        x0, y0 = min(max(x0, 0), w - s), min(max(y0, 0), h - s)
        crop = (x0, y0, x0 + s, y0 + s)
        out.append((sample.image[y0:y0 + s, x0:x0 + s], crop_caption(sample, crop)))
    out.append((lowres_view(sample.image, s), lowres_caption(sample)))
    return out


def image_caption(sample: Sample) -> str:
    """A caption of the whole item at full resolution (the demo's stage-1 alignment text)."""
    h, w = sample.image.shape[:2]
    full = crop_caption(sample, (0, 0, w, h))
    return lowres_caption(sample) if sample.family == "global_layout" else full
