"""docs/serve.md's client example, run as written against a test server: only its address, model id
and image file are substituted."""

from __future__ import annotations

import os
import re

import pytest
from serve_helpers import png_bytes

pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "serve.md")


def test_the_documented_client_example_runs(start_server, slime_dir, tmp_path, capsys, monkeypatch):
    text = open(DOC, encoding="utf-8").read()
    block = re.search(r"<!-- serve-example:begin -->\n```python\n(.*?)```\n<!-- serve-example:end -->", text, re.S)
    assert block, "docs/serve.md lost its example block"
    code = block.group(1)
    server = start_server(slime_dir)
    (tmp_path / "photo.png").write_bytes(png_bytes())
    substitutions = {"http://127.0.0.1:8000": server.url, "runs/demo/models/slime/sft/final": str(slime_dir)}
    for old, new in substitutions.items():
        assert old in code, old
        code = code.replace(old, new)
    assert 'open("photo.png", "rb")' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, DOC, "exec"), {"__name__": "__docs__"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    answer, counts, streamed = lines
    prompt_tokens, visual_tokens, grid = counts.split(" ", 2)
    assert int(prompt_tokens) > int(visual_tokens) > 0 and grid == "[3, 2]"
    assert answer and streamed == answer
