"""VQA accuracy (EvalAI normalisation, leave-one-out soft score) and GQA exact match.

Expected values are computed by hand from the rules in the scorers' docstrings.
"""

from __future__ import annotations

import pytest

from hires_vlm.eval.scorers import (
    GQAAnnotation,
    VQAAnnotation,
    normalize_gqa_answer,
    normalize_vqa_answer,
    score_gqa,
    score_textvqa,
    score_vqav2,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two", "2"),
        ("a dog", "dog"),
        ("The Dog.", "dog"),
        ("an apple", "apple"),
        ("it's", "it 's"),  # "'s" is split off ...
        ("it is", "it is"),  # ... so "it's" and "it is" stay different answers
        ("dont", "don't"),  # contraction table
        ("don't", "don't"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("yes!", "yes"),
        ("hello-world", "hello world"),  # a mark not touching a space becomes a space
        ("hello - world", "hello world"),  # a mark touching a space is deleted
        ("ten", "10"),
        ("none", "0"),
        ("eleven", "eleven"),  # only zero..ten are mapped
        ("1,000", "1000"),  # commas are dropped first
        ("  Red\n", "red"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, gts, expected",
    [
        ("3", ["3"] * 10, 1.0),
        ("red", ["red"] * 4 + ["blue"] * 6, 1.0),  # 4 matches: every leave-one-out still has >= 3
        ("red", ["red"] * 3 + ["blue"] * 7, 0.9),  # (3·2/3 + 7·1) / 10
        ("red", ["red"] * 2 + ["blue"] * 8, 0.6),  # (2·1/3 + 8·2/3) / 10
        ("red", ["red"] + ["blue"] * 9, 0.3),  # (0 + 9·1/3) / 10
        ("green", ["red"] * 10, 0.0),
        ("Two.", ["two"] * 3 + ["2"] + ["three"] * 6, 1.0),  # "two" and "2" normalise alike
        ("a three", ["two"] * 3 + ["2"] + ["three"] * 6, 1.0),
        ("", ["yes"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_leave_one_out(pred, gts, expected):
    assert vqa_accuracy(pred, gts) == pytest.approx(expected)


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("x", [])


def test_score_textvqa_counts_missing_and_extra():
    anns = {
        1: VQAAnnotation(("dakota",) * 6 + ("dakota digital",) * 2 + ("x", "y")),
        2: VQAAnnotation(("2",) * 7 + ("3",) * 3),
    }
    m = score_textvqa({"1": "Dakota.", "99": "stray"}, anns)
    # q1: 6 matches → 1.0; q2 missing → 0
    assert m["accuracy"] == pytest.approx(50.0)
    assert (m["n"], m["n_missing"], m["n_extra"], m["n_empty"]) == (2, 1, 1, 1)


def test_score_vqav2_per_answer_type():
    anns = {
        "a": VQAAnnotation(("yes",) * 10, "yes/no"),
        "b": VQAAnnotation(("3",) * 8 + ("2", "two"), "number"),
        "c": VQAAnnotation(("blue",) * 10, "other"),
    }
    m = score_vqav2({"a": "Yes", "b": "two", "c": "red"}, anns)
    assert m["answer_type/yes_no/accuracy"] == pytest.approx(100.0)
    assert m["answer_type/number/accuracy"] == pytest.approx(60.0)  # "two" → "2": 2 matches
    assert m["answer_type/other/accuracy"] == pytest.approx(0.0)
    assert m["accuracy"] == pytest.approx(160.0 / 3)


def test_scorers_refuse_empty_annotations():
    with pytest.raises(ValueError, match="no annotated questions"):
        score_textvqa({"1": "x"}, {})


@pytest.mark.parametrize(
    "raw, expected", [("Yes.", "yes"), ("Left..", "left"), (" Left side ", "left side"), ("", ""), ("3.5", "3.5")]
)
def test_normalize_gqa_answer(raw, expected):
    assert normalize_gqa_answer(raw) == expected


def test_score_gqa_llava_rule():
    anns = {
        "1": GQAAnnotation("yes", "verify"),
        "2": GQAAnnotation("white", "query"),
        "3": GQAAnnotation("left", "query"),
        "4": GQAAnnotation("table", "query"),
    }
    m = score_gqa({"1": "Yes.", "2": "White tray", "3": "left", "4": "the table"}, anns)
    # "the table" is not "table": GQA does no article stripping
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["structural/verify/accuracy"] == pytest.approx(100.0)
    assert m["structural/query/accuracy"] == pytest.approx(100.0 / 3)
