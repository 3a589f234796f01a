"""Serving a saved model: an OpenAI-compatible HTTP API with batching and streaming, and a web demo.

``hires-vlm serve --model DIR`` (:mod:`.cli`) is this package's front; docs/serve.md is its manual.
The parts, each one concept: :mod:`.settings` (what the operator sets), :mod:`.schema` (request
checks), :mod:`.images` (image URLs within limits), :mod:`.engine` (a request → model inputs; a
batch → one decode), :mod:`.decoding` (per-row sampling, stop strings, streaming inside one
``generate``), :mod:`.batcher` (the model's worker thread and its bounded queue),
:mod:`.responses` (OpenAI bodies), :mod:`.figures` (the demo's cut picture), :mod:`.app` (routes)
and ``static/`` (the page). FastAPI and uvicorn come with the ``serve`` extra.

    from hires_vlm.serve import Engine, ServeSettings, create_app
    settings = ServeSettings(model_dir="runs/demo/models/slime/sft/final")
    app = create_app(Engine.load(settings), settings)   # an ASGI app, e.g. for uvicorn.run(app)
"""

from __future__ import annotations

from ..lazy import lazy_exports

# Exported lazily (PEP 562): ``hires-vlm --help`` imports .cli, which must not import torch or FastAPI.
_EXPORTS = {"APIError": "errors", "Engine": "engine", "ServeSettings": "settings", "create_app": "app",
            "parse_chat_request": "schema"}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
