"""The demo's outputs: the table (text, markdown, CSV), the accuracy-against-tokens figure, the gallery."""

from __future__ import annotations

import json
import os

from .suites import FAMILY_ORDER, FAMILY_SHORT, Row


# ---------------------------------------------------------------------------------------- output
def _atomic_write(path: str, text: str) -> None:
    from .. import fsio

    fsio.atomic_write(path, text)


def _atomic_json(path: str, obj) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False))


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def wilson_half_width(p: float, n: int) -> float:
    """Half the width of the 95 % Wilson interval of a proportion ``p`` of ``n`` (in points of %)."""
    if n <= 0:
        return float("nan")
    z = 1.96
    return 100.0 * z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)


def _with_interval(value: float | None, sd: float | None, n: int | None) -> str:
    """``value ±sd`` (several seeds), else ``value ±half-width`` of the 95 % interval on ``n`` items."""
    if value is None:
        return "-"
    if sd is not None:
        return f"{value:.1f} ±{sd:.1f}"
    if n:
        return f"{value:.1f} ±{wilson_half_width(value / 100.0, n):.0f}"
    return _fmt(value)


def _cell(r: Row, fam: str) -> str:
    value = r.existence_f1 if fam == "existence" else r.accuracy.get(fam)
    n = None if fam == "existence" else r.extra.get("n", {}).get(fam)  # an F1 has no binomial interval
    return _with_interval(value, r.extra.get("sd", {}).get(fam), n)


def table_rows(rows: list[Row], chance: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "visual tokens/img"] + [FAMILY_SHORT[f] for f in FAMILY_ORDER] + \
             ["overall", "empty/OOV %", "train s", "infer img/s"]
    out = []
    for r in rows:
        fams = [_cell(r, f) for f in FAMILY_ORDER]
        overall = _with_interval(r.overall, r.extra.get("sd", {}).get("overall"), r.extra.get("n", {}).get("overall"))
        out.append([r.name, _fmt(r.visual_tokens, 0)] + fams + [overall, _fmt(r.extra.get("no_answer")),
                                                                 _fmt(r.train_seconds, 0), _fmt(r.images_per_second, 1)])
    out.append(["(chance)", ""] + [_fmt(chance.get(f)) for f in FAMILY_ORDER] + ["", "", "", ""])
    return header, out


def format_table(header: list[str], body: list[list[str]], left: bool = False) -> str:
    """Aligned text: the first column (``left``: every column) left-justified, the numbers right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 or left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def save_accuracy_figure(rows: list[Row], chance: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], None, "overall accuracy (%)"), (axes[1], "fine_detail", "fine-detail accuracy (%)")):
        for r in rows:
            y = r.overall if key is None else r.accuracy.get(key, float("nan"))
            sd = r.extra.get("sd", {}).get("overall" if key is None else key)
            if sd is not None:  # several seeds: ± one standard deviation
                ax.errorbar(r.visual_tokens, y, yerr=sd, fmt="none", ecolor="grey", capsize=3, lw=1)
            ax.scatter(r.visual_tokens, y, s=40)
            ax.annotate(r.name, (r.visual_tokens, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if key is not None and key in chance:
            ax.axhline(chance[key], color="grey", ls="--", lw=1, label="chance")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens per image (mean, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def save_gallery(records: list[dict], data_dir: str, answers: dict[str, dict[str, str]], router: dict,
                 path: str) -> None:
    """One test image per family; every model's answer; SliME's kept local tokens overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    n = len(records)
    fig, axes = plt.subplots(n, 2, figsize=(9, 2.6 * n), gridspec_kw={"width_ratios": [1, 1.3]})
    axes = np.atleast_2d(axes)
    for row, rec in enumerate(records):
        img = Image.open(os.path.join(data_dir, rec["image"])).convert("RGB")
        ax = axes[row, 0]
        ax.imshow(np.asarray(img))
        ax.set_title(rec.get("family", ""), fontsize=9)
        ax.axis("off")
        info = router.get(rec["id"])
        if info:
            r = info["record"]
            left, top, right, bottom = r["content_box"]
            rows_q, cols_q = info["grid"]
            cell_w = r["canvas_size"][0] / cols_q
            cell_h = r["canvas_size"][1] / rows_q
            sx = img.size[0] / max(right - left, 1)
            sy = img.size[1] / max(bottom - top, 1)
            kept = set(info["keep"])
            for k in range(rows_q * cols_q):
                if k in kept:
                    continue
                i, j = divmod(k, cols_q)
                x0, y0 = (j * cell_w - left) * sx, (i * cell_h - top) * sy
                ax.add_patch(Rectangle((x0, y0), cell_w * sx, cell_h * sy, color="black", alpha=0.45, lw=0))
            ax.set_title(f"{rec.get('family', '')} — slime keeps {len(kept)}/{rows_q * cols_q} local tokens "
                         "(dark: dropped)", fontsize=8)
        text = ax2 = axes[row, 1]
        ax2.axis("off")
        q = rec["conversations"][0]["value"].replace("<image>", "").strip()
        gold = rec["conversations"][1]["value"]
        lines = [f"Q: {q}", f"answer: {gold}", ""]
        for model_name, preds in answers.items():
            a = preds.get(rec["id"], "")
            mark = "✓" if a.strip().lower() == gold.strip().lower() else "✗"
            lines.append(f"{mark} {model_name}: {a!r}")
        text.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
