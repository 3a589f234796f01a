"""Every benchmark loader on its fixture in ``tests/fixtures/eval/`` (made by make_fixtures.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hires_vlm.eval.benchmarks import (
    BENCHMARKS,
    BenchmarkDataError,
    EvalSample,
    get_benchmark,
    load_benchmark,
    prediction_row,
)
from hires_vlm.eval.scorers import ChoiceAnnotation, MMBenchAnnotation

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
MC = "Answer with the option's letter from the given choices directly."
SHORT = "Answer the question using a single word or phrase."

EXPECTED_NAMES = {
    "textvqa", "vqav2", "gqa", "scienceqa_img", "ai2d", "seedbench", "mmmu", "pope", "mme", "mmbench",
    "chartqa", "mathvista", "synthetic",
}


def test_registry_names_and_unknown_name():
    assert set(BENCHMARKS) == EXPECTED_NAMES
    with pytest.raises(ValueError) as err:
        get_benchmark("mmvet")
    assert str(err.value).startswith("benchmark 'mmvet' is not supported; choose one of ai2d, chartqa, gqa,")


def _check_images(bench):
    for s in bench:
        for im in s.load_images():
            assert im.mode == "RGB" and im.size == (8, 8)


def test_textvqa():
    b = load_benchmark("textvqa", FIX / "textvqa")
    assert [s.question_id for s in b] == ["34602", "34603"]
    assert b.skipped == {"record lacks 'question'": 1}
    first = next(iter(b))
    assert first.prompt == f"what is the brand of this camera?\n{SHORT}"
    assert first.image == FIX / "textvqa" / "train_images" / "0054c91397f2fe05.jpg"
    assert len(b.annotations()["34602"].answers) == 10
    ocr = load_benchmark("textvqa", FIX / "textvqa" / "TextVQA_0.5.1_val.json", with_ocr_tokens=True)
    assert next(iter(ocr)).prompt == (
        f"what is the brand of this camera?\nReference OCR token: dakota, digital\n{SHORT}"
    )
    _check_images(b)


def test_textvqa_scores_through_benchmark():
    b = load_benchmark("textvqa", FIX / "textvqa")
    # q1: "dakota" given by 6 annotators → 1.0; q2: "3" given by 3 ("three", "3", "3") → 0.9
    assert b.score({34602: "Dakota.", 34603: "three"})["accuracy"] == pytest.approx(95.0)


def test_vqav2():
    b = load_benchmark("vqav2", FIX / "vqav2")
    assert [s.question_id for s in b] == ["42000", "42001"]
    assert b.skipped == {"'image_id' is not a number": 1}
    assert next(iter(b)).image == FIX / "vqav2" / "val2014" / "COCO_val2014_000000000042.jpg"
    m = b.score({"42000": "Yes", "42001": "two"})
    assert m["accuracy"] == pytest.approx(80.0)
    assert m["answer_type/number/accuracy"] == pytest.approx(60.0)
    _check_images(b)


def test_vqav2_without_annotations(tmp_path):
    shutil.copy(FIX / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json", tmp_path)
    b = load_benchmark("vqav2", tmp_path)
    assert len(b) == 2
    with pytest.raises(BenchmarkDataError, match="no ground-truth answers"):
        b.annotations()


def test_gqa():
    b = load_benchmark("gqa", FIX / "gqa")
    assert [s.question_id for s in b] == ["20968255", "20968256"]
    assert b.skipped == {"record lacks 'imageId'": 1}
    m = b.score({"20968255": "Yes.", "20968256": "White tray"})
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["structural/verify/accuracy"] == pytest.approx(100.0)
    _check_images(b)


def test_scienceqa_img_keeps_test_problems_with_images():
    b = load_benchmark("scienceqa_img", FIX / "scienceqa")
    assert [s.question_id for s in b] == ["1", "2"]  # 3 has no image, 4 is malformed, 5 is train
    assert b.skipped == {"'answer' is not an index into 'choices'": 1}
    s1, s2 = list(b)
    assert s1.prompt == f"Which is a mammal?\nA. shark\nB. whale\nC. trout\n{MC}"
    assert s2.prompt == f"Context: Read the words.\nWhich word is a noun?\nA. run\nB. dog\n{MC}"
    assert s1.image == FIX / "scienceqa" / "images" / "test" / "1" / "image.png"
    assert b.annotations()["2"] == ChoiceAnnotation(("run", "dog"), "B", "language science")
    m = b.score({"1": "B", "2": "run"})
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["category/natural_science/accuracy"] == pytest.approx(100.0)
    _check_images(b)


def test_ai2d_released_layout_test_split():
    b = load_benchmark("ai2d", FIX / "ai2d")
    assert [s.question_id for s in b] == ["0.png-0", "0.png-1"]  # 1.png is not in ai2d_test_ids.csv
    assert b.skipped == {"'correctAnswer' is not an index into 'answerTexts'": 1, "question file is not valid JSON": 1}
    assert next(iter(b)).prompt == f"Which part is the leaf?\nA. root\nB. leaf\nC. stem\nD. flower\n{MC}"
    assert b.score({"0.png-0": "B", "0.png-1": "moon"})["accuracy"] == pytest.approx(50.0)
    assert len(load_benchmark("ai2d", FIX / "ai2d", split="all")) == 3
    _check_images(b)


def test_ai2d_test_split_needs_id_list(tmp_path):
    shutil.copytree(FIX / "ai2d" / "questions", tmp_path / "questions")
    with pytest.raises(BenchmarkDataError, match="ai2d_test_ids.csv"):
        load_benchmark("ai2d", tmp_path)


def test_seedbench_image_questions():
    b = load_benchmark("seedbench", FIX / "seedbench")
    assert [s.question_id for s in b] == ["101669", "101670"]  # the video question is left out
    assert b.skipped == {"'answer' is not one of A, B, C, D": 1}
    assert next(iter(b)).prompt == f"What is in the scene?\nA. a beach\nB. a forest\nC. a city\nD. a desert\n{MC}"
    m = b.score({"101669": "B", "101670": "(D)"})
    assert m["category/scene_understanding/accuracy"] == pytest.approx(100.0)
    assert m["category/instance_counting/accuracy"] == pytest.approx(0.0)
    _check_images(b)


def test_mmmu_tsv_multi_image_and_open_questions():
    b = load_benchmark("mmmu", FIX / "mmmu")
    assert [s.question_id for s in b] == ["1", "2"]  # 3 is open, 4 is in the dev split
    assert b.skipped == {"open question (only multiple choice is scored)": 1}
    s1, s2 = list(b)
    assert s1.prompt == f"What does <image 1> show?\nA. a cell\nB. a star\n{MC}"
    assert len(s2.extra_images) == 1
    assert s2.load_images()[1].getpixel((0, 0)) == (200, 100, 0)
    assert len(load_benchmark("mmmu", FIX / "mmmu", split=None)) == 3
    assert b.score({"1": "A", "2": "C"})["accuracy"] == pytest.approx(50.0)
    _check_images(b)


def test_pope():
    b = load_benchmark("pope", FIX / "pope")
    ids = [s.question_id for s in b]
    assert ids == ["random/1", "random/2", "random/3", "random/4", "adversarial/1", "adversarial/2"]
    assert b.skipped == {"line is not valid JSON": 1, "'label' is neither yes nor no": 1}
    assert next(iter(b)).prompt == f"Is there a dog in the image?\n{SHORT}"
    preds = {
        "random/1": "Yes", "random/2": "No", "random/3": "No", "random/4": "Yes, there is.",
        "adversarial/1": "There is no bowl.", "adversarial/2": "Yes",
    }
    m = b.score(preds)
    assert m["random/f1"] == pytest.approx(50.0) and m["adversarial/f1"] == pytest.approx(100.0)
    assert m["mean/f1"] == pytest.approx(75.0)
    _check_images(b)


def test_pope_needs_a_split_file(tmp_path):
    with pytest.raises(BenchmarkDataError, match="coco_pope_random.json"):
        load_benchmark("pope", tmp_path)


def test_mme_both_layouts():
    b = load_benchmark("mme", FIX / "mme")  # the folder that contains MME_Benchmark_release_version
    ids = [s.question_id for s in b]
    assert ids == [
        "count/000000006040.jpg#0", "count/000000006040.jpg#1", "count/000000007000.jpg#0",
        "count/000000007000.jpg#1", "artwork/10002.jpg#0", "artwork/10002.jpg#1",
        "code_reasoning/0020.png#0", "code_reasoning/0020.png#1",
    ]
    assert b.skipped == {"line is not 'question<TAB>Yes|No'": 1, "question file without its image": 1}
    assert next(iter(b)).prompt == f"Are there two dogs in the image?\n{SHORT}"
    preds = dict(zip(ids, ["Yes", "No", "Yes", "Yes", "No, it is not.", "The answer is yes", "y", "N"]))
    m = b.score(preds)
    assert m["count/score"] == pytest.approx(125.0)
    assert m["perception"] == pytest.approx(175.0) and m["cognition"] == pytest.approx(200.0)
    _check_images(b)


def test_mme_missing_folder_error(tmp_path):
    with pytest.raises(BenchmarkDataError, match="no subtask folder"):
        load_benchmark("mme", tmp_path)


def test_mmbench_makes_circular_copies_like_llava():
    b = load_benchmark("mmbench", FIX / "mmbench")
    ids = [s.question_id for s in b]
    assert ids == ["7", "1000007", "2000007", "3000007", "8", "1000008", "9", "1000009"]
    assert b.skipped == {"'index' is not an integer": 1}
    anns = b.annotations()
    assert "9" not in anns  # no answer: test split
    assert anns["2000007"] == MMBenchAnnotation(
        ("bird", "fish", "cat", "dog"), "D", "7", 2, "object_localization", "finegrained_perception"
    )
    s8 = next(s for s in b if s.question_id == "1000008")
    assert s8.prompt == f"Look at the trees.\nWhich season is it?\nA. winter\nB. summer\n{MC}"
    m = b.score({"7": "B", "1000007": "A. dog", "2000007": "The answer is D.", "3000007": "dog",
                 "8": "B", "1000008": "B"})
    assert (m["accuracy"], m["vanilla_accuracy"]) == pytest.approx((50.0, 100.0))
    assert [s.question_id for s in load_benchmark("mmbench", FIX / "mmbench", circular=False)] == ["7", "8", "9"]
    _check_images(b)


def test_mmbench_released_circular_copies_and_image_references():
    b = load_benchmark("mmbench", FIX / "mmbench_circular")
    assert [s.question_id for s in b] == ["3", "1000003", "4", "1000004", "2000004"]
    assert b.skipped == {"'image' refers to a row without an image": 1}
    # "1000003" stores the index of the row whose image it shares
    assert next(s for s in b if s.question_id == "1000003").load_image().getpixel((0, 0)) == (250, 150, 50)
    assert "nan" not in next(iter(b)).prompt  # a "nan" hint is no hint
    m = b.score({"3": "apple", "1000003": "(B)", "4": "B", "1000004": "A", "2000004": "I cannot tell"})
    assert (m["accuracy"], m["vanilla_accuracy"], m["n_unparsed"]) == (50.0, 100.0, 1)
    _check_images(b)


def test_chartqa():
    b = load_benchmark("chartqa", FIX / "chartqa" / "ChartQA Dataset")
    assert [s.question_id for s in b] == ["human/0", "human/1", "augmented/0"]
    assert b.skipped == {"record lacks 'query'": 1}
    assert next(iter(b)).prompt == "What is the highest value?\nAnswer the question with a single word."
    assert len(load_benchmark("chartqa", FIX / "chartqa" / "ChartQA Dataset" / "test")) == 3
    m = b.score({"human/0": "60", "human/1": "No", "augmented/0": "0.41"})
    assert m["mean/accuracy"] == pytest.approx(75.0)
    _check_images(b)


def test_mathvista():
    b = load_benchmark("mathvista", FIX / "mathvista")
    assert [s.question_id for s in b] == ["1", "2", "3"]
    assert b.skipped == {"numeric answer is not a number": 1}
    s1, _, s3 = list(b)
    assert s1.prompt == (
        "How long is the bar? (Unit: cm)\n"
        "Answer the question using a single floating-point number with one decimal place."
    )
    assert s3.prompt == f"Which shape is shown?\nA. circle\nB. square\nC. triangle\n{MC}"
    assert b.annotations()["1"].precision == 1
    m = b.score({"1": "The bar is 1.23 cm long", "2": "1,000 apples", "3": "B"})
    assert m["accuracy"] == pytest.approx(100.0)
    _check_images(b)


@pytest.mark.parametrize(
    "name, rel, fragment",
    [
        ("textvqa", "nowhere", "TextVQA_0.5.1_val.json"),
        ("gqa", "nowhere", "testdev_balanced_questions.json"),
        ("vqav2", "nowhere", "v2_OpenEnded_mscoco"),
        ("scienceqa_img", "nowhere", "problems.json"),
        ("seedbench", "nowhere", "SEED-Bench.json"),
        ("mmbench", "nowhere", "MMBench TSV"),
        ("mmmu", "nowhere", "MMMU_DEV_VAL.tsv"),
        ("chartqa", "nowhere", "ChartQA folder"),
        ("mathvista", "nowhere", "testmini.json"),
        ("ai2d", "nowhere", "ai2d/"),
    ],
)
def test_missing_files_name_what_is_expected(tmp_path, name, rel, fragment):
    with pytest.raises(BenchmarkDataError) as err:
        load_benchmark(name, tmp_path / rel)
    assert fragment in str(err.value) and str(tmp_path / rel) in str(err.value)


def test_empty_folder_names_expected_file(tmp_path):
    with pytest.raises(BenchmarkDataError, match="problems.json"):
        load_benchmark("scienceqa_img", tmp_path)
    with pytest.raises(BenchmarkDataError, match="exactly one .tsv"):
        load_benchmark("mmbench", tmp_path)


def test_invalid_json_is_a_clear_error(tmp_path):
    (tmp_path / "testdev_balanced_questions.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="not valid JSON"):
        load_benchmark("gqa", tmp_path)


def test_tsv_without_required_column(tmp_path):
    (tmp_path / "x.tsv").write_text("idx\tquestion\n1\tq\n", encoding="utf-8")
    with pytest.raises(BenchmarkDataError, match="lacks column"):
        load_benchmark("mmbench", tmp_path)


def test_missing_image_names_the_file(tmp_path):
    sample = EvalSample("q1", tmp_path / "gone.jpg", "p")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        sample.load_image()


def test_batches_and_prediction_rows():
    b = load_benchmark("mme", FIX / "mme")
    batches = list(b.batches(3))
    assert [len(x) for x in batches] == [3, 3, 2]
    assert [s.question_id for x in batches for s in x] == [s.question_id for s in b]
    assert [len(x) for x in b.batches(3, limit=4)] == [3, 1]
    with pytest.raises(ValueError):
        list(b.batches(0))
    row = prediction_row(batches[0][0], "Yes", "tiny-llava")
    assert row == {"question_id": "count/000000006040.jpg#0", "prompt": batches[0][0].prompt,
                   "text": "Yes", "model_id": "tiny-llava"}
    json.dumps(row)  # serialisable as a JSONL row


@pytest.mark.parametrize("name, file_name", [("ai2d", "AI2D_TEST.tsv"), ("seedbench", "SEEDBench_IMG.tsv")])
def test_vlmevalkit_tsv_variants(tmp_path, name, file_name):
    shutil.copy(FIX / "mmmu" / "MMMU_DEV_VAL.tsv", tmp_path / file_name)
    for where in (tmp_path, tmp_path / file_name):  # the folder or the file itself
        b = load_benchmark(name, where)
        assert [s.question_id for s in b] == ["1", "2", "4"]  # no split filter; row 3 has no options
        assert b.skipped == {"fewer than two options": 1}
        assert b.annotations()["2"] == ChoiceAnnotation(("same", "different", "unclear"), "B", "Art")


def test_bad_base64_image_is_a_clear_error():
    from hires_vlm.eval.benchmarks import Base64Image

    with pytest.raises(ValueError, match="cannot decode base64 image"):
        EvalSample("q", Base64Image("bm90IGFuIGltYWdl"), "p").load_image()


@pytest.mark.slow
def test_eval_package_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, hires_vlm.eval, hires_vlm.eval.cli_score; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_synthetic_benchmark_loads_and_scores(tmp_path):
    from hires_vlm.data.synthetic import generate_benchmark
    from hires_vlm.eval.benchmarks import load_benchmark

    generate_benchmark(tmp_path, train_per_family=1, test_per_family=2, seed=0, separability_samples=20)
    bench = load_benchmark("synthetic", tmp_path)
    samples = list(bench)
    assert len(samples) == 12 and "<image>" not in samples[0].prompt
    assert samples[0].load_image().size[0] > 0
    gold = {s.question_id: bench.annotations()[s.question_id]["conversations"][1]["value"] for s in samples}
    perfect = bench.score(gold)
    assert perfect["accuracy"] == 100.0 and perfect["n_missing"] == 0
    half = bench.score({k: v for i, (k, v) in enumerate(gold.items()) if i % 2 == 0})
    assert half["accuracy"] == 50.0 and half["n_missing"] == 6
