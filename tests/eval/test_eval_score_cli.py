"""score_predictions on LLaVA answer files and the ``score`` subcommand."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hires_vlm.cli import main
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
    with pytest.raises(ValueError, match="1 of the 1 answers match no question"):
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


def _pope_dir(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True)
    for split in ("random", "popular", "adversarial"):
        with open(root / f"coco_pope_{split}.json", "w") as f:
            for i in range(n):
                f.write(json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i}.jpg", "text": f"Is there a {split}?",
                                    "label": "yes" if i % 2 == 0 else "no"}) + "\n")
    return root


def test_plain_pope_ids_are_an_error_that_says_why_not_a_zero(tmp_path):
    """Regression: plain ids of coco_pope_random.json over all three splits reported accuracy 0 and exit 0."""
    ann = _pope_dir(tmp_path / "pope")
    answers = _write(tmp_path / "a.jsonl", [{"question_id": i + 1, "text": "Yes"} for i in range(4)])
    with pytest.raises(ValueError, match="answers match no question") as err:
        score_predictions("pope", answers, ann)
    assert "'random/1'" in str(err.value) and "splits=random" in str(err.value)
    assert main(["score", "--benchmark", "pope", "--predictions", str(answers), "--annotations", str(ann)]) == 2
    # One split given, as the file or as an option: the plain ids are that split's.
    by_file = score_predictions("pope", answers, ann / "coco_pope_random.json")
    by_option = score_predictions("pope", answers, ann, splits="random")
    assert by_file["random/accuracy"] == by_option["random/accuracy"] == 50.0 and by_file["n_missing"] == 0


def test_llava_pope_answer_files_score_as_llava_s_eval_pope(tmp_path):
    """LLaVA: ``model_vqa_loader.py`` answers llava_pope_test.jsonl (global ids, 'category' = split);
    ``eval_pope.py`` then zips each category's answers, in file order, with coco_pope_<category>.json's labels."""
    ann = _pope_dir(tmp_path / "pope" / "coco")
    questions, answers, qid = [], [], 1000
    texts = {"random": ["Yes", "No", "No", "No"], "popular": ["Yes", "Yes", "Yes", "Yes"],
             "adversarial": ["No", "No", "No", "No"]}
    for split in ("adversarial", "popular", "random"):
        for i in range(4):
            questions.append({"question_id": qid, "image": f"COCO_val2014_{i}.jpg", "text": "?", "category": split})
            answers.append({"question_id": qid, "prompt": "?", "text": texts[split][i]})
            qid += 1
    _write(tmp_path / "pope" / "llava_pope_test.jsonl", questions)  # LLaVA's playground/data/eval/pope layout
    m = score_predictions("pope", _write(tmp_path / "ans.jsonl", answers), ann)
    # By eval_pope.py's rule: labels yes, no, yes, no in every split.
    assert m["random/accuracy"] == 75.0 and m["popular/accuracy"] == 50.0 and m["adversarial/accuracy"] == 50.0
    assert m["n_missing"] == 0 and m["n_extra"] == 0


def test_annotations_may_be_the_file_or_its_folder(tmp_path):
    from hires_vlm.data.synthetic import generate_benchmark
    from hires_vlm.eval import load_benchmark

    generate_benchmark(tmp_path / "syn", train_per_family=1, test_per_family=2, families=["quadrant"],
                       separability_samples=0, num_workers=1)
    by_folder = load_benchmark("synthetic", tmp_path / "syn")
    by_file = load_benchmark("synthetic", tmp_path / "syn" / "test.json")
    assert [s.question_id for s in by_file] == [s.question_id for s in by_folder]
    train = load_benchmark("synthetic", tmp_path / "syn" / "train.json")
    assert [s.question_id for s in train] == ["quadrant-train-00000"]
