"""Low-resolution probes: what one low-resolution view keeps (separability of the classes, per-family probes)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from PIL import Image

from hires_vlm.imaging import ops
from hires_vlm.imaging.processor import CLIP_MEAN

from .drawing import _TAG_PROBE, _TAG_SEPARABILITY, DEFAULT_SIZE_RANGE, DEFAULT_TILE_SIZE, PATTERNS
from .families import (
    FAMILIES,
    Sample,
    _border_specs,
    _check_families,
    _check_size_range,
    _family_code,
    _min_long,
    _Opts,
    _sample_size,
)


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
