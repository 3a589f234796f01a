"""POPE, MME and ChartQA scorers, with hand-computed expected values."""

from __future__ import annotations

import pytest

from hires_vlm.eval.scorers import (
    ChartQAAnnotation,
    MMEAnnotation,
    PopeAnnotation,
    mme_yes_no,
    pope_yes_no,
    relaxed_correct,
    score_chartqa,
    score_mme,
    score_pope,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("no", "no"),
        ("There is no cat.", "no"),
        ("It is not there", "no"),
        ("No, there is not.", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("", "yes"),  # LLaVA's rule: no negative word → yes
        ("Not really", "yes"),  # "Not" is not in LLaVA's word list {No, no, not}
        ("NO", "yes"),
        ("nope", "yes"),
    ],
)
def test_pope_yes_no_is_llavas_rule(text, expected):
    assert pope_yes_no(text) == expected


def _pope():
    labels = {"random": ["yes", "yes", "no", "no"], "adversarial": ["no", "yes"]}
    return {f"{s}/{i}": PopeAnnotation(l, s) for s, ls in labels.items() for i, l in enumerate(ls)}


def test_score_pope_per_split_overall_and_mean():
    preds = {
        "random/0": "Yes", "random/1": "No", "random/2": "No", "random/3": "Yes, there is.",  # TP FN TN FP
        "adversarial/0": "There is no bowl.", "adversarial/1": "Yes",  # TN TP
    }
    m = score_pope(preds, _pope())
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert m[f"random/{key}"] == pytest.approx(50.0)
    assert [m[f"adversarial/{k}"] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == pytest.approx(
        [100.0, 100.0, 100.0, 100.0, 50.0]
    )
    # pooled: TP 2, FN 1, TN 2, FP 1
    assert m["overall/accuracy"] == pytest.approx(400 / 6)
    assert m["overall/f1"] == pytest.approx(200 / 3)
    assert m["mean/f1"] == pytest.approx(75.0)
    assert m["mean/yes_ratio"] == pytest.approx(50.0)
    assert (m["random/n"], m["adversarial/n"], m["n"]) == (4, 2, 6)
    assert "popular/f1" not in m


def test_pope_yes_ratio_counts_predicted_yes_not_ground_truth():
    anns = {k: v for k, v in _pope().items() if k.startswith("random")}
    m = score_pope({k: "Yes" for k in anns}, anns)  # ground truth is 50 % yes
    assert m["random/yes_ratio"] == pytest.approx(100.0)
    assert m["random/precision"] == pytest.approx(50.0)
    assert m["random/recall"] == pytest.approx(100.0)
    assert m["random/f1"] == pytest.approx(2 * 50 * 100 / 150)


def test_pope_undefined_precision_is_zero():
    anns = {k: v for k, v in _pope().items() if k.startswith("random")}
    m = score_pope({k: "No" for k in anns}, anns)
    assert (m["random/precision"], m["random/recall"], m["random/f1"]) == (0.0, 0.0, 0.0)
    assert m["random/accuracy"] == pytest.approx(50.0) and m["random/yes_ratio"] == 0.0


def test_pope_missing_answer_is_wrong_not_yes():
    anns = {k: v for k, v in _pope().items() if k.startswith("random")}  # labels yes, yes, no, no
    m = score_pope({"random/0": "Yes", "random/2": ""}, anns)  # "" is an answer: LLaVA reads it as yes
    # 0: TP; 1 missing (label yes) → FN; 2: "" → yes → FP; 3 missing (label no) → FP
    assert m["random/accuracy"] == pytest.approx(25.0)
    assert m["random/yes_ratio"] == pytest.approx(75.0)
    assert m["random/recall"] == pytest.approx(50.0)
    assert m["n_missing"] == 2


def test_pope_annotation_rejects_bad_label():
    with pytest.raises(ValueError):
        PopeAnnotation("maybe")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"), ("yes.", "yes"), ("Yes, it is.", "yes"), ("y", "yes"), ("N", "no"),
        ("No, it is not.", "no"), ("Not really", "no"), ("The answer is yes", "other"), ("", "other"),
        ("x", "other"),
    ],
)
def test_mme_yes_no(text, expected):
    assert mme_yes_no(text) == expected


def test_score_mme_acc_plus_and_totals():
    def q(sub, img, ans):
        return MMEAnnotation(sub, f"{sub}/{img}", ans)

    anns = {
        "c1a": q("count", "1", "Yes"), "c1b": q("count", "1", "No"),
        "c2a": q("count", "2", "Yes"), "c2b": q("count", "2", "No"),
        "a1a": q("artwork", "1", "No"), "a1b": q("artwork", "1", "Yes"),
        "k1a": q("code_reasoning", "1", "Yes"), "k1b": q("code_reasoning", "1", "No"),
    }
    preds = {
        "c1a": "Yes", "c1b": "No", "c2a": "Yes", "c2b": "Yes",
        "a1a": "No, it is not.", "a1b": "The answer is yes",
        "k1a": "y", "k1b": "N",
    }
    m = score_mme(preds, anns)
    assert (m["count/acc"], m["count/acc_plus"], m["count/score"]) == pytest.approx((75.0, 50.0, 125.0))
    assert (m["artwork/acc"], m["artwork/acc_plus"]) == pytest.approx((50.0, 0.0))
    assert m["code_reasoning/score"] == pytest.approx(200.0)
    assert m["perception"] == pytest.approx(175.0)
    assert m["cognition"] == pytest.approx(200.0)
    assert m["total"] == pytest.approx(375.0)
    assert (m["n"], m["n_images"], m["n_unparsed"]) == (8, 4, 1)
    assert (m["n_perception_subtasks"], m["n_cognition_subtasks"]) == (2, 1)


def test_score_mme_rejects_non_yes_no_ground_truth():
    with pytest.raises(ValueError, match="expected Yes or No"):
        score_mme({"q": "yes"}, {"q": MMEAnnotation("count", "count/1", "Maybe")})


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("12.5", "12", True),  # 4.2 %
        ("12.7", "12", False),  # 5.8 %
        (" 62 ", "62", True),
        ("40%", "40%", True),
        ("0.4", "40%", True),  # "40%" is 0.4
        ("40", "40%", False),
        ("12%", "12", False),
        ("Yes", "yes", True),
        ("yes.", "Yes", False),  # exact match for text
        ("0", "0", True),
        ("0.0", "0", False),  # gold 0 is falsy in the reference: string comparison
        ("1,000", "1000", False),  # float() does not read thousands separators
    ],
)
def test_relaxed_correct(pred, gold, expected):
    assert relaxed_correct(pred, gold) is expected


def test_score_chartqa_splits():
    anns = {
        "human/0": ChartQAAnnotation("62", "human"),
        "human/1": ChartQAAnnotation("Yes", "human"),
        "augmented/0": ChartQAAnnotation("40%", "augmented"),
    }
    m = score_chartqa({"human/0": "60", "human/1": "No", "augmented/0": "0.41"}, anns)
    assert m["accuracy"] == pytest.approx(200 / 3)
    assert m["human/accuracy"] == pytest.approx(50.0)
    assert m["augmented/accuracy"] == pytest.approx(100.0)
    assert m["mean/accuracy"] == pytest.approx(75.0)
