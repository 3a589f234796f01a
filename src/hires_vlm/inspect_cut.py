"""``hires-vlm inspect``: how a method cuts an image and how many visual tokens it gets.

Pure geometry (no model) unless routing is asked for: the grid, the views, and the upper bound of
visual tokens. The tower geometry defaults to CLIP-L/14-336 (S = 336, 24×24 tokens per view); a
saved model directory gives its own geometry and method.

With ``route`` the image and a prompt go through a model in eval mode and the visual tokens that
remain after SliME's text-guided router are counted (``visual_tokens_after_routing``): a saved
model, or else a small random one at the requested tower geometry with narrow widths (the count
depends on its random weights, so it illustrates; the upper bound is exact).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from .imaging import CLIP_MEAN, CLIP_STD, CutRecord, ImagingSpec
from .methods import MethodConfig, resolve_method_config


@dataclass
class Geometry:
    tile_size: int = 336
    patch_size: int = 14
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    resampler: str = "pillow"  # a saved model's image_resampler: the pixels of the views shown

    @property
    def grid(self) -> int:
        return self.tile_size // self.patch_size


def load_method_spec(method: str | None, config_file: str | None):
    """The method from ``--method`` (preset), a method YAML/JSON, or a training config's ``model.method``."""
    if config_file:
        import yaml

        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file not found: {config_file!r}")
        with open(config_file) as f:
            raw = yaml.safe_load(f)
        if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
            raw = raw["model"].get("method", raw)
        if isinstance(raw, dict) and "method" in raw and not ({"name", "preset"} & set(raw)):
            raw = raw["method"]
        if method and isinstance(raw, dict):
            raw = {**raw}
            if "name" not in raw and "preset" not in raw:
                raw["preset"] = method
        return resolve_method_config(raw)
    return resolve_method_config(method or "llava_hd")


def describe(image_size: tuple[int, int], cfg: MethodConfig, geo: Geometry) -> tuple[dict, CutRecord, ImagingSpec]:
    spec = dataclasses.replace(cfg.imaging_spec(geo.tile_size, geo.mean, geo.std), resampler=geo.resampler)
    rec = spec.record_for(image_size)
    kinds: dict[str, int] = {}
    for k in rec.views:
        kinds[k] = kinds.get(k, 0) + 1
    info = {
        "method": cfg.name,
        "image_size": list(rec.image_size),
        "tile_size": geo.tile_size,
        "patch_size": geo.patch_size,
        "image_resampler": spec.resampler.value,
        "grid": list(rec.grid),
        "canvas_size": list(rec.canvas_size),
        "content_box": list(rec.content_box),
        "num_views": rec.num_views,
        "views": kinds,
        "view_order": list(rec.views),
        "visual_tokens": cfg.max_visual_tokens(rec, geo.grid),
        "method_config": cfg.to_dict(),
    }
    if rec.is_native:  # one view at its own size; pixel_values holds one row per patch
        info.update(num_views=1, tile_size=spec.patch_size * spec.merge_size, patch_size=spec.patch_size,
                    pixel_value_rows=rec.num_views)
    layout = cfg.token_layout(rec, geo.grid)
    if layout:
        info["token_layout"] = layout
    return info, rec, spec


def format_text(info: dict) -> str:
    if info.get("views") == {"native": 1}:  # native resolution (qwen2vl): no tiles, one patch grid
        lay = info["token_layout"]
        lines = [
            f"method         {info['method']}",
            f"image          {info['image_size'][0]} x {info['image_size'][1]} (width x height)",
            f"resized        {lay['resized_size'][0]} x {lay['resized_size'][1]} (native resolution, no tiles)",
            f"patches        {lay['patch_grid'][0]} columns x {lay['patch_grid'][1]} rows (grid_thw {lay['grid_thw']})",
            f"visual tokens  {info['visual_tokens']} ({lay['token_grid'][0]} x {lay['token_grid'][1]} after the "
            f"{lay['merge_size']}x{lay['merge_size']} merge)",
        ]
        return "\n".join(lines)
    lines = [
        f"method         {info['method']}",
        f"image          {info['image_size'][0]} x {info['image_size'][1]} (width x height)",
        f"tile size      {info['tile_size']} px, {info['tile_size'] // info['patch_size']}x"
        f"{info['tile_size'] // info['patch_size']} tokens per view",
        f"grid           {info['grid'][0]} columns x {info['grid'][1]} rows"
        + (f" (canvas {info['canvas_size'][0]} x {info['canvas_size'][1]})" if info['grid'][0] else " (no tiles)"),
        f"views          {info['num_views']}: " + ", ".join(f"{n} {k}" for k, n in info["views"].items()),
        f"visual tokens  {info['visual_tokens']}" + (" (upper bound before routing)" if "visual_tokens_after_routing" in info
                                                     or info["method"] == "slime" else ""),
    ]
    if "token_layout" in info:
        lines.append("token layout   " + ", ".join(f"{k} {v}" for k, v in info["token_layout"].items()))
    if "visual_tokens_after_routing" in info:
        gamma = info.get("router_gamma")
        lines.append(f"after routing  {info['visual_tokens_after_routing']}"
                     + (f" (γ = {gamma})" if gamma is not None else " (this method has no router)"))
    if "visual_tokens_after_reduction" in info:
        red = info["token_reduction"]
        if "visionzip_visual_tokens" in info:
            lines.append(f"VisionZip      {info['visionzip_visual_tokens']} (keep {red['visionzip_keep']} per view)")
        if "fastv_visual_tokens" in info:
            lines.append(f"FastV          {info['fastv_visual_tokens']} kept from LM layer {red['fastv_layer']} on "
                         f"(keep {red['fastv_keep']}; which ones depends on the prompt)")
    return "\n".join(lines)


def save_figure(image, rec: CutRecord, spec: ImagingSpec, info: dict, path: str, router: dict | None = None) -> None:
    """The image with the tile grid drawn on the canvas, and every view as a thumbnail.

    ``router`` (SliME): ``{"local_grid": [rows, cols], "kept": [positions]}`` — the local-token raster
    over the tiles and the positions the router kept; the dropped ones are shaded on the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.patches import Rectangle

    from .imaging import HiResImageProcessor

    if spec.is_native:
        raise ValueError("--save-figure draws tiles and S×S views; a native-resolution method (qwen2vl) has none: "
                         "its resized size and patch grid are in --json's token_layout")
    views, _ = HiResImageProcessor(spec).preprocess_one(image)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    thumbs = [(v * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() for v in views]
    n = len(thumbs)
    cols = min(n, 8)
    rows_t = (n + cols - 1) // cols
    fig = plt.figure(figsize=(2.0 * max(cols, 3), 3.2 + 2.0 * rows_t))
    gs = fig.add_gridspec(1 + rows_t, cols, height_ratios=[3.2] + [2.0] * rows_t)
    ax = fig.add_subplot(gs[0, :])
    ax.imshow(np.asarray(image.convert("RGB")))
    c, r = rec.grid
    if c:
        left, top, right, bottom = rec.content_box
        sx = image.size[0] / max(right - left, 1)
        sy = image.size[1] / max(bottom - top, 1)
        for j in range(c + 1):
            x = (j * rec.tile_size - left) * sx
            ax.axvline(x, color="yellow", lw=1)
        for i in range(r + 1):
            y = (i * rec.tile_size - top) * sy
            ax.axhline(y, color="yellow", lw=1)
        ax.set_xlim(-left * sx, (rec.canvas_size[0] - left) * sx)
        ax.set_ylim((rec.canvas_size[1] - top) * sy, -top * sy)
    title = f"{info['method']}: grid {c}x{r}, {info['num_views']} views, {info['visual_tokens']} visual tokens"
    if router is not None and c:
        rows_q, cols_q = (int(v) for v in router["local_grid"])
        kept = set(int(k) for k in router["kept"])
        cell_w, cell_h = rec.canvas_size[0] / cols_q, rec.canvas_size[1] / rows_q
        for k in range(rows_q * cols_q):
            if k not in kept:
                i, j = divmod(k, cols_q)
                ax.add_patch(Rectangle(((j * cell_w - left) * sx, (i * cell_h - top) * sy), cell_w * sx, cell_h * sy,
                                       color="black", alpha=0.45, lw=0))
        title += f"\nrouter keeps {len(kept)}/{rows_q * cols_q} local tokens (dark: dropped)"
    ax.set_title(title)
    ax.axis("off")
    for k, (thumb, kind) in enumerate(zip(thumbs, rec.views)):
        a = fig.add_subplot(gs[1 + k // cols, k % cols])
        a.imshow(thumb)
        a.set_title(f"{k}: {kind}", fontsize=8)
        a.axis("off")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


DEFAULT_ROUTE_PROMPT = "Describe the image in detail."


def routing_model(cfg: MethodConfig, geo: Geometry, model_dir: str | None = None, seed: int = 0):
    """(model in eval mode, processor): the saved one, or a small random one at ``geo``."""
    if model_dir:
        from .model import load_model

        return load_model(model_dir, "cpu")
    from .tiny import build_tiny

    if getattr(cfg, "separator_token_id", None) is not None:
        cfg = cfg.replace(separator_token_id=None)  # the random model's tokenizer has its own ','
    model, proc = build_tiny(cfg, seed=seed, tile_size=geo.tile_size, patch_size=geo.patch_size, vision_hidden=32,
                             vision_layers=1, text_hidden=32, text_layers=1, vocab_size=300, max_length=1 << 16)
    return model.eval(), proc


def routed_visual_tokens(image, model, processor, prompt: str = DEFAULT_ROUTE_PROMPT,
                         gamma: float | None = None) -> tuple[int, dict]:
    """Visual tokens the model gives ``image`` with ``prompt`` (eval mode: deterministic routing)."""
    import torch

    if gamma is not None:
        if "gamma" not in getattr(model.connector.cfg, "runtime_fields", ()):
            raise ValueError(f"method {model.connector.cfg.name!r} has no router, so --gamma does not apply")
        model.set_method_runtime(gamma=float(gamma))
        processor = type(processor)(processor.tokenizer, model.config)
    inputs = processor([prompt], [image])
    with torch.no_grad():
        merged = model.merge_inputs(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                    inputs["image_sizes"])
    return int(merged.visual_tokens[0]), merged.visual_aux


def run_inspect(image_path: str | None, method: str | None = None, config_file: str | None = None,
                model_dir: str | None = None, tile_size: int | None = None, patch_size: int | None = None,
                as_json: bool = False, figure: str | None = None, route: bool = False,
                prompt: str | None = None, gamma: float | None = None,
                size: tuple[int, int] | None = None, token_reduction: dict | None = None) -> tuple[str, dict]:
    """Describe the cut of ``image_path`` (or of an image of ``size`` = (width, height), no file needed).

    ``token_reduction`` (e.g. ``{"visionzip_keep": 0.25}``, ``{"fastv_keep": 0.5}``): also report the visual
    tokens after VisionZip (exact, from the geometry) and the count FastV keeps from layer K on."""
    from .imaging import load_image

    if size is not None and (figure or route):
        raise ValueError("--save-figure and --route need the pixels: give an image file instead of --size")
    image = load_image(image_path) if size is None else None
    image_size = tuple(size) if size is not None else image.size
    geo = Geometry()
    if model_dir:
        from .model import HiResVLMConfig, check_model_dir

        mc = HiResVLMConfig.from_pretrained(check_model_dir(model_dir))
        from .vision.native import tower_tile_size

        geo = Geometry(tower_tile_size(mc.vision_config), int(mc.vision_config.patch_size),
                       tuple(mc.image_mean), tuple(mc.image_std), mc.image_resampler)
        cfg = resolve_method_config(mc.method) if not (method or config_file) else load_method_spec(method, config_file)
    else:
        cfg = load_method_spec(method, config_file)
    if tile_size:
        geo.tile_size = tile_size
    if patch_size:
        geo.patch_size = patch_size
    info, rec, spec = describe(image_size, cfg, geo)
    if (prompt is not None or gamma is not None) and not route:
        raise ValueError("--prompt and --gamma only apply with --route")
    if route and model_dir and (method or config_file):
        raise ValueError("with --model, --route runs the saved model's own method; drop --method/--config")
    if route:
        model, proc = routing_model(cfg, geo, model_dir)
        count, aux = routed_visual_tokens(image, model, proc, prompt or DEFAULT_ROUTE_PROMPT, gamma)
        mcfg = model.connector.cfg
        info["visual_tokens_after_routing"] = count
        info["router_gamma"] = getattr(mcfg, "gamma", None)
        info["route_prompt"] = prompt or DEFAULT_ROUTE_PROMPT
        info["route_model"] = model_dir or (f"random (S={geo.tile_size}, patch {geo.patch_size}, narrow widths, "
                                            "seed 0)")
    if token_reduction:
        from .model.reduction import reduction_report, resolve_token_reduction

        count = info.get("visual_tokens_after_routing", info["visual_tokens"])
        info.update(reduction_report(info, resolve_token_reduction(token_reduction), rec.num_views, geo.grid, count))
    if figure:
        router = None
        if route and "router_keep" in aux:
            router = {"local_grid": aux["local_grid"][0], "kept": aux["router_keep"][0].tolist()}
        save_figure(image, rec, spec, info, figure, router)
        info["figure"] = figure
    text = json.dumps(info) if as_json else format_text(info)
    return text, info
