"""Smoke run of ``benchmarks/bench_serve.py`` (two ``hires-vlm serve`` subprocesses under load): it
prints its ratio lines, the machine and the command, and every request of both servers succeeded.
Performance itself is a benchmark, not a test (see tests/benchmarks/)."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

pytestmark = pytest.mark.slow  # two server processes start (≈15 s on a loaded 2-core CPU)
BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


def test_bench_serve_smoke(capsys, tmp_path):
    pytest.importorskip("uvicorn")
    spec = importlib.util.spec_from_file_location("_bench_serve", os.path.join(BENCH, "bench_serve.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out_json = tmp_path / "serve.json"
    assert mod.main(["--smoke", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^ratio: requests/s batched / no batching at concurrency 4 = \d+\.\d+x", text, re.M), text
    assert "machine: " in text and "command: " in text and "errors: 0" in text
    data = json.loads(out_json.read_text())
    for key in ("batched@1", "no batching@1", "batched@4", "no batching@4"):
        r = data["summary"][key]
        assert r["errors"] == 0 and r["requests"] > 0 and r["rps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0, key
    assert data["summary"]["no batching@4"]["mean_batch"] == 1.0
