"""``hires-vlm serve`` as a command: starts, serves the ``openai`` client, reads the API key from the
environment, honours ``--no-batching``, stops on SIGINT; a bad model folder is a clear error; and
``hires-vlm --help`` still imports neither torch nor the server's libraries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from serve_helpers import image_message

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # a fresh interpreter imports torch and transformers (≈10 s here)


HIRES_VLM = [sys.executable, "-m", "hires_vlm.cli"]  # the console script's own entry point, in this interpreter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_end_to_end(llava_hd_dir):
    port = _free_port()
    env = {**os.environ, "HIRES_VLM_API_KEY": "from-env", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([*HIRES_VLM, "serve", "--model", str(llava_hd_dir), "--port", str(port), "--no-batching",
                             "--threads", "1", "--model-name", "tiny-hd", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        assert health["status"] == "ok" and health["max_batch_size"] == 1 and health["method"] == "llava_hd"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="from-env", max_retries=0)
        r = client.chat.completions.create(model="tiny-hd", messages=[image_message()], max_tokens=5)
        assert r.usage.completion_tokens == 5 and r.hires_vlm["images"][0]["grid"] == [2, 2]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="other", max_retries=0).models.list()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert b"<title>hires-vlm</title>" in page.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving 'tiny-hd' (llava_hd, cpu) at http://127.0.0.1:{port}/v1 — batching off" in out


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run([*HIRES_VLM, "serve", "--model", str(tmp_path / "nope")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "error: model directory not found" in proc.stderr


def test_help_imports_no_torch_and_no_server_libraries():
    code = ("import sys; from hires_vlm.cli import build_parser; p = build_parser(); "
            "p.parse_args(['serve', '--model', 'x']); "
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn', 'starlette') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
