"""``hires-vlm serve``: an OpenAI-compatible server for a saved model, with batching, streaming and a web demo.

Only the argument parser lives at the top, so that ``hires-vlm --help`` imports neither torch nor
FastAPI; the server's modules are imported when the command runs.
"""

from __future__ import annotations

from .settings import API_KEY_ENV, MIB, ServeSettings

DTYPE_CHOICES = ("float32", "bfloat16", "float16")  # = hires_vlm.model.loading.DTYPES


def add_parser(sub) -> None:
    d = ServeSettings.__dataclass_fields__
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (batching, streaming, web demo)")
    p.add_argument("--model", required=True, help="saved model directory (from train, build or import)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the id clients send as 'model' (default: --model as given)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, help="load the weights in this dtype (default: as saved)")
    p.add_argument("--threads", type=int, help="torch threads of the model's worker (default: torch's)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch-size", type=int, default=d["max_batch_size"].default,
                   help="requests decoded together at most (default %(default)s)")
    g.add_argument("--batch-wait-ms", type=float, default=d["batch_wait_ms"].default,
                   help="wait at most this long for more requests before a batch starts: for those being "
                        "prepared and, under a steady load, for the clients just answered (default %(default)s)")
    g.add_argument("--no-batching", action="store_true", help="one request at a time (= --max-batch-size 1)")
    g.add_argument("--max-queue", type=int, default=d["max_queue"].default,
                   help="requests admitted and not yet decoding; more are refused with 429 (default %(default)s)")
    g.add_argument("--request-timeout", type=float, default=d["request_timeout"].default,
                   help="seconds from arrival to the last token, else 504 (default %(default)s)")
    g.add_argument("--preprocess-workers", type=int, default=d["preprocess_workers"].default,
                   help="threads decoding images and encoding prompts (default %(default)s)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-mb", type=float, default=d["max_body_bytes"].default / MIB,
                   help="request body size (default %(default)s MiB)")
    g.add_argument("--max-image-mb", type=float, default=d["max_image_bytes"].default / MIB,
                   help="one image's encoded size (default %(default)s MiB)")
    g.add_argument("--max-image-pixels", type=int, default=d["max_image_pixels"].default,
                   help="one image's width x height, checked before decoding (default %(default)s)")
    g.add_argument("--max-request-pixels", type=int, default=d["max_request_pixels"].default,
                   help="all images of one request together, checked before decoding (default %(default)s)")
    g.add_argument("--max-images", type=int, default=d["max_images"].default,
                   help="image parts per request (default %(default)s)")
    g.add_argument("--default-max-tokens", type=int, default=d["default_max_tokens"].default,
                   help="new tokens when a request gives no max_tokens (default %(default)s)")
    g.add_argument("--max-tokens-limit", type=int, default=d["max_tokens_limit"].default,
                   help="the most max_tokens a request may ask for (default %(default)s)")
    g = p.add_argument_group("access")
    g.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1/… (default: ${API_KEY_ENV}, "
                                     "which keeps the key out of the process list)")
    g.add_argument("--allow-local-images", metavar="DIR",
                   help="let image_url name files (file:///… or a path) inside DIR, and only there")
    g.add_argument("--no-web-demo", action="store_true", help="do not serve the web page at /")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_run)


def settings_from_args(args) -> ServeSettings:
    return ServeSettings(
        model_dir=args.model, model_name=args.model_name, device=args.device, dtype=args.dtype, threads=args.threads,
        max_batch_size=1 if args.no_batching else args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue, request_timeout=args.request_timeout, preprocess_workers=args.preprocess_workers,
        max_body_bytes=int(args.max_body_mb * MIB), max_image_bytes=int(args.max_image_mb * MIB),
        max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels, max_images=args.max_images,
        default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit, api_key=args.api_key,
        allow_local_images=args.allow_local_images, web_demo=not args.no_web_demo)


def _run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise ValueError(f"hires-vlm serve needs FastAPI and uvicorn ({err.name} is missing): "
                         "pip install 'hires-vlm[serve]'") from None
    settings = settings_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from .app import create_app
    from .engine import Engine

    engine = Engine.load(settings)
    app = create_app(engine, settings)
    where = f"http://{args.host}:{args.port}"
    batching = "off" if settings.max_batch_size == 1 else f"up to {settings.max_batch_size} per batch"
    print(f"serving {settings.model_name!r} ({engine.method}, {engine.device}) at {where}/v1 — batching {batching}"
          + (f"; web demo at {where}/" if settings.web_demo else "")
          + ("; API key required" if settings.api_key else ""), flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                    access_log=args.log_level == "debug")
    except KeyboardInterrupt:  # some uvicorn releases re-raise Ctrl-C after their graceful shutdown
        pass
    return 0
