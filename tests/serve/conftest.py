"""Fixtures of the server tests: small saved tiny models, real uvicorn servers on free loopback ports,
test images as files and data URLs.

A server runs in a background thread of the test process (``uvicorn.Server`` on port 0, the kernel
picks a free port), so every request goes through real HTTP on 127.0.0.1; the CLI test starts the
command as a subprocess instead.
"""

from __future__ import annotations

import pytest

from serve_helpers import API_KEY, SLIME, SLIME_SEED, RunningServer, picture, png_bytes


@pytest.fixture(scope="session")
def start_server():
    """``start(model_dir, **settings)`` → a :class:`RunningServer` (stopped at the end of the session)."""
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")
    import torch

    from hires_vlm.serve import Engine, ServeSettings, create_app

    started = []

    def start(model_dir, **kw) -> RunningServer:
        kw.setdefault("threads", 1)
        kw.setdefault("preprocess_workers", 1)
        settings = ServeSettings(model_dir=str(model_dir), **kw)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            engine = Engine.load(settings)
        finally:
            torch.set_num_threads(before)
        server = RunningServer(create_app(engine, settings))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def slime_dir(save_small_tiny):
    path, _, _ = save_small_tiny("serve_slime", SLIME, seed=SLIME_SEED)
    return path


@pytest.fixture(scope="session")
def llava_hd_dir(save_small_tiny):
    path, _, _ = save_small_tiny("serve_llava_hd", "llava_hd", seed=0)
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A folder the main server may read images from (``allow_local_images``), and one beside it it may not."""
    root = tmp_path_factory.mktemp("serve_images")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "circle.png").write_bytes(png_bytes())
    (root / "secret.png").write_bytes(png_bytes(picture(colour="blue")))
    (allowed / "escape.png").symlink_to(root / "secret.png")
    return allowed


@pytest.fixture(scope="session")
def main_server(start_server, slime_dir, image_folder):
    """The SliME model behind an API key, local images allowed from ``image_folder``."""
    return start_server(slime_dir, api_key=API_KEY, allow_local_images=str(image_folder), max_batch_size=16,
                        batch_wait_ms=20, request_timeout=60, max_images=3, max_image_pixels=4_000_000,
                        max_request_pixels=5_000_000,
                        max_body_bytes=4 << 20, max_image_bytes=1 << 20, max_tokens_limit=512)


@pytest.fixture(scope="session")
def client(main_server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=main_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def model_id(slime_dir):
    return str(slime_dir)
