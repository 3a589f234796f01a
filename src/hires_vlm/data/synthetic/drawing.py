"""Drawing: the constants of the benchmark's visual world, pattern fields, the canvas, clutter."""

from __future__ import annotations

import math

import numpy as np

VERSION = "hires-synth-4"  # 2: records carry a caption; captions.json (stage-1 alignment data). 3: counting
# counts squares, tile_border asks the bar's pattern, existence asks for any patterned square. 4: counting's
# squares are larger (12-16 % of the short side) and have no distractors
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
JSON_FILES = ("train.json", "test.json", "captions.json", "benchmark.json")
OWNER = "the synthetic benchmark generator (hires_vlm.data.synthetic)"

NOISE_STD = 10.0  # grey-level std of the background noise (full resolution)
_NOISE_STEP = 4  # noise is quantised to multiples of this: keeps the PNGs ~30 % smaller
_AMPLITUDE = (40, 56)  # pattern amplitude range: pixels are base ± A·envelope
_PNG_LEVEL = 1
_TAG_ITEM, _TAG_SCHEDULE, _TAG_SEPARABILITY, _TAG_PROBE = 1, 2, 3, 4
_SPLIT_CODE = {"train": 0, "test": 1, "foundation": 2}  # foundation: the tiny foundation's own stream

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
