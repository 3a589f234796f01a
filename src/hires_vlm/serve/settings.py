"""What an operator sets when starting ``hires-vlm serve``: the model, batching, limits, access.

One dataclass, read by every part of the server; ``hires-vlm serve``'s flags map one to one onto its
fields (``--max-batch-size`` → ``max_batch_size``). Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "HIRES_VLM_API_KEY"
MIB = 1 << 20


@dataclass
class ServeSettings:
    model_dir: str
    model_name: str | None = None  # the id clients send as "model"; default: model_dir as given
    device: str | None = None  # default: cuda if available, else cpu
    dtype: str | None = None  # float32 / bfloat16 / float16; default: as saved
    threads: int | None = None  # torch intra-op threads of the model's worker thread (default: torch's)
    # batching
    max_batch_size: int = 16
    batch_wait_ms: float = 10.0  # the longest a batch waits for more requests (see batcher)
    max_queue: int = 64  # requests admitted and not yet decoding; beyond, 429
    request_timeout: float = 300.0  # seconds from arrival to the last token
    preprocess_workers: int = 2  # threads that decode images and tokenise, beside the model's thread
    # limits
    max_body_bytes: int = 16 * MIB
    max_image_bytes: int = 10 * MIB  # one image, decoded from its data URL or read from a file
    max_image_pixels: int = 8192 * 8192  # refused from the header, before the pixels are decoded
    max_request_pixels: int = 8192 * 8192  # all images of one request together (decoded RGB: 3 bytes a pixel)
    max_images: int = 8  # image parts per request
    max_messages: int = 256
    default_max_tokens: int = 256  # when a request gives none (then also capped by the context left)
    max_tokens_limit: int = 4096  # the most a request may ask for
    # access
    api_key: str | None = None  # required as "Authorization: Bearer …" on /v1/… when set
    allow_local_images: str | None = None  # a folder whose files image_url may name (file://… or a path)
    web_demo: bool = True  # serve the web page at /

    def __post_init__(self):
        if self.model_name is None:
            self.model_name = self.model_dir
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for name in ("max_batch_size", "max_queue", "preprocess_workers", "max_body_bytes", "max_image_bytes",
                     "max_image_pixels", "max_request_pixels", "max_images", "max_messages", "default_max_tokens",
                     "max_tokens_limit"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 seconds, got {self.request_timeout!r}")
        if self.allow_local_images is not None:
            if not os.path.isdir(self.allow_local_images):
                raise FileNotFoundError(f"--allow-local-images: folder not found: {self.allow_local_images!r}")
            self.allow_local_images = os.path.realpath(self.allow_local_images)
