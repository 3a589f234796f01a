"""Smoke test of the benchmark scripts in ``benchmarks/``: each runs its ``--smoke`` setting, prints
its ratio line and checks what it measures (outputs equal to the peer's, one tower forward, …).

Performance itself is not tested here (DESIGN.md: performance claims are benchmarks, never timed
unit tests). The scripts run in this process (``main(argv)``) to keep the test fast; each also
starts as a command (``--help``) to cover its entry point.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")

pytestmark = pytest.mark.slow  # ≈8–20 s in all on a loaded 2-core CPU (most of it imports)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, capsys, tmp_path, *extra) -> tuple[str, dict]:
    out_json = tmp_path / f"{name}.json"
    assert _load(name).main(["--smoke", "--json", str(out_json), *extra]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^ratio: .*\d+\.\d+x", text, re.M), f"{name} printed no ratio line:\n{text}"
    assert "machine: " in text and "command: " in text
    with open(out_json) as f:
        return text, json.load(f)


def test_preprocess_matches_transformers_and_prints_ratio(capsys, tmp_path):
    _, data = _run("bench_preprocess", capsys, tmp_path)
    for r in data["results"]:
        assert r["same_grid"], r
        assert r["views_ours"] == r["views_peer"]
        assert r["max_abs_diff"] < 1e-5, r  # same Pillow resampling, float32 rounding only
        assert r["ours_torch_ms"] > 0 and r["torch_vs_pillow_levels"] <= 2, r  # the torch resampler was timed
        if r["max_abs_diff_tv"] is not None:  # torchvision importable: ours·torch gives its pixels
            assert r["max_abs_diff_tv"] < 1e-5, r


def test_vision_batches_every_view_in_one_forward(capsys, tmp_path):
    _, data = _run("bench_vision", capsys, tmp_path)
    by = {(r["method"], r["mode"]): r for r in data["results"]}
    assert by[("inf_llava", "batched")]["forwards"] == 1
    assert by[("inf_llava", "per_view")]["forwards"] == by[("inf_llava", "per_view")]["views"] == 19


def test_prefill_reports_every_method(capsys, tmp_path):
    text, data = _run("bench_prefill", capsys, tmp_path)
    keys = {r["key"] for r in data["results"]}
    assert keys == {"llava", "llava_hd", "monkey", "slime_all", "slime", "inf_llava"}
    by = {r["key"]: r for r in data["results"]}
    assert by["slime"]["visual_tokens"] <= by["slime_all"]["visual_tokens"] == by["slime_all"]["max_visual_tokens"]
    assert by["llava"]["visual_tokens"] == 64  # 8×8 tokens of the tiny tower's one view


def test_train_step_runs_with_and_without_checkpointing(capsys, tmp_path):
    _, data = _run("bench_train", capsys, tmp_path)
    for r in data["results"].values():
        assert r["step_gc0"] > 0 and r["step_gc1"] > 0 and r["tokens"] > r["visual_tokens"] > 0


def test_generate_modes_agree(capsys, tmp_path):
    text, data = _run("bench_generate", capsys, tmp_path)
    # Cached vs recomputed and batched (left-padded) vs single decoding may only part where the two
    # best logits tie to float precision; a padding or position bug gives clear margins.
    for key, margin in data["margins_at_differences"].items():
        assert margin < 1e-3, (key, margin)
    assert "outputs identical across the modes: " in text


def test_peer_models_compute_what_ours_compute(capsys, tmp_path):
    text, data = _run("bench_peer", capsys, tmp_path)
    assert set(data["results"]) == {"llava", "llava_hd"}
    for method, r in data["results"].items():
        assert r["export_self_test"]["passed"], method
        assert r["prefill"]["ids_equal"] and r["prefill"]["logits_equal"], (method, r["prefill"]["max_abs_dlogits"])
        assert r["train"]["losses_equal"], (method, r["train"]["first_loss"])
        # Every training case (ours padded / packed, labelled or all logits; the peer packed) against the peer
        # padded: float rounding only. A sample attending to another or a shifted label is off by 1e-2 and more.
        assert max(r["train"]["max_abs_dgrad_vs_peer_padded"].values()) < 1e-5, r["train"]
        assert r["train"]["packed_attention"] == "hires_sdpa_varlen"
        assert r["train"]["max_loss_gap"] < 1e-4 and r["train"]["steps"] >= 2  # the same steps, the same losses
        assert r["generate"]["identical"], (r["generate"]["ours_ids"], r["generate"]["peer_ids"])
        assert set(data["ratios"][method]) == {"prefill", "train_padded", "train_packed", "train_both_packed",
                                               "generate"}
    assert "ratio: llava_hd training step, ours / peer" in text


def test_packing_removes_the_padding_and_grouped_batches_stay_pure(capsys, tmp_path):
    _, data = _run("bench_packing", capsys, tmp_path)
    smr = data["padding"]["smr"]
    assert smr["random"]["mixed_batches"] > 0  # 10 % text-only samples: random batches mix them
    for key, policies in data["padding"].items():
        for name, stats in policies.items():
            if name.startswith("ours"):
                assert stats["mixed_batches"] == 0, (key, name)
        assert policies["ours modality-length, group 50"]["padded_fraction"] <= policies["random"]["padded_fraction"]
    assert smr["ours modality-length, group 50"]["padded_fraction"] < smr["random"]["padded_fraction"]
    for key, cases in data["timing"].items():
        assert set(cases) == {"random, padded", "random, packed", "grouped, padded", "grouped, packed"}
        assert len({c["samples"] for c in cases.values()}) == 1  # the same samples in every case


@pytest.mark.parametrize("name", ["bench_preprocess", "bench_vision", "bench_prefill", "bench_train",
                                  "bench_generate", "bench_peer", "bench_packing"])
def test_script_starts_as_a_command(name):
    # ``--help`` exits before torch is imported: this covers the entry point and ``_common``'s import.
    proc = subprocess.run([sys.executable, os.path.join(BENCH, f"{name}.py"), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--smoke" in proc.stdout and "--readme" in proc.stdout
