"""Nothing lost, nothing outside, nothing unbounded (issue 13): regressions and the fuzz run.

* the two data-loss cases: the synthetic generator deleting a user's images under
  ``--output-dir D/data``, and ``eval --overwrite`` deleting results before it found the model;
* evaluation reading files outside the data folder from benchmark records;
* a finished run's ``config.yaml`` rewritten to a budget that was never run; incomplete checkpoints
  piling up; config and argument errors that surfaced as tracebacks;
* ``scripts/fuzz_inputs.py`` on a few hundred generated bad files through ``data check``, a short
  training and ``eval``: zero crashes, every bad record counted exactly once, bounded memory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

import hires_vlm
from hires_vlm.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava", "tiny.yaml")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_training_never_deletes_the_user_s_files_under_output_dir_data(tmp_path, capsys):
    """Regression: `hires-vlm train configs/llava/tiny.yaml --output-dir D` deleted D/data/images/*.png."""
    mine = tmp_path / "data" / "images" / "train" / "counting" / "counting-train-00000.png"
    mine.parent.mkdir(parents=True)
    Image.new("RGB", (9, 9), "blue").save(mine)
    (tmp_path / "data" / "train.json").write_text('["my own records"]')
    before = _files(tmp_path / "data")
    rc = main(["train", CONFIG, "--output-dir", str(tmp_path), "--set", "stages.0.training.max_steps=1"])
    assert rc == 2
    assert "did not write" in capsys.readouterr().err
    assert _files(tmp_path / "data") == before


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from hires_vlm.tiny import build_tiny

    out = tmp_path_factory.mktemp("model")
    model, proc = build_tiny("llava", seed=0)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from hires_vlm.data.synthetic import generate_benchmark

    out = tmp_path_factory.mktemp("bench")
    generate_benchmark(out, train_per_family=1, test_per_family=1, families=["quadrant"], separability_samples=0,
                       num_workers=1)
    return out


def test_eval_overwrite_with_a_wrong_model_deletes_nothing(tmp_path, tiny_model, bench, capsys):
    """Regression: `eval --model /typo --out OUT --overwrite` deleted OUT's results, then exited 2."""
    out = tmp_path / "eval"
    args = ["eval", "--benchmark", "synthetic", "--data", str(bench), "--out", str(out), "--max-new-tokens", "2",
            "--no-progress"]
    assert main(args + ["--model", str(tiny_model)]) == 0
    before = _files(out)
    assert {"predictions.jsonl", "scores.json", "run.json"} <= set(before)
    assert main(args + ["--model", str(tmp_path / "typo"), "--overwrite"]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert _files(out) == before
    # A directory without weights is named as such, and changes nothing either.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert main(args + ["--model", str(tmp_path / "empty"), "--overwrite"]) == 2
    assert "has no weights" in capsys.readouterr().err
    assert _files(out) == before
    # A real --overwrite replaces the results, and leaves no set-aside copy once it completes.
    assert main(args + ["--model", str(tiny_model), "--overwrite"]) == 0
    assert not list(out.glob(".replaced-*"))


def test_evaluation_reads_nothing_outside_the_data_folder(tmp_path, tiny_model):
    from hires_vlm.eval.runner import evaluate

    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (20, 20)).save(secret)
    data = tmp_path / "data" / "bench"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(data / "images" / "ok.png")
    os.symlink(secret, data / "images" / "link.png")
    conv = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]
    paths = ["images/ok.png", "../../outside/secret.png", str(secret), "/etc/passwd", "images/link.png"]
    recs = [{"id": str(i), "image": p, "conversations": conv} for i, p in enumerate(paths)]
    (data / "test.json").write_text(json.dumps(recs))
    report = evaluate(str(tiny_model), "synthetic", data, tmp_path / "out", max_new_tokens=1, progress=False)
    assert report["skipped_records"] == {"image path outside the data folder": 4}
    assert report["counts"]["n_questions"] == 1


def _train_args(tmp_path, tiny_data, *extra):
    return ["train", CONFIG, "--set", f"run.output_dir={tmp_path}", "--set", f"data.train={tiny_data}",
            "--set", f"data.image_folder={os.path.dirname(tiny_data)}", "--set", "stages.0.training.max_steps=2",
            "--set", "stages.1.training.max_steps=2", *extra]


@pytest.mark.slow
def test_a_finished_run_is_never_recorded_with_a_budget_it_did_not_run(tmp_path, tiny_data, capsys):
    assert main(_train_args(tmp_path, tiny_data)) == 0
    record = (tmp_path / "config.yaml").read_text()
    assert main(_train_args(tmp_path, tiny_data, "--set", "stages.1.training.max_steps=200")) == 2
    err = capsys.readouterr().err
    assert "stages.1 (sft).training.max_steps: 2 then, 200 now" in err and "new run.output_dir" in err
    assert (tmp_path / "config.yaml").read_text() == record


def test_only_the_newest_incomplete_checkpoint_is_kept(tmp_path):
    from hires_vlm.train.runner import latest_complete_checkpoint

    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        assert latest_complete_checkpoint(str(tmp_path)) is None
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith("incomplete-checkpoint-6-")


@pytest.mark.parametrize("override,message", [
    ("stages.0.training.max_steps=abc", "stages[0].training.max_steps must be an integer, got 'abc'"),
    ("run.seed.x.y=1", "run.seed is 0, not a mapping"),
    ("run.seed=abc", "run.seed must be an integer, got 'abc'"),
    ("training.bf16=maybe", "training.bf16 must be true or false"),
    ("model.method={preset: llava_hd, grid_candidates: [[0, 0]]}", "grid_candidates must be (columns, rows) pairs of at least 1 tile"),
])
def test_config_errors_name_the_key_before_anything_is_built(tmp_path, override, message, capsys):
    assert main(["train", CONFIG, "--output-dir", str(tmp_path / "run"), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,message", [
    ("run: [unclosed", "is not a valid config at line"),
    ("run: !!python/object/apply:os.system ['echo pwned']", "is not a valid config"),
    ("- just\n- a list\n", "must hold a YAML mapping"),
])
def test_bad_config_files_are_named(tmp_path, text, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "bad.yaml" in err and "pwned" not in capsys.readouterr().out


def test_data_max_length_above_the_model_s_is_refused_up_front(tmp_path, tiny_data, capsys):
    assert main(_train_args(tmp_path, tiny_data, "--set", "data.max_length=99999")) == 2
    assert "data.max_length=99999 is more than the model accepts" in capsys.readouterr().err
    assert not (tmp_path / "pretrain" / "checkpoint-1").exists()


@pytest.mark.parametrize("content,message", [
    (b'[{"id": "a", "conversations": [', "ends early (truncated?)"),
    (b'[{"id": "\xff\xfe"}]', "is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nests JSON deeper"),
])
def test_unreadable_json_files_are_named(tmp_path, content, message):
    from hires_vlm import fsio

    path = tmp_path / "train.json"
    path.write_bytes(content)
    with pytest.raises(fsio.DataFileError, match=re.escape(message)) as err:
        fsio.read_records_file(path)
    assert "train.json" in str(err.value)


def test_a_bom_json_file_reads_and_a_bad_jsonl_line_is_skipped(tmp_path):
    from hires_vlm import fsio

    (tmp_path / "a.json").write_bytes(b'\xef\xbb\xbf[{"id": 1}]')
    assert fsio.read_records_file(tmp_path / "a.json") == [{"id": 1}]
    (tmp_path / "b.jsonl").write_bytes(b'{"id": 1}\n\xff\xfe not utf-8\n{oops\n\n{"id": 2}\n')
    bad: dict = {}
    assert fsio.read_records_file(tmp_path / "b.jsonl", bad) == [{"id": 1}, {"id": 2}]
    assert bad == {"line is not UTF-8": 1, "line is not valid JSON": 1}


def _fuzz():
    spec = importlib.util.spec_from_file_location("_fuzz_inputs", ROOT / "scripts" / "fuzz_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_fuzzed_inputs_through_check_training_and_eval(tmp_path):
    fuzz = _fuzz()
    report = fuzz.run(300, seed=1, out=tmp_path, memory=False)
    assert report["problems"] == []
    assert set(report["classes"]) == set(fuzz.IMAGE_CLASSES) | set(fuzz.RECORD_CLASSES)  # every class drawn
    assert report["training"]["records_skipped"] == report["n"] - report["expected_train"]["ok"] > 100


MEMORY_BOUND_MIB = 512


@pytest.mark.slow
def test_extreme_images_stay_within_the_memory_bound(tmp_path):
    """Peak RSS of every method's processor on 1x50000, 50000x1, 3x65000, 8192x8192 and 1x1 images
    (each in a fresh process) stays under 512 MiB; a 1x300000 file is refused before decoding."""
    mem = _fuzz().peak_memory(tmp_path)
    assert "refused" in mem["1x300000"]["views"] and "=1" not in mem["1x300000"]["views"]
    for label, m in mem.items():
        assert "error" not in m, (label, m)
        assert m["peak_mib"] < MEMORY_BOUND_MIB, (label, m)
