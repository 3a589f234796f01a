"""Helpers of the server tests (imported by conftest.py and the test modules): test images as PNG
bytes and data URLs, an image message, and a uvicorn server running in a background thread.
"""

from __future__ import annotations

import base64
import io
import threading
import time

from PIL import Image, ImageDraw

API_KEY = "test-key-7f3a"
# SliME with the tiny configs' compression (8x8 tokens per tile → 4x4 queries); seed 4 answers the
# test prompts with a dozen non-empty tokens (seed 0 says end-of-turn at once), so there is text to
# stream, cut at stop strings and show in the browser.
SLIME = {"preset": "slime", "local_queries": 16, "resampler_heads": 4}
SLIME_SEED = 4


def picture(size=(300, 200), colour="red") -> Image.Image:
    im = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(im).ellipse([w // 5, h // 5, 4 * w // 5, 4 * h // 5], fill=colour)
    return im


def png_bytes(im: Image.Image | None = None) -> bytes:
    buf = io.BytesIO()
    (im or picture()).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode("ascii")


def image_message(text: str = "What colour is the circle?", url: str | None = None) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url or data_url(png_bytes())}},
                                        {"type": "text", "text": text}]}


class RunningServer:
    """A uvicorn server with ``app`` in a thread; ``.url`` is its base URL."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    @property
    def batcher(self):
        return self.app.state.batcher

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
