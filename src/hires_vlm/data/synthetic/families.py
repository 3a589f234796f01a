"""The task families: what each draws and asks, its answers and chance, sizes and seeds of items."""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hires_vlm.imaging.processor import ImagingSpec

from .drawing import (
    _AMPLITUDE,
    _PALETTE,
    _PATTERN_PHRASE,
    _SPLIT_CODE,
    _TAG_ITEM,
    ASPECTS,
    DEFAULT_SIZE_RANGE,
    DEFAULT_TILE_SIZE,
    NOISE_STD,
    PATTERN_FRACTION,
    PATTERNS,
    STRIPED,
    TEXTURE_RAMP,
    _Canvas,
    _clutter,
    _disc_mask,
    _pattern_params,
    _square_colour,
    _triangle_mask,
    pattern_field,
)


# ----------------------------------------------------------------------------------------- families
@dataclass
class _Opts:
    noise_std: float = NOISE_STD
    stripe: int = 1  # pattern stripe width; 1 in the benchmark, larger only for control measurements
    tile_size: int = DEFAULT_TILE_SIZE


def texture_field(kind: str, width: int, height: int, stripe: int = 1, ramp: int = TEXTURE_RAMP) -> np.ndarray:
    """``[height x width]`` 1-px pattern over a whole image, fading in over ``ramp`` px at each edge.

    The same signs as :func:`pattern_field`; the amplitude is 1 inside and follows a sin² ramp at the
    edges (both axes), so the texture meets the padding of the low-resolution view without a hard
    edge that an antialiasing filter would leak.
    """
    if kind == "plain":
        return np.zeros((height, width), np.float32)
    sign = pattern_field(kind, width, height, stripe)
    sign = np.sign(sign)
    def plateau(n: int) -> np.ndarray:
        r = max(1, min(ramp, n // 2))
        env = np.ones(n, np.float32)
        up = np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
        env[:r], env[n - r:] = up, up[::-1]
        return env
    return (sign * plateau(height)[:, None] * plateau(width)[None, :]).astype(np.float32)


def _fine_detail(rng, w, h, qtype, answer, o: _Opts):
    # Every random draw happens before the label is used, so one seed gives one scene whatever
    # the class: lowres_separability relies on this to compare classes pixel for pixel.
    amp = float(rng.integers(_AMPLITUDE[0], _AMPLITUDE[1] + 1))
    # Colours leave room for the texture and the noise (±3σ) so nothing clips: clipping would break
    # the cancellation of the 1-px pattern under the low-resolution filter.
    room = (amp + 3 * NOISE_STD, 255 - amp - 3 * NOISE_STD)
    cv = _Canvas(rng, w, h, colour_range=room)
    template = int(rng.integers(0, 2))
    # Distractor discs first, then the texture over everything: a texture cut off at a disc's edge
    # would leak through the low-resolution filter. The box is where the texture is at full amplitude.
    _clutter(cv, rng, int(rng.integers(2, 6)), colour_range=room)
    cv.px += amp * texture_field(answer, w, h, o.stripe)[..., None]
    r = TEXTURE_RAMP
    return cv.finish(rng, o.noise_std), template, {}, {"box": [r, r, w - r, h - r]}


def _counting(rng, w, h, qtype, answer, o: _Opts):
    # 1-4 plain squares of 12-16 % of the short side (13-36 px): 7-18 px squares in the one
    # low-resolution view, so counting them is a low-resolution skill (like global_layout) that the
    # tower's low-resolution captions ("three squares") name. No distractors: in hires-synth-3 grey
    # discs of the squares' size made the count unlearnable for every method (and for a 2-layer
    # transformer probe on the pixels of the low-resolution view: 27 % after 600 steps, chance 25 %).
    cv = _Canvas(rng, w, h)
    boxes = []
    for _ in range(int(answer)):
        side = max(12, int(round(rng.uniform(0.12, 0.16) * min(w, h))))
        x0, y0 = cv.place(rng, side, side, margin=6, gap=8)
        cv.mask((x0, y0, x0 + side, y0 + side), np.ones((side, side), bool), _square_colour(cv, rng, 0.0))
        boxes.append([x0, y0, x0 + side, y0 + side])
    template = int(rng.integers(0, 2))
    return cv.finish(rng, o.noise_std), template, {}, {"boxes": boxes}


_QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def _quadrant(rng, w, h, qtype, answer, o: _Opts):
    cv = _Canvas(rng, w, h)
    side, amp = _pattern_params(rng, w, h)
    base = _square_colour(cv, rng, amp)
    kind = STRIPED[int(rng.integers(0, len(STRIPED)))]
    mid_gap = 6  # keep every square clearly inside its quadrant
    regions = [
        (4, 4, w // 2 - mid_gap, h // 2 - mid_gap),
        (w // 2 + mid_gap, 4, w - 4, h // 2 - mid_gap),
        (4, h // 2 + mid_gap, w // 2 - mid_gap, h - 4),
        (w // 2 + mid_gap, h // 2 + mid_gap, w - 4, h - 4),
    ]
    boxes = []
    for q, region in zip(_QUADRANTS, regions):
        x0, y0 = cv.place(rng, side, side, region=region)
        cv.patch(x0, y0, side, side, base, amp, kind if q == answer else "plain", o.stripe)
        boxes.append([x0, y0, x0 + side, y0 + side])
    _clutter(cv, rng, int(rng.integers(0, 4)))
    template = int(rng.integers(0, 2))
    return cv.finish(rng, o.noise_std), template, {}, {"boxes": boxes, "pattern": kind}


# Typical cuts of the project's methods at the tiny default S (grids up to 3×3): the tile
# borders the tile_border family puts its bars on. Each maps an image size to a grid and to where
# the image lies on the grid's canvas. Candidates are spelled out (not ImagingSpec's defaults) so
# that the benchmark does not change when a default does.
_ANYRES_3X3 = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (2, 3), (3, 2), (3, 3))
_ANYRES_5 = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


@functools.lru_cache(maxsize=8)
def _border_specs(s: int) -> dict[str, ImagingSpec]:
    return {
        "anyres_3x3": ImagingSpec(tile_size=s, grid_rule="anyres", grid_candidates=_ANYRES_3X3, canvas="fit"),
        "anyres_5": ImagingSpec(tile_size=s, grid_rule="anyres", grid_candidates=_ANYRES_5, canvas="fit"),
        "slime_paper_3x3": ImagingSpec(tile_size=s, grid_rule="slime_paper", max_cols=3, max_rows=3, canvas="fit"),
        "pad_square_3x3": ImagingSpec(tile_size=s, grid_rule="fixed", fixed_grid=(3, 3), canvas="pad_square"),
        "pad_square_2x2": ImagingSpec(tile_size=s, grid_rule="fixed", fixed_grid=(2, 2), canvas="pad_square"),
    }


BORDER_CUTS = tuple(_border_specs(DEFAULT_TILE_SIZE))


def border_lines(image_size: Sequence[int], tile_size: int = DEFAULT_TILE_SIZE,
                 merge_px: int = 2) -> list[tuple[str, int, tuple[str, ...]]]:
    """Internal tile borders of the typical cuts in image pixels: ``[(axis, coord, cut names)]``.

    ``axis`` ``"x"`` is a vertical line at column ``coord``, ``"y"`` a horizontal one. Lines of
    different cuts closer than ``merge_px`` are merged (first coordinate kept).
    """
    w, h = int(image_size[0]), int(image_size[1])
    raw: list[tuple[str, float, str]] = []
    for name, spec in _border_specs(tile_size).items():
        rec = spec.record_for((w, h))
        cols, rows = rec.grid
        left, top, right, bottom = rec.content_box
        for j in range(1, cols):
            x_canvas = j * tile_size
            if left < x_canvas < right:
                raw.append(("x", (x_canvas - left) * w / (right - left), name))
        for i in range(1, rows):
            y_canvas = i * tile_size
            if top < y_canvas < bottom:
                raw.append(("y", (y_canvas - top) * h / (bottom - top), name))
    merged: list[list] = []
    for axis, coord, name in sorted(raw, key=lambda t: (t[0], t[1], t[2])):
        c = int(round(coord))
        if merged and merged[-1][0] == axis and abs(merged[-1][1] - c) <= merge_px:
            if name not in merged[-1][2]:
                merged[-1][2].append(name)
            continue
        merged.append([axis, c, [name]])
    return [(a, c, tuple(sorted(n))) for a, c, n in merged]


def _tile_border(rng, w, h, qtype, answer, o: _Opts):
    cv = _Canvas(rng, w, h)
    lo, hi = PATTERN_FRACTION
    half = max(10, int(round(rng.uniform(lo / 2, hi / 2) * min(w, h))))
    amp = float(rng.integers(_AMPLITUDE[0], _AMPLITUDE[1] + 1))
    base = _square_colour(cv, rng, amp)
    lines = [ln for ln in border_lines((w, h), o.tile_size)
             if half + 6 <= ln[1] <= (w if ln[0] == "x" else h) - half - 6]
    if not lines:
        raise RuntimeError(f"no tile border of a {w}x{h} image leaves room for a bar; use a larger size_range")
    axis, at, cuts = lines[int(rng.integers(0, len(lines)))]
    first = second = answer
    # Each half is its own pattern square (own envelope) and the split lies exactly on the border,
    # so every tile of the cut holds at most half of the bar.
    if axis == "x":  # vertical border: the bar is horizontal, halves left | right
        y0 = int(rng.integers(6, h - half - 6 + 1))
        box = (at - half, y0, at + half, y0 + half)
        halves = [(at - half, y0), (at, y0)]
    else:  # horizontal border: the bar is vertical, halves top / bottom
        x0 = int(rng.integers(6, w - half - 6 + 1))
        box = (x0, at - half, x0 + half, at + half)
        halves = [(x0, at - half), (x0, at)]
    cv.boxes.append(box)
    _clutter(cv, rng, int(rng.integers(2, 5)))
    for (hx, hy), kind in zip(halves, (first, second)):
        cv.patch(hx, hy, half, half, base, amp, kind, o.stripe)
    template = int(rng.integers(0, 2))
    meta = {"box": list(box), "axis": axis, "at": at, "cuts": list(cuts), "halves": [first, second]}
    return cv.finish(rng, o.noise_std), template, {}, meta


def _global_layout(rng, w, h, qtype, answer, o: _Opts):
    cv = _Canvas(rng, w, h, muted=True)
    colours = list(_PALETTE)
    if qtype == "position":
        side, colour = answer, colours[int(rng.integers(0, len(colours)))]
    else:
        side, colour = ("left", "right")[int(rng.integers(0, 2))], answer
    shape = ("circle", "square", "triangle")[int(rng.integers(0, 3))]
    size = int(min(rng.uniform(0.30, 0.42) * min(w, h), 0.36 * w))
    if shape == "circle":
        m = _disc_mask(size / 2)
    elif shape == "square":
        m = np.ones((size, size), bool)
    else:
        m = _triangle_mask(size)
    bh, bw = m.shape
    # The shape's centre lies in the outer 40 % of its half: unambiguous at any resolution.
    cx = float(rng.uniform(0.18, 0.30)) * w
    cx = max(cx, bw / 2 + 3)
    if side == "right":
        cx = w - cx
    cy = float(rng.uniform(bh / 2 + 3, h - bh / 2 - 3))
    x0, y0 = int(round(cx - bw / 2)), int(round(cy - bh / 2))
    cv.boxes.append((x0, y0, x0 + bw, y0 + bh))
    rgb = np.asarray(_PALETTE[colour], np.float32) + rng.uniform(-12, 12, 3)
    cv.mask((x0, y0, x0 + bw, y0 + bh), m, rgb)
    for _ in range(int(rng.integers(2, 6))):  # small grey distractors
        r = float(rng.uniform(3, 7))
        dm = _disc_mask(r)
        try:
            dx, dy = cv.place(rng, dm.shape[1], dm.shape[0], margin=2, gap=4)
        except RuntimeError:
            continue
        cv.mask((dx, dy, dx + dm.shape[1], dy + dm.shape[0]), dm, rng.uniform(60, 190) + rng.uniform(-10, 10, 3))
    template = int(rng.integers(0, 2))
    return cv.finish(rng, o.noise_std), template, {}, {"box": [x0, y0, x0 + bw, y0 + bh], "shape": shape,
                                                         "colour": colour, "side": side}


def _existence(rng, w, h, qtype, answer, o: _Opts):
    # 1-3 squares; "yes": one of them carries a 1-px pattern (any of the three), "no": all plain.
    # At low resolution every square is plain, so the answer needs full resolution.
    cv = _Canvas(rng, w, h)
    count = int(rng.integers(1, 4))
    kinds = ["plain"] * count
    if answer == "yes":
        kinds[int(rng.integers(0, count))] = STRIPED[int(rng.integers(0, len(STRIPED)))]
    boxes = []
    for kind in kinds:
        side, amp = _pattern_params(rng, w, h)
        side = max(12, int(side * (0.8 if count == 2 else 0.65 if count == 3 else 1.0)))  # room for up to three
        base = _square_colour(cv, rng, amp)
        x0, y0 = cv.place(rng, side, side, margin=6, gap=8)
        cv.patch(x0, y0, side, side, base, amp, kind, o.stripe)
        boxes.append([x0, y0, x0 + side, y0 + side])
    _clutter(cv, rng, int(rng.integers(1, 4)))
    template = int(rng.integers(0, 2))
    return cv.finish(rng, o.noise_std), template, {}, {"boxes": boxes, "kinds": kinds}


@dataclass(frozen=True)
class Sample:
    """One drawn item: ``image`` ``[H x W x 3]`` uint8, the question (no ``<image>``) and the answer."""

    family: str
    qtype: str
    image: np.ndarray
    question: str
    answer: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


@dataclass(frozen=True)
class Family:
    """A task family: its question types (each with its answers and question templates) and drawer."""

    name: str
    description: str
    answers: Mapping[str, tuple[str, ...]]  # qtype -> canonical answers
    templates: Mapping[str, tuple[str, ...]]  # qtype -> question templates ({thing} filled by the drawer)
    draw: Callable = field(repr=False)
    fills: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # values {placeholders} can take

    @property
    def qtypes(self) -> tuple[str, ...]:
        return tuple(self.answers)

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly among the answers of the question's type (balanced splits)."""
        return float(np.mean([1.0 / len(a) for a in self.answers.values()]))

    def schedule(self, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
        """``n`` (qtype, answer) pairs: question types and answers within each type balanced to ±1."""
        q = len(self.qtypes)
        items = []
        for k, qtype in enumerate(self.qtypes):
            n_q = n // q + (1 if k < n % q else 0)
            answers = self.answers[qtype]
            start = int(rng.integers(0, len(answers)))  # which answers get the +1 when n_q is uneven
            items += [(qtype, answers[(start + i) % len(answers)]) for i in range(n_q)]
        order = rng.permutation(len(items))
        return [items[i] for i in order]

    def render(self, rng: np.random.Generator, size: Sequence[int], qtype: str, answer: str,
               opts: _Opts | None = None) -> Sample:
        if qtype not in self.answers or answer not in self.answers[qtype]:
            raise ValueError(f"{self.name}: ({qtype!r}, {answer!r}) is not a valid (qtype, answer); "
                             f"valid: {dict(self.answers)}")
        w, h = int(size[0]), int(size[1])
        img, template, fill, meta = self.draw(rng, w, h, qtype, answer, opts or _Opts())
        question = self.templates[qtype][template % len(self.templates[qtype])].format(**fill)
        return Sample(self.name, qtype, img, question, answer, meta)

    def __call__(self, seed: int = 0, index: int = 0, *, split: str = "train", qtype: str | None = None,
                 answer: str | None = None, size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                 min_long_side: int | None = None, tile_size: int = DEFAULT_TILE_SIZE) -> Sample:
        """Draw one item on its own. With the ``qtype`` and ``answer`` of a benchmark record (and the
        benchmark's seed, split, index and sizes) this is that record's image, pixel for pixel,
        unless the record had to be redrawn to avoid the training split (which is rare).
        """
        qtype = qtype or self.qtypes[index % len(self.qtypes)]
        if answer is None:
            answers = self.answers[qtype]
            answer = answers[index % len(answers)]
        return _draw_item(self, seed, split, index, 0, qtype, answer, tuple(size_range),
                          _min_long(min_long_side, tile_size), _Opts(tile_size=tile_size))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "fine_detail", "a 1-px pattern (or none) over the whole background, under distractor discs; which pattern",
            {"pattern": PATTERNS},
            {"pattern": ("What pattern covers the background?", "Which fine pattern is drawn over the background?")},
            _fine_detail,
        ),
        Family(
            "counting", "1-4 plain squares (7-18 px at low resolution); how many (answerable at low resolution)",
            {"count": ("1", "2", "3", "4")},
            {"count": ("How many squares are there?", "How many squares are in the image?")},
            _counting,
        ),
        Family(
            "quadrant", "four small squares, one patterned; which quadrant holds it",
            {"quadrant": _QUADRANTS},
            {"quadrant": ("Which quadrant holds the patterned square?", "Where is the patterned square?")},
            _quadrant,
        ),
        Family(
            "tile_border", "a bar of one 1-px pattern (or none) split by a tile border of a typical cut; which pattern",
            {"pattern": PATTERNS},
            {"pattern": ("What pattern is the bar?", "Which fine pattern does the bar have?")},
            _tile_border,
        ),
        Family(
            "global_layout", "one big coloured shape; which side, which colour (answerable at low resolution)",
            {"position": ("left", "right"), "colour": tuple(_PALETTE)},
            {
                "position": ("Is the big shape on the left or the right?", "Which side is the big shape on?"),
                "colour": ("What colour is the big shape?", "Which colour does the big shape have?"),
            },
            _global_layout,
        ),
        Family(
            "existence", "1-3 squares, all plain or one patterned; is there a patterned square (POPE-style yes/no)",
            {"exists": ("yes", "no")},
            {"exists": ("Is there a patterned square in the image?", "Does the image contain a patterned square?")},
            _existence,
        ),
    ]
}


def question_vocabulary(families: Iterable[str] | None = None) -> list[str]:
    """Every word and punctuation mark (case as written) that questions and answers can contain.

    The ``<image>`` placeholder is not included; the tokenizer adds it as a special token.
    """
    texts: list[str] = []
    for name in _check_families(families):
        fam = FAMILIES[name]
        for qtype, templates in fam.templates.items():
            texts += list(fam.answers[qtype])
            for t in templates:
                keys = re.findall(r"{(\w+)}", t)
                if not keys:
                    texts.append(t)
                for key in keys:
                    texts += [t.replace("{" + key + "}", v) for v in fam.fills[key]]
    words = {tok for text in texts for tok in re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", text)}
    return sorted(words)


# ------------------------------------------------------------------------------------- sizes, seeds
def _min_long(min_long_side: int | None, tile_size: int) -> int:
    return 2 * tile_size if min_long_side is None else int(min_long_side)


def _feasible_aspects(size_range: Sequence[int], min_long: int) -> list[tuple[int, int, int, int]]:
    """(a, b, lowest long side, highest long side) of each aspect a:b that fits the bounds."""
    lo, hi = size_range
    out = []
    for a, b in ASPECTS:
        ratio = max(a, b) / min(a, b)
        lmin = max(min_long, math.ceil(lo * ratio), lo)
        if lmin <= hi:
            out.append((a, b, lmin, hi))
    return out


def _check_size_range(size_range: Sequence[int], min_long: int) -> tuple[int, int]:
    try:
        lo, hi = int(size_range[0]), int(size_range[1])
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"size_range must be (min_side, max_side), got {size_range!r}") from None
    if lo < 96 or hi < lo:
        raise ValueError(f"size_range {size_range!r} must satisfy 96 <= min_side <= max_side")
    if min_long > hi:
        raise ValueError(f"min_long_side={min_long} is above the largest side {hi}; lower it or widen size_range")
    return lo, hi


def _sample_size(rng, size_range, min_long) -> tuple[int, int]:
    aspects = _feasible_aspects(size_range, min_long)
    if not aspects:
        raise ValueError(f"no aspect ratio of {ASPECTS} fits size_range={tuple(size_range)} with long side >= {min_long}")
    a, b, lmin, lmax = aspects[int(rng.integers(0, len(aspects)))]
    long_side = int(rng.integers(lmin, lmax + 1))
    short = int(round(long_side * min(a, b) / max(a, b)))
    short = min(max(short, int(size_range[0])), long_side)
    return (long_side, short) if a >= b else (short, long_side)


def _family_code(name: str) -> int:
    return zlib.crc32(name.encode())


def _draw_item(fam: Family, seed: int, split: str, index: int, attempt: int, qtype: str, answer: str,
               size_range, min_long: int, opts: _Opts) -> Sample:
    rng = np.random.default_rng([seed, _TAG_ITEM, _SPLIT_CODE[split], _family_code(fam.name), index, attempt])
    size = _sample_size(rng, size_range, min_long)
    return fam.render(rng, size, qtype, answer, opts)


def _check_families(families: Iterable[str] | None) -> list[str]:
    if families is None:
        return list(FAMILIES)
    if isinstance(families, str):
        families = [families]
    names = list(dict.fromkeys(families))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    if not names:
        raise ValueError(f"no family selected; choose from {list(FAMILIES)}")
    return names
