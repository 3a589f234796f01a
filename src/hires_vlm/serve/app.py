"""The HTTP routes of ``hires-vlm serve`` (FastAPI): the OpenAI API, health, and the web demo.

=========================  =====================================================================
``POST /v1/chat/completions``  OpenAI chat completions, plain or ``stream: true`` (server-sent events)
``GET /v1/models``, ``GET /v1/models/{id}``  the one served model, with its method and context
``POST /v1/hires_vlm/cut``  the web demo's picture of a cut (:mod:`.figures`)
``GET /health``             worker alive, queue, batch statistics (no API key needed; 503 if the worker died)
``GET /``                   the web demo (``static/``)
=========================  =====================================================================

Every refusal is an OpenAI-shaped JSON error (:mod:`.errors`), including unknown routes and wrong
methods; the body is read with a byte limit (413 past it) and parsed here, so malformed JSON is a
400 like any other bad field. With an API key set, ``/v1/…`` needs ``Authorization: Bearer KEY``.
A request is admitted or refused with 429 (:mod:`.batcher`), then parsed, checked (:mod:`.schema`)
and prepared in a small thread pool (:meth:`Engine.prepare`: images decoded, prompt encoded,
context checked) — so that neither megabytes of JSON nor image decoding stall the event loop —
and queued for the model's worker thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import responses as R
from .batcher import Batcher, Job, timeout_error
from .errors import AUTHENTICATION, NOT_FOUND, SERVER, APIError, bad_request
from .figures import cut_figure, parse_cut_request
from .images import fetch_image
from .schema import parse_chat_request
from .settings import ServeSettings

logger = logging.getLogger(__name__)
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
GRACE_S = 5.0  # past a job's deadline, how long the handler waits for the worker to stop it


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # preprocessing threads: small tensor work, beside the model's thread


def parse_json(body: bytes):
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 JSON", None, "invalid_json") from None
    except ValueError as err:
        raise bad_request(f"the request body is not valid JSON ({err})", None, "invalid_json") from None


def create_app(engine, settings: ServeSettings) -> FastAPI:
    """The app for a loaded :class:`~hires_vlm.serve.engine.Engine`; the worker starts with the app."""
    batcher = Batcher(engine, max_batch_size=settings.max_batch_size, batch_wait_ms=settings.batch_wait_ms,
                      max_queue=settings.max_queue, threads=settings.threads)
    pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="hires-vlm-prep", initializer=_one_thread)
    created = R.now()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="hires-vlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.engine, app.state.settings = batcher, engine, settings

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: (NOT_FOUND, "unknown_route"), 405: ("invalid_request_error", "method_not_allowed")}
        kind, code = kinds.get(exc.status_code, ("invalid_request_error", None))
        message = (f"{request.method} {request.url.path}: no such route" if exc.status_code == 404
                   else f"{request.method} {request.url.path}: {exc.detail}")
        return JSONResponse(APIError(exc.status_code, message, type=kind, code=code).body(),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(APIError(500, f"internal error ({type(exc).__name__}); the server keeps serving",
                                     type=SERVER, code="internal_error").body(), status_code=500)

    # ------------------------------------------------------------------ helpers
    def check_key(request: Request) -> None:
        if not settings.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'", type=AUTHENTICATION,
                           code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        too_large = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                             code="request_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def prepare(body: bytes):
        """In a preprocessing thread (JSON of megabytes must not stall the event loop): parse, check, prepare."""
        req = parse_chat_request(parse_json(body), max_messages=settings.max_messages,
                                 max_images=settings.max_images, max_tokens_limit=settings.max_tokens_limit,
                                 default_sampling=engine.default_sampling)
        if req.model != settings.model_name:
            raise APIError(404, f"model {req.model!r} is not served here; this server has {settings.model_name!r}",
                           type=NOT_FOUND, param="model", code="model_not_found")
        return req, engine.prepare(req)

    # ------------------------------------------------------------------ the OpenAI API
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.monotonic()
        check_key(request)
        body = await read_body(request)
        ticket = batcher.admit()
        try:
            req, prepared = await in_pool(prepare, body)
            deadline = arrival + settings.request_timeout
            if time.monotonic() > deadline:
                raise timeout_error()
            job = Job(prepared, asyncio.get_running_loop(), deadline, ticket)
            batcher.submit(job)
        except BaseException:
            ticket.release()
            raise
        cid, created = R.new_id(), R.now()
        if req.stream:
            return StreamingResponse(_stream(job, cid, created, req.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            kind, payload = await asyncio.wait_for(job.events.get(), _left(job))
        except asyncio.TimeoutError:
            raise timeout_error() from None
        finally:
            job.cancel()  # no-op once done; stops the row if the client left or the wait timed out
        if kind == "error":
            raise payload
        return JSONResponse(R.completion(cid, created, settings.model_name, payload))

    async def _stream(job: Job, cid: str, created: int, include_usage: bool):
        model = settings.model_name
        try:
            yield R.sse(R.chunk(cid, created, model, {"role": "assistant", "content": ""}))
            while True:
                try:
                    kind, payload = await asyncio.wait_for(job.events.get(), _left(job))
                except asyncio.TimeoutError:
                    kind, payload = "error", timeout_error()
                if kind == "delta":
                    yield R.sse(R.chunk(cid, created, model, {"content": payload}))
                    continue
                if kind == "done":
                    for c in R.final_chunks(cid, created, model, payload, include_usage):
                        yield R.sse(c)
                else:  # an error after the response began: OpenAI's clients raise on an event with "error"
                    yield R.sse(payload.body())
                yield R.DONE
                return
        finally:
            job.cancel()

    def _left(job: Job) -> float:
        return max(job.deadline - time.monotonic(), 0.0) + GRACE_S

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(request)
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        check_key(request)
        if model_id != settings.model_name:
            raise APIError(404, f"model {model_id!r} is not served here; this server has {settings.model_name!r}",
                           type=NOT_FOUND, param="model", code="model_not_found")
        return _model_card()

    def _model_card() -> dict:
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "hires-vlm",
                "hires_vlm": engine.describe()}

    @app.get("/health")
    async def health():
        status = batcher.status()
        ok = status["worker_alive"]
        return JSONResponse({"status": "ok" if ok else "worker stopped", "model": settings.model_name,
                             "method": engine.method, **status}, status_code=200 if ok else 503)

    # ------------------------------------------------------------------ the web demo
    @app.post("/v1/hires_vlm/cut")
    async def cut(request: Request):
        check_key(request)
        body = await read_body(request)

        def draw():
            ref, router = parse_cut_request(parse_json(body))
            image = fetch_image(ref, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                                local_root=settings.allow_local_images)
            return cut_figure(engine.model, image, router)

        return await in_pool(draw)

    if settings.web_demo:
        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app
