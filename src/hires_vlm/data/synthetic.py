"""A procedurally generated, seeded high-resolution benchmark: the data of ``hires-vlm demo``.

Six task families of images drawn with numpy (each side 168–336 px, long side at least 2·S =
224 px, seven aspect ratios from 1:2 to 2:1), each with a short canonical answer, written as
LLaVA conversation JSON. The point of the set is to separate what a single low-resolution view
keeps from what full-resolution tiles keep. The *fine* patterns most families use are 1-px
stripes and checkerboards: every 2×2 block of every class has the same mean, and the pattern
fades out (sin²) towards the edges of its 12–16 px square, so LLaVA-1.5's low-resolution path
(pad to square with the mean colour, antialiased bicubic resize to S = 112, a reduction by 2–3)
turns every class into the same flat square, while a 14-px ViT patch over full-resolution pixels
sees the stripes. :func:`lowres_separability` proves both by measurement on the benchmark's own
generator; :func:`lowres_probe` asks how much of any family the whole low-resolution view keeps.

Families (``FAMILIES``; answers balanced to ±1 within a split and question type; chance =
1 / #answers of the question type):

===============  ====================================================  ==========================
name             what is drawn / asked                                 answers
===============  ====================================================  ==========================
fine_detail      one 12–16 px square filled with a 1-px pattern        plain, horizontal,
                 among distractor discs; "what pattern?"               vertical, checkered
counting         1–4 small crosses (span 3 or 5 px, 1-px arms);        1, 2, 3, 4 (digits; number
                 "how many?"                                           words are normalised)
quadrant         four squares, one per quadrant, one patterned;        top left, top right,
                 "which quadrant?"                                     bottom left, bottom right
tile_border      a bar of two patterned halves split exactly on a      yes, no
                 tile border of a typical grid; "same pattern?"
global_layout    one big coloured shape; "left or right?" /            left, right /
                 "what colour?" (two question types)                   red, green, blue, yellow
existence        1–3 squares (plain or patterned); "is there a         yes, no (POPE-style)
                 <pattern> square?"
===============  ====================================================  ==========================

Determinism: every image has its own seed, ``[seed, tag, split, crc32(family), index, attempt]``,
so the files do not depend on the number of workers and train and test are different streams;
a (pixel hash, question) pair found in both splits is redrawn (``attempt + 1``). Image arrays are
``[H x W x 3]`` uint8; sizes are (width, height) as everywhere in the package.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hires_vlm import fsio
from hires_vlm.imaging import ops
from hires_vlm.imaging.processor import CLIP_MEAN, ImagingSpec

__all__ = [
    "ASPECTS", "BORDER_CUTS", "BenchmarkInfo", "DEFAULT_SIZE_RANGE", "FAMILIES", "Family", "PATTERNS",
    "Sample", "VERSION", "border_lines", "generate_benchmark", "lowres_probe", "lowres_separability",
    "lowres_view", "normalize_answer", "question_vocabulary", "read_records", "score_predictions",
]

VERSION = "hires-synth-1"
DEFAULT_SIZE_RANGE = (112, 224)  # bounds of each side, px (the long side is at least 2·S = 224)
# Pattern squares scale with the image: their side is this fraction of the short side. Their stripes
# are 1 px, so the antialiased low-resolution view erases them at any square size (measured by
# ``lowres_separability``); a square much smaller than a tile is a needle that tiny models trained
# from scratch on a CPU do not learn to find within minutes (measured: chance after 1,600 steps with
# 12–16 px squares), which would hide what high resolution buys behind what the model cannot learn.
PATTERN_FRACTION = (0.28, 0.40)
# fine_detail draws its 1-px texture over the whole background (fading in over this many pixels
# at the edges): the detail is everywhere at full resolution and nowhere at low resolution.
TEXTURE_RAMP = 8
DEFAULT_TILE_SIZE = 112  # S of the tiny default tower
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (2, 1), (1, 2))  # (width, height) ratios
PATTERNS = ("plain", "horizontal", "vertical", "checkered")
STRIPED = PATTERNS[1:]
SPLITS = ("train", "test")
JSON_FILES = ("train.json", "test.json", "benchmark.json")
OWNER = "the synthetic benchmark generator (hires_vlm.data.synthetic)"

NOISE_STD = 10.0  # grey-level std of the background noise (full resolution)
_NOISE_STEP = 4  # noise is quantised to multiples of this: keeps the PNGs ~30 % smaller
_AMPLITUDE = (40, 56)  # pattern amplitude range: pixels are base ± A·envelope
_PNG_LEVEL = 1
_TAG_ITEM, _TAG_SCHEDULE, _TAG_SEPARABILITY, _TAG_PROBE = 1, 2, 3, 4
_SPLIT_CODE = {"train": 0, "test": 1}

_PALETTE = {"red": (215, 45, 45), "green": (50, 170, 70), "blue": (45, 90, 215), "yellow": (230, 200, 50)}
_PATTERN_PHRASE = {
    "plain": "a plain square",
    "horizontal": "a square with horizontal stripes",
    "vertical": "a square with vertical stripes",
    "checkered": "a checkered square",
}


# ----------------------------------------------------------------------------------------- drawing
def _envelope(n: int) -> np.ndarray:
    """sin² over ``n`` pixels: the pattern fades to 0 at the edges of its square.

    A 1-px pattern cut off abruptly leaks through any smoothing filter at its edges (its partial
    2×2 blocks do not cancel): up to ~17 grey levels of difference between classes after the
    low-resolution path. With this envelope the leak stays below one grey level.
    """
    return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)


def pattern_field(kind: str, width: int, height: int, stripe: int = 1) -> np.ndarray:
    """``[height x width]`` pattern in [-1, 1] (0 for ``plain``); phase fixed at the top-left pixel.

    ``horizontal`` alternates along rows (y), ``vertical`` along columns (x), ``checkered`` along
    both; the amplitude follows :func:`_envelope` along y for ``horizontal`` and along x for the
    other two (one envelope suffices for the checkerboard: each of its rows already cancels).
    With ``stripe = 1`` every 2×2 block of every class sums to 0, so all classes share one local
    mean and become the same flat square after an antialiased reduction by 2 or more.
    """
    v = np.arange(height)[:, None] // stripe
    u = np.arange(width)[None, :] // stripe
    if kind == "plain":
        return np.zeros((height, width), np.float32)
    if kind == "horizontal":
        sign = 1 - 2 * (v % 2 + 0 * u)
        env = _envelope(height)[:, None]
    elif kind == "vertical":
        sign = 1 - 2 * (u % 2 + 0 * v)
        env = _envelope(width)[None, :]
    elif kind == "checkered":
        sign = 1 - 2 * ((u + v) % 2)
        env = _envelope(width)[None, :]
    else:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {PATTERNS}")
    return (sign * env).astype(np.float32)


class _Canvas:
    """A float image being drawn, with the boxes already used (to keep objects apart)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, muted: bool = False,
                 colour_range: tuple[float, float] = (35, 220)):
        self.w, self.h = width, height
        if muted:  # low-saturation greys, so the palette colours of global_layout stand out
            g1, g2 = rng.uniform(80, 175, 2)
            c1 = g1 + rng.uniform(-12, 12, 3)
            c2 = g2 + rng.uniform(-12, 12, 3)
        else:
            c1, c2 = rng.uniform(*colour_range, 3), rng.uniform(*colour_range, 3)
        theta = rng.uniform(0, 2 * math.pi)
        cx, cy = math.cos(theta), math.sin(theta)
        xs = np.arange(width, dtype=np.float32) * cx
        ys = np.arange(height, dtype=np.float32) * cy
        t = ys[:, None] + xs[None, :]
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        self.c1, self.c2 = c1.astype(np.float32), c2.astype(np.float32)
        self.px = self.c1 + (self.c2 - self.c1) * t[..., None]
        self.boxes: list[tuple[int, int, int, int]] = []

    def bg_at(self, x: float, y: float) -> np.ndarray:
        xi = min(max(int(x), 0), self.w - 1)
        yi = min(max(int(y), 0), self.h - 1)
        return self.px[yi, xi].copy()

    def free(self, box: tuple[int, int, int, int], gap: int) -> bool:
        x0, y0, x1, y1 = box
        return all(x1 + gap <= a or a1 + gap <= x0 or y1 + gap <= b or b1 + gap <= y0 for a, b, a1, b1 in self.boxes)

    def place(self, rng, bw: int, bh: int, *, margin: int = 4, gap: int = 6,
              region: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
        """Top-left of a free ``bw × bh`` box inside ``region`` (default: the image less ``margin``)."""
        rx0, ry0, rx1, ry1 = region if region is not None else (margin, margin, self.w - margin, self.h - margin)
        for _ in range(400):
            if rx1 - bw < rx0 or ry1 - bh < ry0:
                break
            x0 = int(rng.integers(rx0, rx1 - bw + 1))
            y0 = int(rng.integers(ry0, ry1 - bh + 1))
            box = (x0, y0, x0 + bw, y0 + bh)
            if self.free(box, gap):
                self.boxes.append(box)
                return x0, y0
        raise RuntimeError(
            f"cannot place a {bw}x{bh} object in a {self.w}x{self.h} image; use a larger size_range"
        )

    def patch(self, x0: int, y0: int, width: int, height: int, base, amp: float, kind: str, stripe: int = 1):
        f = pattern_field(kind, width, height, stripe)
        self.px[y0:y0 + height, x0:x0 + width] = np.asarray(base, np.float32) + amp * f[..., None]

    def mask(self, box: tuple[int, int, int, int], m: np.ndarray, colour) -> None:
        x0, y0, x1, y1 = box
        self.px[y0:y1, x0:x1][m] = np.asarray(colour, np.float32)

    def finish(self, rng, noise_std: float) -> np.ndarray:
        # Drawn even when noise_std = 0 so the random stream (and the scene) stays the same.
        z = rng.standard_normal((self.h, self.w), dtype=np.float32)
        if noise_std > 0:
            n = np.rint(z * (noise_std / _NOISE_STEP)) * _NOISE_STEP
            n = np.clip(n, -3 * noise_std, 3 * noise_std)
            out = self.px + n[..., None]
        else:
            out = self.px
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _disc_mask(r: float) -> np.ndarray:
    side = int(math.ceil(2 * r))
    yy, xx = np.mgrid[0:side, 0:side] + 0.5 - side / 2
    return xx * xx + yy * yy <= r * r


def _triangle_mask(side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    return np.abs(xx - side / 2) <= yy / 2


def _clutter(cv: _Canvas, rng, count: int, r_range=(5.0, 13.0), colour_range=(20, 235)) -> None:
    """Solid discs of random colours: distractors visible at any resolution."""
    for _ in range(count):
        r = float(rng.uniform(*r_range))
        m = _disc_mask(r)
        colour = rng.uniform(*colour_range, 3)
        try:
            x0, y0 = cv.place(rng, m.shape[1], m.shape[0], margin=2, gap=4)
        except RuntimeError:
            continue  # clutter is optional
        cv.mask((x0, y0, x0 + m.shape[1], y0 + m.shape[0]), m, colour)


def _square_colour(cv: _Canvas, rng, amp: float) -> np.ndarray:
    """A base colour far from the background that keeps base ± amp ± 3σ inside 0..255."""
    lo, hi = amp + 3 * NOISE_STD + 2, 253 - amp - 3 * NOISE_STD
    base = rng.uniform(lo, hi, 3)
    for _ in range(30):
        if min(np.abs(base - cv.c1).mean(), np.abs(base - cv.c2).mean()) >= 35:
            break
        base = rng.uniform(lo, hi, 3)
    return np.rint(base)


def _pattern_params(rng, w: int, h: int) -> tuple[int, float]:
    lo, hi = PATTERN_FRACTION
    side = max(12, int(round(rng.uniform(lo, hi) * min(w, h))))
    amp = float(rng.integers(_AMPLITUDE[0], _AMPLITUDE[1] + 1))
    return side, amp


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
    cv = _Canvas(rng, w, h)
    _clutter(cv, rng, int(rng.integers(1, 4)), r_range=(8.0, 16.0))
    boxes = []
    for _ in range(int(answer)):
        arm = int(rng.integers(1, 3))
        span = 2 * arm + 1
        x0, y0 = cv.place(rng, span, span, margin=6, gap=10)
        lum = float(cv.bg_at(x0 + arm, y0 + arm).mean())
        grey = rng.uniform(15, 45) if lum > 128 else rng.uniform(210, 240)
        colour = np.clip(grey + rng.uniform(-10, 10, 3), 0, 255)
        m = np.zeros((span, span), bool)
        m[arm, :] = True
        m[:, arm] = True
        cv.mask((x0, y0, x0 + span, y0 + span), m, colour)
        boxes.append([x0, y0, x0 + span, y0 + span])
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
    first = PATTERNS[int(rng.integers(0, len(PATTERNS)))]
    if answer == "yes":
        second = first
    else:
        others = [p for p in PATTERNS if p != first]
        second = others[int(rng.integers(0, len(others)))]
    # Each half is its own pattern square (own envelope), so "same" and "different" bars differ
    # only in what the halves are made of; the split lies exactly on the border.
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
    cv = _Canvas(rng, w, h)
    queried = PATTERNS[int(rng.integers(0, len(PATTERNS)))]
    count = int(rng.integers(1, 4))
    others = [p for p in PATTERNS if p != queried]
    kinds = [others[int(rng.integers(0, len(others)))] for _ in range(count)]
    if answer == "yes":
        kinds[int(rng.integers(0, count))] = queried
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
    meta = {"boxes": boxes, "kinds": kinds, "queried": queried}
    return cv.finish(rng, o.noise_std), template, {"thing": _PATTERN_PHRASE[queried]}, meta


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
            "counting", "1-4 small crosses of 3 or 5 px; how many",
            {"count": ("1", "2", "3", "4")},
            {"count": ("How many crosses are there?", "How many small crosses are in the image?")},
            _counting,
        ),
        Family(
            "quadrant", "four small squares, one patterned; which quadrant holds it",
            {"quadrant": _QUADRANTS},
            {"quadrant": ("Which quadrant holds the patterned square?", "Where is the patterned square?")},
            _quadrant,
        ),
        Family(
            "tile_border", "a bar split on a tile border into two patterned halves; are they the same",
            {"same": ("yes", "no")},
            {"same": ("Are the two halves of the bar the same pattern?", "Do both halves of the bar have the same pattern?")},
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
            "existence", "1-3 small squares (plain or patterned); is there one of the asked pattern (POPE-style yes/no)",
            {"exists": ("yes", "no")},
            {"exists": ("Is there {thing} in the image?", "Does the image contain {thing}?")},
            _existence,
            fills={"thing": tuple(_PATTERN_PHRASE.values())},
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


def lowres_view(image: Image.Image | np.ndarray, tile_size: int = DEFAULT_TILE_SIZE) -> np.ndarray:
    """LLaVA-1.5's single view as uint8 ``[S x S x 3]``: pad to square with the mean colour, resize to S."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, "RGB")
    sq = ops.expand_to_square(image, ops.mean_fill(CLIP_MEAN))
    return np.asarray(ops.resize(sq, (tile_size, tile_size)))


def _lowres_map(size: Sequence[int], tile_size: int) -> tuple[float, float, float]:
    """(offset x, offset y, scale) taking full-resolution pixels to the low-resolution view."""
    w, h = size
    side = max(w, h)
    return (side - w) // 2, (side - h) // 2, tile_size / side


# ----------------------------------------------------------------------------------------- measures
def _grey(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).mean(-1)


def _crop(a: np.ndarray, x0: int, y0: int, k: int) -> np.ndarray:
    h, w = a.shape[:2]
    x0, y0 = min(max(x0, 0), w - k), min(max(y0, 0), h - k)
    return a[y0:y0 + k, x0:x0 + k]


def _features(crop: np.ndarray) -> np.ndarray:
    """Pixels (mean removed) and the magnitude of their 2-D spectrum (phase-free, catches any energy)."""
    c = crop - crop.mean()
    return np.concatenate([c.ravel(), np.abs(np.fft.fft2(c)).ravel()])


def _ridge_fit(x: np.ndarray, y1: np.ndarray, lam: float) -> np.ndarray:
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    if xb.shape[1] <= xb.shape[0]:
        return np.linalg.solve(xb.T @ xb + lam * np.eye(xb.shape[1]), xb.T @ y1)
    return xb.T @ np.linalg.solve(xb @ xb.T + lam * np.eye(len(xb)), y1)  # dual form: more features than samples


def _ridge_predict(x: np.ndarray, wts: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], 1) @ wts


def _classify(xtr, ytr, xte, yte) -> dict[str, float]:
    """Held-out accuracy of a nearest-centroid and a ridge (one-vs-rest least squares) classifier.

    Features are standardised with the fitting set's statistics; the ridge penalty is chosen on a
    quarter of the fitting set, then the model is refitted on all of it.
    """
    xtr, xte = np.asarray(xtr, np.float64), np.asarray(xte, np.float64)
    ytr, yte = np.asarray(ytr), np.asarray(yte)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    classes = np.unique(ytr)
    cent = np.stack([xtr[ytr == c].mean(0) for c in classes])
    d = ((xte[:, None, :] - cent[None]) ** 2).sum(-1)
    nc = float((classes[d.argmin(1)] == yte).mean())
    y1 = (ytr[:, None] == classes[None]).astype(np.float64) * 2 - 1
    n_val = len(xtr) // 4
    best_lam, best_acc = 1.0, -1.0
    for lam in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0):
        lam = lam * xtr.shape[1] / 100
        wts = _ridge_fit(xtr[n_val:], y1[n_val:], lam)
        acc = float((classes[_ridge_predict(xtr[:n_val], wts).argmax(1)] == ytr[:n_val]).mean())
        if acc > best_acc:
            best_lam, best_acc = lam, acc
    wts = _ridge_fit(xtr, y1, best_lam)
    ridge = float((classes[_ridge_predict(xte, wts).argmax(1)] == yte).mean())
    return {"nearest_centroid_acc": round(nc, 4), "ridge_acc": round(ridge, 4)}


def _chance_bound(chance: float, n: int, z: float = 3.5) -> float:
    return chance + z * math.sqrt(chance * (1 - chance) / max(n, 1))


def lowres_separability(n_samples: int = 300, *, n_paired: int | None = None, seed: int = 0,
                        tile_size: int = DEFAULT_TILE_SIZE, size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                        min_long_side: int | None = None, stripe: int = 1) -> dict:
    """Measure that the fine_detail classes are identical after the low-resolution path.

    1. *Paired*: ``n_paired`` scenes are each drawn once per class with the same seed (same
       background, noise, square and distractors; only the pattern differs). Reported: the largest
       per-pixel difference between classes anywhere in the low-resolution view (0 = identical)
       and the mean difference within the square's footprint, against the std of the background
       noise in the same view (noisy minus noise-free rendering); the same at full resolution.
    2. *Classifiers*: ``n_samples`` independent scenes (classes balanced), 2/3 to fit, 1/3 held
       out; nearest-centroid and ridge classifiers on pixels + spectrum magnitudes of a crop at the
       square — 8×8 in the low-resolution view, 12×12 at full resolution, and 12×12 of the
       LLaVA-NeXT anyres canvas (candidates up to 3×3 tiles) the high-resolution methods cut.

    ``stripe`` > 1 draws wider stripes: a positive control that the measurement can fail.
    """
    min_long = _min_long(min_long_side, tile_size)
    size_range = _check_size_range(size_range, min_long)
    n_paired = max(4, n_samples // 5) if n_paired is None else int(n_paired)
    fam = FAMILIES["fine_detail"]
    opts, clean = _Opts(stripe=stripe, tile_size=tile_size), _Opts(noise_std=0.0, stripe=stripe, tile_size=tile_size)
    anyres = _border_specs(tile_size)["anyres_3x3"]

    def scene(tag: int, i: int, label: str, o: _Opts) -> Sample:
        rng = np.random.default_rng([seed, _TAG_SEPARABILITY, tag, i])
        return fam.render(rng, _sample_size(rng, size_range, min_long), "pattern", label, o)

    low_max, low_fp, low_noise, full_fp, full_noise, full_max, outside = 0, [], [], [], [], 0, 0
    low_changed = []
    for i in range(n_paired):
        samples = [scene(0, i, c, opts) for c in PATTERNS]
        noiseless = scene(0, i, PATTERNS[0], clean)
        x0, y0, x1, y1 = samples[0].meta["box"]
        ox, oy, sc = _lowres_map(samples[0].size, tile_size)
        lows = [lowres_view(s.image, tile_size).astype(np.int16) for s in samples]
        fulls = [s.image.astype(np.int16) for s in samples]
        lx0, ly0 = max(int((x0 + ox) * sc) - 2, 0), max(int((y0 + oy) * sc) - 2, 0)
        lx1, ly1 = int(math.ceil((x1 + ox) * sc)) + 2, int(math.ceil((y1 + oy) * sc)) + 2
        for a in range(len(PATTERNS)):
            for b in range(a + 1, len(PATTERNS)):
                dl = np.abs(lows[a] - lows[b])
                low_max = max(low_max, int(dl.max()))
                low_changed.append(float((dl > 0).mean()))
                low_fp.append(float(dl[ly0:ly1, lx0:lx1].mean()))
                df = np.abs(fulls[a] - fulls[b])
                full_max = max(full_max, int(df.max()))
                full_fp.append(float(df[y0:y1, x0:x1].mean()))
                df[y0:y1, x0:x1] = 0
                outside = max(outside, int(df.max()))
        low_noise.append(float((lows[0] - lowres_view(noiseless.image, tile_size).astype(np.int16)).std()))
        full_noise.append(float((fulls[0] - noiseless.image.astype(np.int16)).std()))

    feats: dict[str, list] = {"lowres": [], "fullres": [], "anyres": []}
    labels = []
    for i in range(n_samples):
        label = PATTERNS[i % len(PATTERNS)]
        s = scene(1, i, label, opts)
        x0, y0, x1, y1 = s.meta["box"]
        ox, oy, sc = _lowres_map(s.size, tile_size)
        low = _grey(lowres_view(s.image, tile_size))
        cx, cy = ((x0 + x1) / 2 + ox) * sc, ((y0 + y1) / 2 + oy) * sc
        feats["lowres"].append(_features(_crop(low, int(round(cx - 4)), int(round(cy - 4)), 8)))
        feats["fullres"].append(_features(_grey(s.image[y0:y0 + 12, x0:x0 + 12])))
        rec = anyres.record_for(s.size)
        canvas = np.asarray(ops.resize_and_pad(s.pil(), rec.canvas_size))
        left, top, right, bottom = rec.content_box
        ax, ay = left + x0 * (right - left) / s.size[0], top + y0 * (bottom - top) / s.size[1]
        feats["anyres"].append(_features(_crop(_grey(canvas), int(math.ceil(ax)), int(math.ceil(ay)), 12)))
        labels.append(label)
    n_train = (2 * n_samples) // 3
    chance = 1.0 / len(PATTERNS)
    n_test = n_samples - n_train
    out = {
        "family": "fine_detail", "classes": list(PATTERNS), "tile_size": tile_size, "stripe": stripe,
        "n_paired": n_paired, "n_train": n_train, "n_test": n_test, "chance": chance,
        "chance_bound": round(_chance_bound(chance, n_test), 4),
        "fullres_diff_outside_square": outside,
    }
    for view in feats:
        out[view] = _classify(feats[view][:n_train], labels[:n_train], feats[view][n_train:], labels[n_train:])
    out["lowres"].update({
        "max_abs_diff_between_classes": low_max,
        "mean_abs_diff_in_square": round(float(np.mean(low_fp)), 4),
        "fraction_of_pixels_differing": round(float(np.mean(low_changed)), 6),
        "noise_std": round(float(np.mean(low_noise)), 4),
    })
    out["fullres"].update({
        "max_abs_diff_between_classes": full_max,
        "mean_abs_diff_in_square": round(float(np.mean(full_fp)), 4),
        "noise_std": round(float(np.mean(full_noise)), 4),
    })
    best_low = max(out["lowres"]["nearest_centroid_acc"], out["lowres"]["ridge_acc"])
    out["indistinguishable_at_lowres"] = bool(
        out["lowres"]["max_abs_diff_between_classes"] <= out["lowres"]["noise_std"]
        and best_low <= out["chance_bound"]
    )
    return out


def _view_features(view: np.ndarray, pool: int) -> np.ndarray:
    """Generic features of a whole S×S view: where it departs from its dominant colour, and colours.

    Two maps average-pooled by ``pool`` — contrast (L1 distance of each pixel to the view's
    median colour) and saturation (max − min channel) — plus the view pooled to 4×4 cells and the
    mean colour weighted by contrast and by squared saturation.
    """
    v = view.astype(np.float32)
    s = v.shape[0]
    contrast = np.abs(v - np.median(v.reshape(-1, 3), 0)).sum(-1)
    saturation = v.max(-1) - v.min(-1)
    k, q = s // pool, s // 4
    maps = [m[:k * pool, :k * pool].reshape(k, pool, k, pool).mean((1, 3)).ravel() for m in (contrast, saturation)]
    coarse = v[:4 * q, :4 * q].reshape(4, q, 4, q, 3).mean((1, 3)).ravel()
    colours = [(wts[..., None] * v).sum((0, 1)) / max(float(wts.sum()), 1e-6) for wts in (contrast, saturation ** 2)]
    return np.concatenate([*maps, coarse, *colours])


def lowres_probe(family: str, n_samples: int = 300, *, seed: int = 0, tile_size: int = DEFAULT_TILE_SIZE,
                 size_range: Sequence[int] = DEFAULT_SIZE_RANGE, min_long_side: int | None = None,
                 pool: int = 8) -> dict[str, dict]:
    """How well the answers of one family can be read off the *whole* low-resolution view.

    Draws ``n_samples`` balanced items, takes LLaVA-1.5's S×S view, computes the generic
    :func:`_view_features` and fits nearest-centroid and ridge classifiers (2/3 fit, 1/3 held
    out) per question type. Returns ``{qtype: {accuracies, chance, chance_bound, n_test}}``.
    A weak probe: accuracy above chance proves the answer is in the view; at chance it only
    says these features do not find it (:func:`lowres_separability` is the proof for patterns).
    """
    fam = FAMILIES[_check_families([family])[0]]
    min_long = _min_long(min_long_side, tile_size)
    size_range = _check_size_range(size_range, min_long)
    opts = _Opts(tile_size=tile_size)
    rng = np.random.default_rng([seed, _TAG_PROBE, _family_code(family)])
    plan = fam.schedule(n_samples, rng)
    by_q: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i, (qtype, answer) in enumerate(plan):
        r = np.random.default_rng([seed, _TAG_PROBE, _family_code(family), i])
        s = fam.render(r, _sample_size(r, size_range, min_long), qtype, answer, opts)
        by_q[qtype][0].append(_view_features(lowres_view(s.image, tile_size), pool))
        by_q[qtype][1].append(answer)
    out = {}
    for qtype, (x, y) in by_q.items():
        n_train = (2 * len(x)) // 3
        res = _classify(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
        chance = 1.0 / len(fam.answers[qtype])
        res.update({"chance": chance, "chance_bound": round(_chance_bound(chance, len(x) - n_train), 4),
                    "n_test": len(x) - n_train})
        out[qtype] = res
    return out


# ----------------------------------------------------------------------------------------- scoring
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lower-case, hyphens/underscores to spaces, punctuation and articles dropped, number words to digits."""
    t = str(text).strip().lower().replace("-", " ").replace("_", " ")
    t = re.sub(r"[^\w\s]", " ", t)
    words = [_NUMBER_WORDS.get(w, w) for w in t.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def _pope_yes(text: str) -> bool:
    """POPE's rule: an answer is "no" when it contains the word no or not, otherwise "yes"."""
    words = re.findall(r"[a-z]+", str(text).lower())
    return not ("no" in words or "not" in words)


def _answer_of(record: Mapping) -> str:
    return record["conversations"][-1]["value"]


def score_predictions(records: Sequence[Mapping], predictions: Mapping[str, str] | Sequence[str]) -> dict:
    """Exact-match accuracy per family (and per question type) after :func:`normalize_answer`.

    ``predictions`` maps record id → text, or is a list aligned with ``records``; a missing
    prediction counts as wrong. Families whose answers are all yes/no also get POPE's metrics:
    accuracy, precision, recall, F1 (of "yes") and yes-ratio, the fraction of *predicted* yes.
    """
    if isinstance(predictions, Mapping):
        preds = [predictions.get(r["id"]) for r in records]
    else:
        preds = list(predictions)
        if len(preds) != len(records):
            raise ValueError(f"{len(preds)} predictions for {len(records)} records; give a list of the "
                             "same length or a dict id -> prediction")
    fam_hits: dict[str, list[bool]] = defaultdict(list)
    q_hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    golds: dict[str, list[str]] = defaultdict(list)
    fam_preds: dict[str, list] = defaultdict(list)
    missing = 0
    for rec, pred in zip(records, preds):
        fam = rec.get("family", "unknown")
        gold = normalize_answer(_answer_of(rec))
        if pred is None:
            missing += 1
        hit = pred is not None and normalize_answer(pred) == gold
        fam_hits[fam].append(hit)
        q_hits[(fam, rec.get("qtype", ""))].append(hit)
        golds[fam].append(gold)
        fam_preds[fam].append(pred)
    families: dict[str, dict] = {}
    for fam, hits in fam_hits.items():
        entry = {"accuracy": float(np.mean(hits)), "correct": int(sum(hits)), "n": len(hits),
                 "chance": FAMILIES[fam].chance if fam in FAMILIES else None}
        by_q = {q: float(np.mean(h)) for (f, q), h in q_hits.items() if f == fam and q}
        if len(by_q) > 1:
            entry["by_qtype"] = by_q
        families[fam] = entry
    pope = {}
    for fam, gold in golds.items():
        if not set(gold) <= {"yes", "no"}:
            continue
        g = np.array([x == "yes" for x in gold])
        p = np.array([pr is not None and _pope_yes(pr) for pr in fam_preds[fam]])
        tp, fp = int((g & p).sum()), int((~g & p).sum())
        fn, tn = int((g & ~p).sum()), int((~g & ~p).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        pope[fam] = {"accuracy": (tp + tn) / len(g), "precision": precision, "recall": recall, "f1": f1,
                     "yes_ratio": float(p.mean()), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    all_hits = [h for hits in fam_hits.values() for h in hits]
    return {
        "overall": {"accuracy": float(np.mean(all_hits)) if all_hits else 0.0, "correct": int(sum(all_hits)),
                    "n": len(all_hits), "missing": missing},
        "mean_family_accuracy": float(np.mean([f["accuracy"] for f in families.values()])) if families else 0.0,
        "families": families,
        "pope": pope,
    }


# --------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class BenchmarkInfo:
    """Where a generated benchmark lies and what ``benchmark.json`` says about it."""

    out_dir: Path
    meta: dict
    regenerated: bool

    @property
    def train_json(self) -> Path:
        return self.out_dir / "train.json"

    @property
    def test_json(self) -> Path:
        return self.out_dir / "test.json"

    @property
    def families(self) -> list[str]:
        return list(self.meta["params"]["families"])

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.meta["counts"]


def read_records(path: str | os.PathLike) -> list[dict]:
    """A split file (``train.json`` / ``test.json``) as a list of records."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def _image_path(split: str, family: str, index: int) -> str:
    return f"images/{split}/{family}/{family}-{split}-{index:05d}.png"


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _image_hash(img: np.ndarray) -> str:
    h = hashlib.sha1(f"{img.shape}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


# (out_dir, seed, split, family, index, attempt, qtype, answer, size_range, min_long, tile_size)
_Task = tuple


def _make_item(task: _Task) -> dict:
    out_dir, seed, split, family, index, attempt, qtype, answer, size_range, min_long, tile_size = task
    fam = FAMILIES[family]
    s = _draw_item(fam, seed, split, index, attempt, qtype, answer, size_range, min_long, _Opts(tile_size=tile_size))
    rid = f"{family}-{split}-{index:05d}"
    rel = _image_path(split, family, index)
    fsio.atomic_write(Path(out_dir) / rel, _png_bytes(s.image), durable=False)  # redrawn if lost
    record = {
        "id": rid,
        "image": rel,
        "conversations": [
            {"from": "human", "value": "<image>\n" + s.question},
            {"from": "gpt", "value": s.answer},
        ],
        "family": family,
        "qtype": qtype,
    }
    return {"record": record, "hash": _image_hash(s.image), "size": list(s.size)}


def _run(tasks: list[_Task], num_workers: int) -> list[dict]:
    if num_workers <= 1 or len(tasks) < 16:
        return [_make_item(t) for t in tasks]
    methods = multiprocessing.get_all_start_methods()
    # fork: workers need no re-import (torch is slow to import); they only use numpy and Pillow.
    ctx = multiprocessing.get_context("fork") if "fork" in methods else None
    chunk = max(1, min(64, len(tasks) // (4 * num_workers)))
    with cf.ProcessPoolExecutor(num_workers, mp_context=ctx) as ex:
        return list(ex.map(_make_item, tasks, chunksize=chunk))


def _size_summary(sizes: list[list[int]]) -> dict:
    if not sizes:
        return {}
    arr = np.asarray(sizes)
    aspects = Counter()
    for w, h in sizes:
        best = min(ASPECTS, key=lambda ab: abs(math.log((w / h) / (ab[0] / ab[1]))))
        aspects[f"{best[0]}:{best[1]}"] += 1
    return {
        "width": [int(arr[:, 0].min()), int(arr[:, 0].max())],
        "height": [int(arr[:, 1].min()), int(arr[:, 1].max())],
        "long_side": [int(arr.max(1).min()), int(arr.max(1).max())],
        "aspects": dict(sorted(aspects.items())),
    }


def _is_complete(out_dir: Path, meta: dict) -> bool:
    try:
        for split in SPLITS:
            recs = read_records(out_dir / f"{split}.json")
            if len(recs) != sum(meta["counts"][split].values()):
                return False
            if not all((out_dir / r["image"]).is_file() for r in recs):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def generate_benchmark(out_dir: str | os.PathLike, *, train_per_family: int, test_per_family: int, seed: int = 0,
                       families: Iterable[str] | None = None, size_range: Sequence[int] = DEFAULT_SIZE_RANGE,
                       min_long_side: int | None = None, tile_size: int = DEFAULT_TILE_SIZE,
                       num_workers: int | None = None, separability_samples: int = 300,
                       force: bool = False) -> BenchmarkInfo:
    """Draw the benchmark into ``out_dir`` (skipped when ``benchmark.json`` matches the request).

    Writes ``images/{train,test}/<family>/<id>.png``, ``train.json`` and ``test.json`` (LLaVA
    conversation JSON plus ``family`` and ``qtype``; image paths relative to ``out_dir``) and last
    ``benchmark.json`` (parameters, counts, sizes, answers, chance levels, version and the
    :func:`lowres_separability` measurement). ``min_long_side`` (default 2·``tile_size``) keeps
    the low-resolution path a reduction by at least 2, where the fine patterns vanish exactly.
    Every file is written to a temporary name and renamed, so an interrupted run leaves no torn
    file and no ``benchmark.json``. The folder is the generator's own (``fsio.OwnedFolder``): a
    folder holding files it did not write is refused, and of an earlier, larger request only the
    images it wrote itself are removed.
    The output does not depend on ``num_workers``.
    """
    for name, n in (("train_per_family", train_per_family), ("test_per_family", test_per_family)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    if tile_size < 14:
        raise ValueError(f"tile_size must be at least 14, got {tile_size}")
    names = _check_families(families)
    min_long = _min_long(min_long_side, tile_size)
    size_range = _check_size_range(size_range, min_long)
    seed = int(seed)
    out_dir = Path(out_dir)
    params = {
        "version": VERSION, "seed": seed, "families": names, "train_per_family": int(train_per_family),
        "test_per_family": int(test_per_family), "size_range": list(size_range), "min_long_side": min_long,
        "tile_size": int(tile_size), "separability_samples": int(separability_samples),
    }
    meta_path = out_dir / "benchmark.json"
    folder = fsio.OwnedFolder(out_dir, OWNER, adopt=_files_of_an_earlier_version)
    folder.claim()  # refuses a folder holding files the generator did not write
    if not force and meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if isinstance(old, dict) and old.get("params") == params and _is_complete(out_dir, old):
            return BenchmarkInfo(out_dir, old, regenerated=False)
    if meta_path.exists():
        meta_path.unlink()  # the directory is about to change: never leave a stale description
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    folder.record(JSON_FILES + tuple(_image_path(split, fam, i) for split, n in
                                     (("train", train_per_family), ("test", test_per_family))
                                     for fam in names for i in range(n)))

    counts = {"train": int(train_per_family), "test": int(test_per_family)}
    results: dict[str, list[dict]] = {}
    seen: set[tuple[str, str]] = set()
    for split in SPLITS:
        tasks = []
        for fam in names:
            (out_dir / "images" / split / fam).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, _TAG_SCHEDULE, _SPLIT_CODE[split], _family_code(fam)])
            for i, (qtype, answer) in enumerate(FAMILIES[fam].schedule(counts[split], rng)):
                tasks.append((str(out_dir), seed, split, fam, i, 0, qtype, answer, size_range, min_long, tile_size))
        items = _run(tasks, num_workers)
        if split == "test":  # an item the training split already holds is drawn again
            for k, (task, item) in enumerate(zip(tasks, items)):
                attempt = 0
                while (item["hash"], item["record"]["conversations"][0]["value"]) in seen:
                    attempt += 1
                    if attempt > 20:
                        raise RuntimeError(f"cannot draw a test item unlike the training set: {task[3]} #{task[4]}")
                    item = _make_item(task[:5] + (attempt,) + task[6:])
                items[k] = item
        seen |= {(it["hash"], it["record"]["conversations"][0]["value"]) for it in items}
        results[split] = items

    train_pairs = {(it["hash"], it["record"]["conversations"][0]["value"]) for it in results["train"]}
    test_pairs = {(it["hash"], it["record"]["conversations"][0]["value"]) for it in results["test"]}
    assert not train_pairs & test_pairs

    for split in SPLITS:
        fsio.atomic_write(out_dir / f"{split}.json", _json_bytes([it["record"] for it in results[split]]))
    keep = {it["record"]["image"] for split in SPLITS for it in results[split]}
    folder.prune(keep | set(JSON_FILES))  # images of an earlier, larger request; never a file of anyone else

    fams = {fam: FAMILIES[fam] for fam in names}
    meta = {
        "version": VERSION,
        "params": params,
        "counts": {split: {fam: counts[split] for fam in names} for split in SPLITS},
        "sizes": {split: _size_summary([it["size"] for it in results[split]]) for split in SPLITS},
        "families": {
            fam: {"description": f.description, "answers": {q: list(a) for q, a in f.answers.items()},
                  "chance": f.chance}
            for fam, f in fams.items()
        },
        "answer_counts": {
            split: {fam: dict(sorted(Counter(_answer_of(it["record"]) for it in results[split]
                                             if it["record"]["family"] == fam).items())) for fam in names}
            for split in SPLITS
        },
        "train_test_overlap": len(train_pairs & test_pairs),
        "separability": (lowres_separability(separability_samples, seed=seed, tile_size=tile_size,
                                             size_range=size_range, min_long_side=min_long)
                         if separability_samples > 0 else None),
        "files": {"train": "train.json", "test": "test.json", "images": "images"},
    }
    fsio.atomic_write(meta_path, _json_bytes(meta))
    return BenchmarkInfo(out_dir, meta, regenerated=True)


def _files_of_an_earlier_version(out_dir: Path) -> set[str] | None:
    """The files a generator older than the ownership marker wrote into ``out_dir`` (or ``None``):
    its three JSON files and the images they name."""
    try:
        meta = json.loads((out_dir / "benchmark.json").read_text(encoding="utf-8"))
        if not (isinstance(meta, dict) and "params" in meta and "version" in meta):
            return None
        images = {r["image"] for split in SPLITS for r in read_records(out_dir / f"{split}.json")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return set(JSON_FILES) | images
