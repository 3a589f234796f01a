"""The synthetic high-resolution benchmark: files, determinism, splits, balance, and the low-res proofs."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hires_vlm.data import synthetic as syn

SMALL = dict(train_per_family=8, test_per_family=4, separability_samples=40)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return syn.generate_benchmark(tmp_path_factory.mktemp("bench"), seed=3, num_workers=2, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixel_hash(path: Path) -> str:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return hashlib.sha1(repr(arr.shape).encode() + arr.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------- files
def test_llava_conversation_json(bench):
    root = bench.out_dir
    # captions.json: the training images with their captions, LLaVA's pretraining (plain) format
    captions = syn.read_records(root / "captions.json")
    train = syn.read_records(root / "train.json")
    assert [c["image"] for c in captions] == [r["image"] for r in train]
    assert all(c["conversations"] == [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": r["caption"]}]
               for c, r in zip(captions, train))
    for split in ("train", "test"):
        records = syn.read_records(root / f"{split}.json")
        assert len(records) == len(syn.FAMILIES) * SMALL[f"{split}_per_family"]
        for r in records:
            assert set(r) == {"id", "image", "conversations", "family", "qtype", "caption"}
            assert r["image"] == f"images/{split}/{r['family']}/{r['id']}.png"
            human, gpt = r["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
            assert gpt["value"] in syn.FAMILIES[r["family"]].answers[r["qtype"]]
            with Image.open(root / r["image"]) as im:
                w, h = im.size
                assert im.mode == "RGB"
            assert syn.DEFAULT_SIZE_RANGE[0] <= min(w, h) and max(w, h) <= syn.DEFAULT_SIZE_RANGE[1] and max(w, h) >= 224
    meta = json.loads((root / "benchmark.json").read_text())
    assert meta["version"] == syn.VERSION and meta["params"]["seed"] == 3
    assert meta["counts"]["test"] == {f: 4 for f in syn.FAMILIES}
    assert meta["train_test_overlap"] == 0 and meta["separability"]["n_train"] > 0
    assert len(meta["sizes"]["train"]["aspects"]) >= 4  # not only squares
    assert not list(root.rglob("*.tmp"))


def test_same_seed_gives_identical_files_whatever_the_workers(bench, tmp_path):
    again = syn.generate_benchmark(tmp_path / "again", seed=3, num_workers=1, **SMALL)
    assert again.regenerated
    first, second = _files(bench.out_dir), _files(again.out_dir)
    assert first.keys() == second.keys() and len(first) == 5 + 6 * (8 + 4)  # 4 JSON + the ownership marker
    assert all(first[k] == second[k] for k in first)
    other = syn.generate_benchmark(tmp_path / "other", seed=4, num_workers=1, families=["fine_detail"],
                                   train_per_family=4, test_per_family=0, separability_samples=0)
    a = (bench.out_dir / "images/train/fine_detail/fine_detail-train-00000.png").read_bytes()
    assert (other.out_dir / "images/train/fine_detail/fine_detail-train-00000.png").read_bytes() != a


def test_a_record_can_be_redrawn_from_its_family(bench):
    for r in syn.read_records(bench.test_json)[::5]:
        index = int(r["id"].rsplit("-", 1)[1])
        s = syn.FAMILIES[r["family"]](3, index, split="test", qtype=r["qtype"], answer=r["conversations"][1]["value"])
        with Image.open(bench.out_dir / r["image"]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), s.image)
        assert r["conversations"][0]["value"] == "<image>\n" + s.question


def test_train_and_test_never_share_an_image_question_pair(bench):
    pairs = {}
    for split in ("train", "test"):
        recs = syn.read_records(bench.out_dir / f"{split}.json")
        pairs[split] = {(_pixel_hash(bench.out_dir / r["image"]), r["conversations"][0]["value"]) for r in recs}
        assert len(pairs[split]) == len(recs)
    assert not pairs["train"] & pairs["test"]
    assert not {h for h, _ in pairs["train"]} & {h for h, _ in pairs["test"]}  # not even an image


def test_overlap_check_redraws_a_test_item_the_training_split_holds(tmp_path, monkeypatch):
    # Give test the training stream: every test item is then a copy and must be drawn again.
    from hires_vlm.data.synthetic import drawing

    monkeypatch.setitem(drawing._SPLIT_CODE, "test", 0)  # the one dict every part reads
    info = syn.generate_benchmark(tmp_path, families=["counting", "existence"], train_per_family=6,
                                  test_per_family=6, num_workers=1, separability_samples=0)
    train = {_pixel_hash(tmp_path / r["image"]) for r in syn.read_records(info.train_json)}
    test = {_pixel_hash(tmp_path / r["image"]) for r in syn.read_records(info.test_json)}
    assert len(test) == 12 and not train & test


def test_skips_a_matching_benchmark_and_redraws_a_changed_one(tmp_path):
    kw = dict(families=["quadrant", "tile_border"], train_per_family=6, test_per_family=3, num_workers=1,
              separability_samples=0)
    syn.generate_benchmark(tmp_path, **kw)
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = syn.generate_benchmark(tmp_path, **kw)
    assert not again.regenerated
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamp

    os.remove(tmp_path / "images/test/quadrant/quadrant-test-00002.png")  # an incomplete set is redrawn
    assert syn.generate_benchmark(tmp_path, **kw).regenerated

    fewer = syn.generate_benchmark(tmp_path, **{**kw, "test_per_family": 1})
    assert fewer.regenerated
    pngs = sorted(p.name for p in (tmp_path / "images/test").rglob("*.png"))
    assert pngs == ["quadrant-test-00000.png", "tile_border-test-00000.png"]  # stale images removed


TINY = dict(families=["quadrant"], train_per_family=2, test_per_family=1, num_workers=1, separability_samples=0)


def test_a_folder_holding_the_user_s_files_is_refused_and_left_as_it_was(tmp_path):
    """Regression (issue 13): the generator used to delete every PNG under images/ it had not written
    and overwrite train.json."""
    mine = tmp_path / "images" / "train" / "quadrant" / "quadrant-train-00005.png"
    mine.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(mine)
    (tmp_path / "train.json").write_text('[{"mine": true}]')
    before = _files(tmp_path)
    with pytest.raises(FileExistsError, match="did not write") as err:
        syn.generate_benchmark(tmp_path, **TINY)
    assert "quadrant-train-00005.png" in str(err.value) and "train.json" in str(err.value)
    assert _files(tmp_path) == before


def test_a_file_added_to_a_generated_folder_is_never_deleted(tmp_path):
    syn.generate_benchmark(tmp_path, **TINY)
    extra = tmp_path / "images" / "test" / "quadrant" / "notes.png"
    extra.write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match="notes.png"):
        syn.generate_benchmark(tmp_path, **{**TINY, "test_per_family": 2})
    assert extra.read_bytes() == b"the user's"
    extra.unlink()
    assert syn.generate_benchmark(tmp_path, **{**TINY, "test_per_family": 2}).regenerated


def test_a_folder_written_before_the_ownership_marker_is_taken_over(tmp_path):
    syn.generate_benchmark(tmp_path, **TINY)
    (tmp_path / ".hires-vlm-owned.json").unlink()  # as written by an earlier version
    assert not syn.generate_benchmark(tmp_path, **TINY).regenerated
    assert (tmp_path / ".hires-vlm-owned.json").is_file()
    fewer = syn.generate_benchmark(tmp_path, **{**TINY, "train_per_family": 1})
    assert sorted(p.name for p in (tmp_path / "images/train").rglob("*.png")) == ["quadrant-train-00000.png"]
    assert fewer.regenerated


def test_bad_requests_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="unknown families"):
        syn.generate_benchmark(tmp_path, train_per_family=1, test_per_family=1, families=["nope"])
    with pytest.raises(ValueError, match="min_long_side"):
        syn.generate_benchmark(tmp_path, train_per_family=1, test_per_family=1, size_range=(168, 200))
    with pytest.raises(ValueError, match="non-negative"):
        syn.generate_benchmark(tmp_path, train_per_family=-1, test_per_family=1)
    assert not (tmp_path / "benchmark.json").exists()


# ---------------------------------------------------------------------------------------- content
@pytest.mark.parametrize("name", list(syn.FAMILIES))
def test_answers_are_balanced(name):
    fam = syn.FAMILIES[name]
    plan = fam.schedule(103, np.random.default_rng(0))
    per_q = Counter(q for q, _ in plan)
    assert max(per_q.values()) - min(per_q.values()) <= 1 and set(per_q) == set(fam.qtypes)
    for qtype, answers in fam.answers.items():
        counts = Counter(a for q, a in plan if q == qtype)
        assert set(counts) == set(answers)
        assert max(counts.values()) - min(counts.values()) <= 1


def test_benchmark_answers_balanced_within_each_split(bench):
    for split in ("train", "test"):
        by = defaultdict(Counter)
        for r in syn.read_records(bench.out_dir / f"{split}.json"):
            by[(r["family"], r["qtype"])][r["conversations"][1]["value"]] += 1
        for (fam, qtype), counts in by.items():
            n = sum(counts.values())
            k = len(syn.FAMILIES[fam].answers[qtype])
            assert all(abs(c - n / k) < 1 for c in counts.values()) and len(counts) == min(n, k)


def test_vocabulary_covers_every_question_and_answer(bench):
    vocab = set(syn.question_vocabulary())
    for split in ("train", "test"):
        for r in syn.read_records(bench.out_dir / f"{split}.json"):
            text = r["conversations"][0]["value"].replace("<image>", "") + " " + r["conversations"][1]["value"]
            assert set(re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", text)) <= vocab
    assert {"checkered", "top", "4", "yellow", "?"} <= vocab


def test_border_lines_match_hand_computed_cuts():
    lines = {(a, c): set(cuts) for a, c, cuts in syn.border_lines((168, 336))}
    # pad to 336 × 336 (84 px each side), 3×3: x = 112 − 84, 224 − 84; y = 112, 224
    assert {"pad_square_3x3"} <= lines[("x", 28)] and {"pad_square_3x3"} <= lines[("x", 140)]
    # anyres over 1..3 × 1..3 picks 2×3 (224 × 336), image centred 28 px from the left: x = 112 − 28
    assert {"anyres_3x3", "pad_square_2x2"} <= lines[("x", 84)]
    assert {"anyres_3x3", "pad_square_3x3"} <= lines[("y", 112)] and ("y", 168) in lines


def test_tile_border_bars_are_split_exactly_on_a_border():
    fam = syn.FAMILIES["tile_border"]
    for i in range(12):
        s = fam(7, i)
        x0, y0, x1, y1 = s.meta["box"]
        lines = {(a, c) for a, c, _ in syn.border_lines(s.size)}
        assert (s.meta["axis"], s.meta["at"]) in lines
        if s.meta["axis"] == "x":
            assert x0 + x1 == 2 * s.meta["at"]
        else:
            assert y0 + y1 == 2 * s.meta["at"]
        assert s.meta["halves"] == [s.answer, s.answer]  # one bar of the asked pattern, cut by the border


def test_fine_detail_is_invisible_at_low_resolution_and_clear_at_full_resolution():
    r = syn.lowres_separability(240, n_paired=24, seed=0)
    # The texture covers the whole image: paired scenes differ everywhere at full resolution.
    assert r["fullres"]["mean_abs_diff_in_square"] > 20
    low, full = r["lowres"], r["fullres"]
    # Pixel for pixel: after the low-res path the classes differ by at most the rounding of the
    # two-pass uint8 resize, below the background noise in that same view.
    assert low["max_abs_diff_between_classes"] <= min(2, low["noise_std"])
    assert low["mean_abs_diff_in_square"] < 0.1 * low["noise_std"]
    assert full["mean_abs_diff_in_square"] > 2 * full["noise_std"]
    # Held out: classifiers sit at chance on low-res crops, near perfect on full-res ones and on
    # the anyres canvas the high-resolution methods cut into tiles.
    assert max(low["nearest_centroid_acc"], low["ridge_acc"]) <= r["chance_bound"]
    assert min(full["nearest_centroid_acc"], full["ridge_acc"]) >= 0.9
    assert r["anyres"]["ridge_acc"] >= 0.9
    assert r["indistinguishable_at_lowres"]


def test_the_low_resolution_measurement_detects_a_pattern_that_survives():
    # Positive control: 3-px stripes survive a reduction by 2-3, and the same measurement says so.
    r = syn.lowres_separability(240, n_paired=24, seed=0, stripe=3)
    assert r["lowres"]["max_abs_diff_between_classes"] > 10 * r["lowres"]["noise_std"]
    assert r["lowres"]["ridge_acc"] > 0.8
    assert not r["indistinguishable_at_lowres"]


def test_global_layout_is_answerable_at_low_resolution():
    r = syn.lowres_probe("global_layout", 240, seed=0)
    for qtype in ("position", "colour"):
        best = max(r[qtype]["nearest_centroid_acc"], r[qtype]["ridge_acc"])
        assert best > r[qtype]["chance_bound"], (qtype, r[qtype])


# ---------------------------------------------------------------------------------------- scoring
def test_score_predictions(bench):
    recs = syn.read_records(bench.test_json)
    gold = {r["id"]: r["conversations"][1]["value"] for r in recs}
    perfect = syn.score_predictions(recs, gold)
    assert perfect["overall"]["accuracy"] == 1.0 and perfect["mean_family_accuracy"] == 1.0
    assert set(perfect["pope"]) == {"existence"}  # the only yes/no family
    assert perfect["pope"]["existence"]["f1"] == 1.0 and perfect["pope"]["existence"]["yes_ratio"] == 0.5

    styled = {"top left": "Top-Left.", "2": "Two", "yes": "YES", "checkered": "the checkered"}
    as_list = [styled.get(gold[r["id"]], gold[r["id"]]) for r in recs]
    assert syn.score_predictions(recs, as_list)["overall"]["accuracy"] == 1.0

    all_yes = syn.score_predictions(recs, {i: "Yes, there is." for i in gold})
    pope = all_yes["pope"]["existence"]
    assert pope["yes_ratio"] == 1.0 and pope["recall"] == 1.0 and pope["precision"] == 0.5
    assert pope["accuracy"] == 0.5 and abs(pope["f1"] - 2 / 3) < 1e-9
    assert all_yes["families"]["existence"]["accuracy"] == 0.0  # exact match: "yes there is" != "yes"
    assert all_yes["pope"]["existence"]["tn"] == 0

    missing = syn.score_predictions(recs, {})
    assert missing["overall"]["accuracy"] == 0.0 and missing["overall"]["missing"] == len(recs)
    with pytest.raises(ValueError, match="predictions for"):
        syn.score_predictions(recs, ["yes"])
