"""score_predictions on LLaVA answer files and the ``score`` subcommand."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hires_vlm.eval.cli_score import add_parser, run
from hires_vlm.eval.score import print_table, read_predictions, score_predictions, write_predictions

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
SRC = Path(__file__).resolve().parents[2] / "src"

POPE_ANSWERS = [
    {"question_id": "random/1", "text": "Yes"},
    {"question_id": "random/2", "text": "Yes"},  # overwritten below: last wins
    {"question_id": "random/3", "text": "No"},
    {"question_id": "random/4", "text": "Yes, there is."},
    {"question_id": "adversarial/1", "text": "There is no bowl."},
    {"question_id": "adversarial/2", "text": "Yes"},
    {"question_id": "random/2", "text": "No"},
    {"question_id": "unknown/9", "text": "Yes"},
]


def _write(path: Path, rows, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def test_read_predictions_counts(tmp_path):
    p = _write(tmp_path / "a.jsonl", POPE_ANSWERS, ["not json", '{"question_id": 1}', "", '["a list"]'])
    preds, counts = read_predictions(p)
    assert preds["random/2"] == "No"
    assert counts == {"n_lines": 11, "n_malformed_lines": 3, "n_duplicates": 1}


def test_read_predictions_mmbench_round_ids(tmp_path):
    p = _write(tmp_path / "a.jsonl", [{"question_id": 7, "round_id": 0, "text": "B"},
                                      {"question_id": 7, "round_id": 2, "text": "D"}])
    assert read_predictions(p, mmbench_rounds=True)[0] == {"7": "B", "2000007": "D"}
    assert read_predictions(p)[0] == {"7": "D"}


def test_score_predictions_pope(tmp_path):
    p = _write(tmp_path / "a.jsonl", POPE_ANSWERS, ["broken"])
    m = score_predictions("pope", p, FIX / "pope")
    # random: TP FN TN FP → F1 50; adversarial: TN TP → F1 100
    assert m["random/f1"] == pytest.approx(50.0)
    assert m["mean/f1"] == pytest.approx(75.0)
    assert (m["n_missing"], m["n_extra"], m["n_duplicates"], m["n_malformed_lines"], m["n_skipped_records"]) == (
        0, 1, 1, 1, 2
    )
    assert m["n_predictions"] == 7


def test_score_predictions_only_predicted(tmp_path):
    p = _write(tmp_path / "a.jsonl", [{"question_id": "34602", "text": "dakota"}])
    full = score_predictions("textvqa", p, FIX / "textvqa")
    part = score_predictions("textvqa", p, FIX / "textvqa", only_predicted=True)
    assert (full["accuracy"], full["n_missing"]) == (pytest.approx(50.0), 1)
    assert (part["accuracy"], part["n_missing"], part["n"]) == (pytest.approx(100.0), 0, 1)
    q = _write(tmp_path / "b.jsonl", [{"question_id": "nope", "text": "x"}])
    with pytest.raises(ValueError, match="none of the 1 predicted"):
        score_predictions("textvqa", q, FIX / "textvqa", only_predicted=True)


def test_write_predictions_roundtrip(tmp_path):
    rows = [{"question_id": "1", "prompt": "p", "text": "é", "model_id": "m"}]
    assert write_predictions(tmp_path / "x.jsonl", rows) == 1
    assert read_predictions(tmp_path / "x.jsonl")[0] == {"1": "é"}


def _args(*argv):
    parser = argparse.ArgumentParser(prog="hires-vlm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_cli_json(tmp_path, capsys):
    p = _write(tmp_path / "a.jsonl", POPE_ANSWERS)
    args = _args("score", "--benchmark", "pope", "--predictions", str(p), "--annotations", str(FIX / "pope"), "--json")
    assert args.func is run
    assert run(args) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["adversarial/accuracy"] == pytest.approx(100.0)
    assert metrics["n_duplicates"] == 1


def test_cli_table_and_missing_warning(tmp_path, capsys):
    p = _write(tmp_path / "a.jsonl", [{"question_id": "1", "text": "B"}])
    assert run(_args("score", "--benchmark", "scienceqa_img", "--predictions", str(p),
                     "--annotations", str(FIX / "scienceqa"))) == 0
    out, err = capsys.readouterr()
    assert "accuracy" in out and "50.00" in out  # 1 of 2 right, the other missing
    assert "1 question(s) have no answer" in err


def test_cli_errors_exit_2(tmp_path, capsys):
    p = _write(tmp_path / "a.jsonl", POPE_ANSWERS)
    assert run(_args("score", "--benchmark", "nope", "--predictions", str(p), "--annotations", str(FIX))) == 2
    assert "benchmark 'nope' is not supported" in capsys.readouterr().err
    assert run(_args("score", "--benchmark", "pope", "--predictions", str(tmp_path / "gone.jsonl"),
                     "--annotations", str(FIX / "pope"))) == 2
    assert "gone.jsonl" in capsys.readouterr().err
    assert run(_args("score", "--benchmark", "pope", "--predictions", str(p),
                     "--annotations", str(tmp_path / "nodata"))) == 2
    assert "nodata" in capsys.readouterr().err


def test_print_table_formats(capsys):
    print_table({"accuracy": 12.3456, "n": 3})
    out = capsys.readouterr().out.splitlines()
    assert out[-2].split() == ["accuracy", "12.35"]
    assert out[-1].split() == ["n", "3"]


@pytest.mark.slow
def test_cli_module_subprocess(tmp_path):
    rows = [{"question_id": "0.png-0", "text": "(B)"}, {"question_id": "0.png-1", "text": "B"}]
    p = _write(tmp_path / "a.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "hires_vlm.eval.cli_score", "score", "--benchmark", "ai2d",
         "--predictions", str(p), "--annotations", str(FIX / "ai2d"), "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"] == pytest.approx(50.0)
