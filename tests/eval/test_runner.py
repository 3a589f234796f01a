"""``evaluate`` / ``hires-vlm eval``: answers written as they come, exact resume, bad samples, scores."""

from __future__ import annotations

import doctest
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from hires_vlm.eval import load_benchmark, runner
from hires_vlm.eval.runner import PREDICTIONS_FILE, RUN_FILE, SCORES_FILE, evaluate, read_answered

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
ROW_KEYS = {"question_id", "prompt", "text", "model_id"}

# fixture folder -> (benchmark, data path inside it)
FIXTURES = {
    "ai2d": ("ai2d", ""),
    "chartqa": ("chartqa", "ChartQA Dataset"),
    "gqa": ("gqa", ""),
    "mathvista": ("mathvista", ""),
    "mmbench": ("mmbench", ""),
    "mmbench_circular": ("mmbench", ""),
    "mme": ("mme", ""),
    "mmmu": ("mmmu", ""),
    "pope": ("pope", ""),
    "scienceqa": ("scienceqa_img", ""),
    "seedbench": ("seedbench", ""),
    "textvqa": ("textvqa", ""),
    "vqav2": ("vqav2", ""),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny llava_hd model: the layout training writes (weights, tokenizer, processor, generation config)."""
    from hires_vlm.tiny import build_tiny

    model, processor = build_tiny("llava_hd")
    path = tmp_path_factory.mktemp("tiny_llava_hd")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return runner.load_model(tiny_dir, "cpu")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _write_pope(root: Path, n: int) -> Path:
    """A POPE-layout benchmark of ``n`` questions over images of several sizes (so batches are padded)."""
    (root / "val2014").mkdir(parents=True)
    sizes = [(40, 30), (30, 60), (90, 20), (16, 16), (64, 48)]
    for k, size in enumerate(sizes):
        Image.new("RGB", size, (40 * k, 255 - 40 * k, 90)).save(root / "val2014" / f"img{k}.png")
    with open(root / "coco_pope_random.json", "w") as f:
        for i in range(n):
            question = f"Is there a {['dog', 'cat', 'car', 'tree', 'cup'][i % 5]} in the image?" + " Look." * (i % 3)
            f.write(json.dumps({"question_id": i, "image": f"img{i % len(sizes)}.png", "text": question,
                                "label": "yes" if i % 2 else "no"}) + "\n")
    return root


def test_docstring_examples():
    result = doctest.testmod(runner)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("folder", sorted(FIXTURES))
def test_every_fixture_benchmark_is_answered_and_scored(folder, tiny, tmp_path):
    name, sub = FIXTURES[folder]
    data = FIX / folder / sub
    bench = load_benchmark(name, data)
    report = evaluate(tiny, name, data, tmp_path, batch_size=3, max_new_tokens=3, progress=False)

    rows = _rows(tmp_path / PREDICTIONS_FILE)
    assert [r["question_id"] for r in rows] == [s.question_id for s in bench]  # file order, one row each
    assert all(set(r) == ROW_KEYS and isinstance(r["text"], str) for r in rows)
    assert json.loads((tmp_path / SCORES_FILE).read_text()) == json.loads(json.dumps(report))
    counts = report["counts"]
    assert counts["n_questions"] == counts["n_answered"] == counts["n_generated"] == len(bench)
    assert counts["n_skipped_samples"] == 0 and counts["n_skipped_records"] == bench.n_skipped
    metrics = report["metrics"]
    assert report["headline"]["metric"] in metrics
    assert 0.0 <= report["headline"]["value"] <= (2800.0 if name == "mme" else 100.0)
    assert metrics["n_missing"] == 0 and metrics["n_extra"] == 0
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic writes left no temporary file


def test_interrupted_run_resumes_to_the_same_file(tiny, tmp_path):
    """Killed after two batches, with the next batch half on disk: the resumed file equals a clean run's."""
    data = _write_pope(tmp_path / "pope", 11)
    kwargs = dict(batch_size=3, max_new_tokens=4, progress=False)
    clean = evaluate(tiny, "pope", data, tmp_path / "clean", **kwargs)
    clean_text = (tmp_path / "clean" / PREDICTIONS_FILE).read_text(encoding="utf-8")
    clean_lines = clean_text.splitlines(keepends=True)

    class Killed(Exception):
        pass

    def die_after_two(k, rows):
        if k == 1:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        evaluate(tiny, "pope", data, out, on_batch=die_after_two, **kwargs)
    pred = out / PREDICTIONS_FILE
    assert pred.read_text(encoding="utf-8") == "".join(clean_lines[:6])
    assert not (out / SCORES_FILE).exists()
    # The third batch died mid-write: one complete row and half of the next.
    with open(pred, "a", encoding="utf-8") as f:
        f.write(clean_lines[6] + clean_lines[7][: len(clean_lines[7]) // 2])

    calls = []
    report = evaluate(tiny, "pope", data, out, on_batch=lambda k, rows: calls.append((k, len(rows))), **kwargs)
    assert pred.read_text(encoding="utf-8") == clean_text  # same rows, same order, nothing twice
    assert calls == [(2, 2), (3, 2)]  # batches 0-1 skipped; batch 2 recomputed whole, only 2 rows written
    assert report["counts"]["n_resumed"] == 7 and report["counts"]["n_generated"] == 4
    assert report["metrics"] == clean["metrics"]
    # A finished run resumed again generates nothing and scores the same.
    again = evaluate(tiny, "pope", data, out, **kwargs)
    assert again["counts"]["n_generated"] == 0 and again["metrics"] == clean["metrics"]


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_exactly(tiny_dir, tmp_path):
    """A real ``hires-vlm eval`` process killed with SIGKILL mid-run, then the same run again."""
    n = 12
    data = _write_pope(tmp_path / "pope", n)
    out = tmp_path / "killed"
    settings = ["--batch-size", "2", "--max-new-tokens", "4"]
    cmd = [sys.executable, "-m", "hires_vlm.cli", "eval", "--model", str(tiny_dir), "--benchmark", "pope",
           "--data", str(data), "--out", str(out), *settings, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pred = out / PREDICTIONS_FILE
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if pred.exists() and pred.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    n_before = pred.read_bytes().count(b"\n")
    assert 2 <= n_before < n

    # The same run again (in this process, to spare a second start-up): it continues the file.
    report = evaluate(tiny_dir, "pope", data, out, batch_size=2, max_new_tokens=4, progress=False)
    assert report["counts"]["n_resumed"] == n_before and report["counts"]["n_generated"] == n - n_before

    clean = evaluate(tiny_dir, "pope", data, tmp_path / "clean", batch_size=2, max_new_tokens=4, progress=False)
    rows = _rows(pred)
    assert [r["question_id"] for r in rows] == [f"random/{i}" for i in range(n)]  # none missing, none twice
    assert rows == _rows(tmp_path / "clean" / PREDICTIONS_FILE)
    assert report["metrics"] == clean["metrics"]


def test_bad_images_are_skipped_and_counted(tiny, tmp_path):
    data = _write_pope(tmp_path / "pope", 10)
    (data / "val2014" / "img1.png").unlink()  # questions 1 and 6
    (data / "val2014" / "img2.png").write_bytes(b"not an image at all")  # questions 2 and 7
    report = evaluate(tiny, "pope", data, tmp_path / "out", batch_size=4, max_new_tokens=2, progress=False)
    assert report["skipped_samples"] == {"missing image": 2, "unreadable image": 2}
    assert report["counts"]["n_skipped_samples"] == 4 and report["counts"]["n_answered"] == 6
    assert {e["question_id"] for e in report["skipped_examples"]} == {"random/1", "random/6", "random/2", "random/7"}
    assert "img1.png" in report["skipped_examples"][0]["message"]
    ids = [r["question_id"] for r in _rows(tmp_path / "out" / PREDICTIONS_FILE)]
    assert ids == [f"random/{i}" for i in (0, 3, 4, 5, 8, 9)]
    assert report["metrics"]["n_missing"] == 4  # skipped questions count as unanswered
    # A rerun tries the bad ones again (still bad) and writes nothing twice.
    again = evaluate(tiny, "pope", data, tmp_path / "out", batch_size=4, max_new_tokens=2, progress=False)
    assert again["counts"]["n_generated"] == 0 and again["counts"]["n_skipped_samples"] == 4
    assert [r["question_id"] for r in _rows(tmp_path / "out" / PREDICTIONS_FILE)] == ids


def test_limit_scores_only_the_questions_asked(tiny, tmp_path):
    report = evaluate(tiny, "mme", FIX / "mme", tmp_path, limit=3, batch_size=2, max_new_tokens=2, progress=False)
    assert len(_rows(tmp_path / PREDICTIONS_FILE)) == 3
    assert report["counts"]["n_questions"] == 3 and report["metrics"]["n"] == 3
    assert report["metrics"]["n_missing"] == 0
    # Raising the limit continues the same file.
    more = evaluate(tiny, "mme", FIX / "mme", tmp_path, limit=5, batch_size=2, max_new_tokens=2, progress=False)
    assert more["counts"]["n_resumed"] == 3 and more["counts"]["n_generated"] == 2


def test_resume_refuses_answers_of_another_run(tiny, tmp_path):
    evaluate(tiny, "pope", FIX / "pope", tmp_path, limit=2, max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens: 2 there, 3 now"):
        evaluate(tiny, "pope", FIX / "pope", tmp_path, limit=2, max_new_tokens=3, progress=False)
    report = evaluate(tiny, "pope", FIX / "pope", tmp_path, limit=2, max_new_tokens=3, overwrite=True, progress=False)
    assert report["counts"]["n_generated"] == 2
    assert json.loads((tmp_path / RUN_FILE).read_text())["max_new_tokens"] == 3


def test_multi_image_questions_get_one_placeholder_per_image(tiny):
    model, processor = tiny
    images = [Image.new("RGB", (40, 30)), Image.new("RGB", (90, 20))]
    enc = runner.encode_request(processor, "Compare <image 1> and <image 2>.", images)
    assert enc.input_ids.count(model.config.image_token_id) == 2
    assert enc.image_sizes == [(40, 30), (90, 20)]
    records = model.records_for(enc.image_sizes)
    assert enc.pixel_values.shape[0] == sum(r.num_views for r in records)
    batch = runner.collate_for_generation(processor, [enc, runner.encode_request(processor, "No image here.")])
    assert batch["image_sizes"].tolist() == [[40, 30], [90, 20]]
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]  # left-padded


def test_read_answered_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"question_id": 1, "text": "x"}\nnot json\n{"question_id": "b", "text": "y"}\n{"question_')
    answered, cut = read_answered(path)
    assert answered == {"1", "b"} and cut == len(b'{"question_')
    assert path.read_bytes().endswith(b'"y"}\n')
    assert read_answered(tmp_path / "missing.jsonl") == (set(), 0)


def test_invalid_arguments(tiny, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny, "pope", FIX / "pope", tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="not supported"):
        evaluate(tiny, "mmvet", FIX / "pope", tmp_path)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        evaluate(tmp_path / "nope", "pope", FIX / "pope", tmp_path)


def test_cli_eval_prints_the_table_and_writes_the_report(tiny_dir, tmp_path, capsys):
    from hires_vlm.cli import main

    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_dir), "--benchmark", "pope", "--data", str(FIX / "pope"), "--out", str(out),
            "--limit", "4", "--batch-size", "2", "--max-new-tokens", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mean/f1" in printed and "n_answered" in printed and str(out / SCORES_FILE) in printed
    report = json.loads((out / SCORES_FILE).read_text())
    assert report["model_id"] == tiny_dir.name and report["counts"]["n_answered"] == 4
    assert report["settings"]["limit"] == 4 and report["settings"]["batch_size"] == 2
    # Bad input: exit code 2 and one line naming the problem.
    assert main(argv[:6] + [str(tmp_path / "nowhere")] + argv[7:]) == 2
    assert "coco_pope_" in capsys.readouterr().err


def test_a_different_model_never_reuses_the_answers_of_another(tmp_path, tiny_dir):
    """Regression (issue 14): runs/demo-quick/…/final and runs/demo/…/final shared eval_results/<last three
    parts>, and the second model silently scored the first one's answers."""
    import shutil

    from hires_vlm.eval.cli_eval import default_out
    from hires_vlm.tiny import build_tiny

    data = _write_pope(tmp_path / "pope", 6)
    a = tmp_path / "runs" / "demo" / "models" / "x" / "final"
    b = tmp_path / "runs" / "demo-quick" / "models" / "x" / "final"
    shutil.copytree(tiny_dir, a)
    model, proc = build_tiny("llava_hd", seed=1)  # another model, same layout and folder names
    model.save_pretrained(b)
    proc.save_pretrained(b)
    assert runner.default_model_id(a) == runner.default_model_id(b)
    assert default_out(a, "pope") != default_out(b, "pope")
    out = tmp_path / "shared"
    evaluate(str(a), "pope", data, out, max_new_tokens=2, progress=False)
    with pytest.raises(ValueError, match="model_fingerprint"):
        evaluate(str(b), "pope", data, out, max_new_tokens=2, progress=False)
    for change, match in ((dict(max_new_tokens=3), "max_new_tokens"), (dict(batch_size=2), "batch_size"),
                          (dict(method_runtime={"branches": "global"}), "cannot change at run time")):
        kwargs = {"max_new_tokens": 2, **change}
        with pytest.raises(ValueError, match=match):
            evaluate(str(a), "pope", data, out, progress=False, **kwargs)
    again = evaluate(str(a), "pope", data, out, max_new_tokens=2, progress=False)  # the same run: resumed
    assert again["counts"]["n_resumed"] == 6 and again["counts"]["n_generated"] == 0


def test_answers_without_a_run_record_are_not_resumed(tmp_path, tiny_dir):
    data = _write_pope(tmp_path / "pope", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / PREDICTIONS_FILE).write_text(json.dumps({"question_id": "random/0", "text": "yes"}) + "\n")
    with pytest.raises(ValueError, match="did not record which model"):
        evaluate(str(tiny_dir), "pope", data, out, max_new_tokens=2, progress=False)


def _torchrun_eval(model_dir, data, out, port, *extra):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "hires_vlm.cli", "eval", "--model", str(model_dir), "--benchmark", "pope", "--data", str(data),
           "--out", str(out), "--batch-size", "2", "--max-new-tokens", "3", "--no-progress", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_eval_gives_the_single_process_answers_and_resumes(tmp_path, tiny_dir):
    """2 CPU processes (gloo): rank r answers batches r, r+2, …; rank 0 merges the shards in question order.
    The merged file is byte for byte the one process's, also after a kill left partial shards."""
    import torch

    data = _write_pope(tmp_path / "pope", 11)
    torch.set_num_threads(1)  # the ranks run one thread each: the same arithmetic
    single = evaluate(str(tiny_dir), "pope", data, tmp_path / "single", batch_size=2, max_new_tokens=3,
                      progress=False)
    reference = (tmp_path / "single" / PREDICTIONS_FILE).read_bytes()
    _torchrun_eval(tiny_dir, data, tmp_path / "multi", 29541)
    assert (tmp_path / "multi" / PREDICTIONS_FILE).read_bytes() == reference
    assert not list((tmp_path / "multi").glob("predictions.rank*"))
    scores = json.loads((tmp_path / "multi" / SCORES_FILE).read_text())
    assert scores["metrics"] == single["metrics"] and scores["counts"]["n_generated"] == 11

    # A kill: rank 0 had written batches 0 and 2 and half a line, rank 1 batch 1; nothing merged yet.
    out = tmp_path / "killed"
    out.mkdir()
    rows = reference.decode().splitlines(keepends=True)
    (out / RUN_FILE).write_text((tmp_path / "multi" / RUN_FILE).read_text())
    (out / "predictions.rank0.jsonl").write_text(rows[0] + rows[1] + rows[4] + rows[5] + rows[8][:20])
    (out / "predictions.rank1.jsonl").write_text(rows[2] + rows[3])
    _torchrun_eval(tiny_dir, data, out, 29542)
    assert (out / PREDICTIONS_FILE).read_bytes() == reference
    resumed = json.loads((out / SCORES_FILE).read_text())
    assert resumed["counts"]["n_resumed"] == 6 and resumed["counts"]["n_generated"] == 5
