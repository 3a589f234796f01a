"""The web demo's picture of a cut: ``hires-vlm inspect --save-figure``'s figure, for the served model.

``POST /v1/hires_vlm/cut`` with ``{"image_url": {"url": "data:…"}}`` answers the figure
:func:`hires_vlm.inspect_cut.save_figure` draws — the image with the method's tile grid on its
canvas and every view the tower sees — as a PNG data URL, with the cut itself (grid, canvas, views,
visual tokens at most). For SliME, add what an answer's ``hires_vlm`` extension reported for that
image, ``"local_grid"`` and ``"kept_local_tokens"``, and the local tokens the router dropped are
shaded. Figures are drawn one at a time (pyplot is not thread-safe).
"""

from __future__ import annotations

import base64
import os
import tempfile
import threading
from typing import Any

from ..inspect_cut import Geometry, describe, save_figure
from .errors import bad_request
from .schema import ImageRef

_PYPLOT = threading.Lock()
MAX_LOCAL_CELLS = 1 << 16


def parse_cut_request(body: Any) -> tuple[ImageRef, dict | None]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object with 'image_url'", None, "invalid_body")
    url = body.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url:
        raise bad_request("'image_url.url' is required: a data URL of the image", "image_url.url", "missing_field")
    grid, kept = body.get("local_grid"), body.get("kept_local_tokens")
    if grid is None and kept is None:
        return ImageRef(url, "image_url.url"), None
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid)
            or grid[0] * grid[1] > MAX_LOCAL_CELLS):
        raise bad_request(f"'local_grid' must be [rows, columns] of positive integers (at most {MAX_LOCAL_CELLS} "
                          "cells), as an answer's hires_vlm.images[i].local_grid", "local_grid", "invalid_value")
    cells = grid[0] * grid[1]
    if not isinstance(kept, list) or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < cells
                                             for k in kept):
        raise bad_request(f"'kept_local_tokens' must be an array of positions in [0, {cells})", "kept_local_tokens",
                          "invalid_value")
    return ImageRef(url, "image_url.url"), {"local_grid": grid, "kept": kept}


def geometry_of(model) -> Geometry:
    mc = model.config
    from ..vision.native import tower_tile_size

    return Geometry(tower_tile_size(mc.vision_config), int(mc.vision_config.patch_size), tuple(mc.image_mean),
                    tuple(mc.image_std), mc.image_resampler)


def cut_figure(model, image, router: dict | None = None) -> dict:
    """``{"figure": PNG data URL, "cut": {...}}`` for ``image`` under ``model``'s method."""
    info, rec, spec = describe(image.size, model.connector.cfg, geometry_of(model))
    if spec.is_native:
        raise bad_request(f"{info['method']} takes the image at its native resolution (resized to "
                          f"{rec.canvas_size[0]}x{rec.canvas_size[1]}, {info['visual_tokens']} visual tokens): there "
                          "are no tiles or views to draw", "image", "invalid_value")
    if router is not None and not rec.grid[0]:
        raise bad_request(f"this image has no tiles under {info['method']}, so there are no local tokens to show",
                          "local_grid", "invalid_value")
    with tempfile.TemporaryDirectory(prefix="hires-vlm-cut-") as tmp, _PYPLOT:
        path = os.path.join(tmp, "cut.png")
        save_figure(image, rec, spec, info, path, router)
        with open(path, "rb") as f:
            png = f.read()
    cut = {k: info[k] for k in ("method", "image_size", "tile_size", "patch_size", "grid", "canvas_size",
                                "content_box", "num_views", "views", "view_order", "visual_tokens")}
    cut["visual_tokens_upper_bound"] = cut.pop("visual_tokens")
    if router is not None:
        cut["kept_local_tokens"] = len(set(router["kept"]))
        cut["local_tokens"] = router["local_grid"][0] * router["local_grid"][1]
    return {"figure": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "cut": cut}
