"""SMR builder: every source converter on its fixture, dedup, test-mini exclusion, skip reasons,
missing sources, caps, atomic output and the ``smr`` CLI.

Fixtures live in ``tests/fixtures/smr/<source>/`` in each source's released layout (remade by
``tests/fixtures/smr/make_fixtures.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hires_vlm.data.smr import SMRError, build_smr, report_path
from hires_vlm.data.smr import cli, prompts, registry
from hires_vlm.data.smr.images import ImageChecker
from hires_vlm.data.smr.records import Candidate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "smr"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("smr") / "smr.json"
    report = build_smr(FIXTURES, out, progress=False)
    records = json.loads(out.read_text(encoding="utf-8"))
    return report, {record["id"]: record for record in records}, records, out


def _turns(record: dict) -> tuple[str, str]:
    human, gpt = record["conversations"]
    assert (human["from"], gpt["from"]) == ("human", "gpt")
    return human["value"], gpt["value"]


# One record (or more) per source, with the exact conversation text it must produce.
EXPECTED = {
    "scienceqa_1": (
        "<image>\nContext: Hawks have sharp claws.\n"
        "Which animal's feet are also adapted for grabbing prey?\nA. duck\nB. eagle",
        "An adaptation is an inherited trait that helps an organism survive.\n"
        "Look at the eagle's feet: they have sharp claws.\nThe answer is B. eagle.",
    ),
    "tqa_DQ_000001": (
        "<image>\nWhich part absorbs water?\nA. leaf\nB. root\nC. stem",
        "The answer is B. root.",
    ),
    "tqa_desc_TD_0001": (
        "<image>\nExamine the image closely and share its details",
        "The diagram shows the roots of a plant taking up water from the soil.",
    ),
    "ai2d_0.png-0": (
        "<image>\nWhich stage comes after the egg?\nA. larva\nB. pupa\nC. adult\nD. egg",
        "The answer is A. larva.",
    ),
    "chartqa_train_human_0": (
        "<image>\nWhat is the value of the tallest bar?\n"
        "Answer the question using a single word or phrase.",
        "42",
    ),
    "dvqa_1": (
        "<image>\nWhich bar has the largest value?\n"
        "Answer the question using a single word or phrase.",
        "cat",
    ),
    "tabmwp_7": (
        "<image>\nHow many pages did Ann read in total? (Unit: pages)",
        "Ann read 5 pages on Monday and 7 pages on Tuesday. 5 + 7 = 12.\nThe answer is 12.",
    ),
    "tabmwp_8": (
        "<image>\nIs the number of pages read on Tuesday even or odd?\nA. even\nB. odd",
        "Ann read 7 pages on Tuesday. 7 is odd.\nThe answer is B. odd.",
    ),
    "geoqa3_2": (
        "<image>\n如图,在⊙O中,AB是弦,OC⊥AB,半径为5,CE=2,则AB的长为()\n"
        "A. 2\nB. 4\nC. 6\nD. 8",
        "OE=5-2=3,AE=√(5²-3²)=4,所以AB=2AE=8.\nThe answer is D. 8.",
    ),
    "geoqa_plus_1002": (
        "<image>\n如图,正方形ABCD的边长为2,则对角线AC的长为()\n"
        "A. 2\nB. 2√2\nC. 4\nD. √2",
        "The answer is B. 2√2.",
    ),
    "geometry3k_0": (
        "<image>\nFind x.\nA. 3\nB. 5\nC. 7\nD. 9",
        "The diagram shows: Equals(LengthOf(Line(A, C)), 5); "
        "Equals(LengthOf(Line(A, C)), LengthOf(Line(C, B))); Equals(LengthOf(Line(C, B)), x).\n"
        "The answer is B. 5.",
    ),
    "mathvision_1": (
        "<image>\nHow many different digits can you find in this picture?\n"
        "Answer the question using a single word or phrase.",
        "6",
    ),
    "mathvision_3": (
        "<image>\nWhich picture shows the kittens of Misty?\nOptions: A, B, C, D, E",
        "Misty has two striped kittens, one spotty and two white ones; only picture D matches.\n"
        "The answer is D.",
    ),
    "mathvision_4": (
        "<image>\nWhich colour is the cube with the question mark?\n"
        "A. red\nB. blue\nC. green\nD. yellow",
        "The answer is A. red.",
    ),
    "arxivqa_q1": (
        "<image>\nWhat trend does the loss curve show?\n"
        "A. It increases\nB. It decreases\nC. It stays constant\nD. It oscillates",
        "The curve goes down as the number of epochs grows.\nThe answer is B. It decreases.",
    ),
    "arxivqa_q3": (
        "<image>\nWhat does the x-axis show?\nA. Time\nB. Epochs\nC. Accuracy",
        "The x-axis is labelled with epoch numbers.\nThe answer is B. Epochs.",
    ),
}

# source: (read, kept, duplicates, skipped by reason)
COUNTS = {
    "scienceqa": (4, 1, 0, {"bad_answer": 1, "excluded_split": 1, "no_image": 1}),
    "tqa": (3, 2, 0, {"image_missing": 1}),
    "ai2d": (3, 1, 0, {"abc_label_image_unavailable": 1, "excluded_split": 1}),
    "chartqa": (4, 2, 1, {"image_corrupt": 1}),
    "dvqa": (4, 2, 0, {"image_missing": 1, "not_reasoning_template": 1}),
    "tabmwp": (3, 2, 0, {"bad_answer": 1}),
    "geoqa3": (3, 2, 0, {"excluded_split": 1}),
    "geoqa_plus": (2, 1, 1, {}),
    "geometry3k": (3, 2, 0, {"excluded_split": 1}),
    "mathvision": (4, 3, 0, {"mathvision_testmini": 1}),
    "arxivqa": (3, 2, 0, {"bad_answer": 1}),
}


@pytest.mark.parametrize("record_id", sorted(EXPECTED))
def test_converter_writes_exact_conversation(built, record_id):
    _, by_id, _, _ = built
    assert _turns(by_id[record_id]) == EXPECTED[record_id]


def test_every_source_has_an_exact_expectation(built):
    _, by_id, _, _ = built
    assert {by_id[record_id]["source"] for record_id in EXPECTED} == set(registry.SOURCES)


@pytest.mark.parametrize("source", sorted(COUNTS))
def test_per_source_counts(built, source):
    report, _, records, _ = built
    read, kept, duplicates, skipped = COUNTS[source]
    counts = report.sources[source]
    assert (counts.read, counts.kept, counts.duplicates, dict(counts.skipped)) == (
        read, kept, duplicates, skipped,
    )
    assert counts.read == counts.kept + counts.duplicates + sum(counts.skipped.values())
    assert sum(record["source"] == source for record in records) == kept


def test_records_follow_llava_schema_and_images_exist(built):
    _, _, records, _ = built
    assert len({record["id"] for record in records}) == len(records)
    for record in records:
        assert set(record) == {"id", "image", "conversations", "source"}
        human, gpt = _turns(record)
        assert human.startswith("<image>\n") and human.count("<image>") == 1
        assert gpt and "<image>" not in gpt
        assert not Path(record["image"]).is_absolute()
        assert (FIXTURES / record["image"]).is_file()


def test_duplicates_within_and_across_sources(built):
    _, by_id, _, _ = built
    # ChartQA repeats a question (other case/spacing) on the same chart: the first is kept.
    assert "chartqa_train_human_0" in by_id and "chartqa_train_human_1" not in by_id
    # GeoQA+ 1001 is GeoQA3 1 again (same diagram bytes, same text): only GeoQA3's is kept.
    assert "geoqa3_1" in by_id and "geoqa_plus_1001" not in by_id
    # Same image, different question: not a duplicate.
    assert "dvqa_1" in by_id and "dvqa_4" in by_id


def test_mathvision_testmini_is_excluded(built):
    report, by_id, _, _ = built
    testmini = {
        json.loads(line)["id"]
        for line in (FIXTURES / "mathvision/data/testmini.jsonl").read_text().splitlines()
    }
    assert testmini == {"2"}
    assert "mathvision_2" not in by_id
    assert {"mathvision_1", "mathvision_3", "mathvision_4"} <= set(by_id)
    assert report.sources["mathvision"].skipped["mathvision_testmini"] == 1


def test_mathvision_without_testmini_is_refused_not_leaked(tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(FIXTURES / "mathvision", sources / "mathvision")
    shutil.copytree(FIXTURES / "chartqa", sources / "chartqa")
    (sources / "mathvision/data/testmini.jsonl").unlink()
    report = build_smr(sources, tmp_path / "out.json", progress=False)
    assert "testmini" in report.missing["mathvision"]
    assert "mathvision" not in report.sources
    records = json.loads((tmp_path / "out.json").read_text())
    assert {record["source"] for record in records} == {"chartqa"}


def test_notes_reach_the_report(built):
    report, _, _, out = built
    assert any("pickles" in note for note in report.sources["geoqa_plus"].notes)
    assert report.sources["geoqa3"].notes == []  # it has split_ids.json
    on_disk = json.loads(report_path(out).read_text())
    assert on_disk["sources"]["geoqa_plus"]["notes"] == report.sources["geoqa_plus"].notes


def test_report_json_and_table(built):
    report, _, records, out = built
    on_disk = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert on_disk["total"]["kept"] == len(records) == 20
    assert on_disk["missing"] == {}
    table = report.format_table()
    for source in COUNTS:
        assert source in table
    assert table.splitlines()[0].split()[:5] == ["source", "read", "kept", "dup", "skipped"]


def test_pickles_are_never_loaded(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the SMR builder must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    report = build_smr(FIXTURES, tmp_path / "out.json", sources=["geoqa3"], progress=False)
    assert report.sources["geoqa3"].kept == 2


def test_missing_sources_are_reported_and_skipped(tmp_path):
    sources = tmp_path / "sources"
    shutil.copytree(FIXTURES / "chartqa", sources / "ChartQA")  # folder names: any case
    report = build_smr(sources, tmp_path / "out.json", progress=False)
    assert list(report.sources) == ["chartqa"]
    assert set(report.missing) == set(registry.SOURCES) - {"chartqa"}
    assert "GeoQA+" in report.missing["geoqa_plus"]
    records = json.loads((tmp_path / "out.json").read_text())
    assert records and all(r["image"].startswith("ChartQA/") for r in records)


def test_no_source_found_is_an_error_naming_what_was_expected(tmp_path):
    (tmp_path / "sources" / "unrelated").mkdir(parents=True)
    with pytest.raises(SMRError) as error:
        build_smr(tmp_path / "sources", tmp_path / "out.json", progress=False)
    message = str(error.value)
    for expected in ("scienceqa/", "problems.json", "train_human.json", "testmini.jsonl"):
        assert expected in message
    assert not (tmp_path / "out.json").exists()
    assert not report_path(tmp_path / "out.json").exists()


def test_unknown_source_name_is_not_supported():
    with pytest.raises(ValueError, match="'vqav2' is not supported"):
        build_smr(FIXTURES, "unused.json", sources=["vqav2"])


def test_only_selects_sources(tmp_path):
    report = build_smr(
        FIXTURES, tmp_path / "o.json", sources=["MathVision", "geoqa+"], progress=False
    )
    assert list(report.sources) == ["geoqa_plus", "mathvision"]
    # Without GeoQA3 in the run, GeoQA+'s copy of its problem is no longer a duplicate.
    assert report.sources["geoqa_plus"].kept == 2


def test_image_root(tmp_path):
    report = build_smr(
        FIXTURES, tmp_path / "out.json", sources=["chartqa"], image_root=FIXTURES.parent,
        progress=False,
    )
    records = json.loads((tmp_path / "out.json").read_text())
    assert [r["image"] for r in records] == [
        "smr/chartqa/train/png/bar1.png",
        "smr/chartqa/train/png/bar2.png",
    ]
    assert all((FIXTURES.parent / r["image"]).is_file() for r in records)
    assert report.image_root == str(FIXTURES.parent)


def test_images_outside_the_image_root_are_skipped(tmp_path):
    report = build_smr(
        FIXTURES, tmp_path / "out.json", sources=["chartqa", "dvqa"],
        image_root=FIXTURES / "chartqa", progress=False,
    )
    assert report.sources["chartqa"].kept == 2
    assert report.sources["dvqa"].kept == 0
    assert report.sources["dvqa"].skipped["image_outside_root"] == 3  # checked before existence


def test_cap_subsamples_reproducibly(tmp_path):
    def run(seed):
        out = tmp_path / f"out_{seed}.json"
        report = build_smr(
            FIXTURES, out, sources=["dvqa"], limits={"dvqa": 1}, seed=seed, progress=False
        )
        return report.sources["dvqa"], out.read_text()

    counts, text = run(0)
    assert counts.skipped["subsampled"] == 2  # three reasoning candidates, cap 1
    assert counts.kept + counts.skipped["image_missing"] == 1
    assert run(0) == (counts, text)
    uncapped = build_smr(FIXTURES, tmp_path / "all.json", sources=["dvqa"], limits={"dvqa": 0},
                         progress=False)
    assert "subsampled" not in uncapped.sources["dvqa"].skipped


def test_output_is_atomic_when_the_build_fails(tmp_path, monkeypatch):
    out = tmp_path / "smr.json"
    out.write_text("OLD", encoding="utf-8")
    spec = registry.SOURCES["arxivqa"]

    def explode(root):
        def items():
            yield Candidate("x", root / "images/1810.10511_0.jpg", "Q?", "A")
            raise RuntimeError("disk on fire")

        return items()

    monkeypatch.setitem(registry.SOURCES, "arxivqa", dataclasses.replace(spec, convert=explode))
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_smr(FIXTURES, out, progress=False)
    assert out.read_text(encoding="utf-8") == "OLD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smr.json"]  # no temp file left


def test_output_replaces_an_existing_file_whole(tmp_path):
    out = tmp_path / "smr.json"
    out.write_text("x" * 100_000, encoding="utf-8")
    build_smr(FIXTURES, out, sources=["chartqa"], progress=False)
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smr.json", "smr.json.report.json"]


# ---- CLI ----------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser(prog="hires-vlm data")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["smr", *argv])


def test_cli_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "nested" / "smr.json"
    args = _parse([
        "--sources", str(FIXTURES), "--out", str(out), "--only", "chartqa,MathVision",
        "--image-root", str(FIXTURES.parent), "--limit", "chartqa=5", "--no-progress",
    ])
    assert args.func is cli.run
    assert cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "chartqa" in printed and "mathvision" in printed and "wrote 5 records" in printed
    records = json.loads(out.read_text(encoding="utf-8"))
    assert {r["source"] for r in records} == {"chartqa", "mathvision"}
    assert all(r["image"].startswith("smr/") for r in records)
    report = json.loads(report_path(out).read_text(encoding="utf-8"))
    assert report["limits"]["chartqa"] == 5


def test_cli_reports_nothing_found(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = _parse(["--sources", str(tmp_path / "empty"), "--out", str(tmp_path / "o.json")])
    assert cli.run(args) == 2
    assert "no SMR source found" in capsys.readouterr().err


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        _parse(["--sources", "x", "--out", "y", "--only", "chartqa,vqav2"])
    assert "not supported" in capsys.readouterr().err


def test_cli_help_documents_every_source_layout(capsys):
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = capsys.readouterr().out
    for spec in registry.SOURCES.values():
        assert f"{spec.folders[0]}/" in text and spec.layout.split(",")[0] in text


def test_python_m_entry_point(tmp_path):
    out = tmp_path / "smr.json"
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-m", "hires_vlm.data.smr", "--sources", str(FIXTURES), "--out", str(out),
         "--only", "tabmwp", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 2


# ---- building blocks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "n", "expected"),
    [("C", 4, 2), ("(b)", 4, 1), ("[A]", 2, 0), ("D. text", 4, 3), ("E", 4, None),
     ("Both", 4, None), ("12", 4, None), (None, 4, None)],
)
def test_letter_index(label, n, expected):
    assert prompts.letter_index(label, n) == expected


def test_option_prefixes_are_replaced_only_when_they_match():
    assert prompts.strip_option_prefix("B) Epochs", 1) == "Epochs"
    assert prompts.strip_option_prefix("(A) cats", 0) == "cats"
    assert prompts.strip_option_prefix("A. cats", 1) == "A. cats"  # not option B's letter
    assert prompts.strip_option_prefix("Apples", 0) == "Apples"


def test_answer_sentences():
    assert prompts.multiple_choice_answer(1, ["x", "3.5"]) == "The answer is B. 3.5."
    assert prompts.multiple_choice_answer(0, ["Yes!", "No"]) == "The answer is A. Yes!"
    letters_only = prompts.multiple_choice_answer(2, ["A", "B", "C"], reasoning="R")
    assert letters_only == "R\nThe answer is C."
    assert prompts.free_form_answer("7", reasoning="3 + 4 = 7") == "3 + 4 = 7\nThe answer is 7."
    assert prompts.free_form_answer("7") == "7"
    assert prompts.normalise_question(" What  IS\nthis? ") == "what is this?"


def test_image_checker(tmp_path):
    good = tmp_path / "good.png"
    shutil.copy(FIXTURES / "chartqa/train/png/bar1.png", good)
    checker = ImageChecker()
    assert checker.check(good).sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert checker.check(tmp_path / "nope.png").problem == "image_missing"
    assert checker.check(FIXTURES / "chartqa/train/png/broken.png").problem == "image_corrupt"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:20])
    assert checker.check(truncated).problem == "image_corrupt"
