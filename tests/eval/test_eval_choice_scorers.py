"""The deterministic option parser and the multiple-choice, MMBench and MathVista scorers."""

from __future__ import annotations

import pytest

from hires_vlm.eval.scorers import (
    ChoiceAnnotation,
    MathVistaAnnotation,
    MMBenchAnnotation,
    circular_group,
    extract_number,
    format_options,
    mathvista_correct,
    option_letters,
    parse_choice,
    score_mathvista,
    score_mmbench,
    score_multiple_choice,
)

OPTS = ["cat", "dog", "red and blue", "fish"]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("[C]", "C"),
        ("B.", "B"),
        ("**D**", "D"),
        ("B\n", "B"),
        ("B. dog", "B"),
        ("(C) red and blue", "C"),
        ("B) dog", "B"),
        ("The answer is (B).", "B"),
        ("The answer is D.", "D"),
        ("Answer: C", "C"),
        ("The correct option is D.", "D"),
        ("I think the answer is B because A is wrong", "B"),
        ("Dog.", "B"),  # option text
        ("  FISH ", "D"),
        ("It is red and blue", "C"),  # option text inside; "red and blue" covers no other option
        ("A dog", "B"),  # "A" followed by a word is an article
        ("A cat", "A"),  # ... the text "cat" decides
        ("It is A, the cat", "A"),
        ("I think it is B", "B"),  # "I" followed by a word is the pronoun
        # unparsable → None
        ("", None),
        ("   ", None),
        ("E", None),  # no fifth option
        ("A or B", None),  # two letters
        ("The answer is A. No, the answer is B.", None),  # two different statements
        ("dog and fish", None),  # two option texts, neither covers the other
        ("cats", None),  # whole words only
        ("I don't know", None),
    ],
)
def test_parse_choice(response, expected):
    assert parse_choice(response, OPTS) == expected


def test_parse_choice_prefers_letter_over_text_and_never_guesses():
    # a letter answer wins over option texts that happen to be letters of other options
    assert parse_choice("C", ["A", "B", "C"]) == "C"
    # option "Vitamin C" vs letter C beyond the options: text match, not a letter
    assert parse_choice("Vitamin C", ["Vitamin A", "Vitamin C"]) == "B"
    # single-letter option texts: a lower-case letter is read as text, an upper-case one as a label
    assert parse_choice("x", ["x", "y", "z"]) == "A"
    assert parse_choice("a", ["c", "a", "b"]) == "B"
    assert parse_choice("A", ["c", "a", "b"]) == "A"
    # deterministic: the same input gives the same output every time
    assert {parse_choice("maybe B or C", OPTS) for _ in range(20)} == {None}


def test_option_letters_and_format():
    assert option_letters(3) == "ABC"
    assert format_options(["x", "y"]) == "A. x\nB. y"
    with pytest.raises(ValueError):
        option_letters(0)


def test_choice_annotation_validates_answer():
    with pytest.raises(ValueError, match="not one of the 2 option letters"):
        ChoiceAnnotation(("a", "b"), "C")


def test_score_multiple_choice_counts_unparsed_apart_from_missing():
    anns = {
        "1": ChoiceAnnotation(("shark", "whale", "trout"), "B", "natural science"),
        "2": ChoiceAnnotation(("run", "dog"), "B", "language science"),
        "3": ChoiceAnnotation(("x", "y"), "A", "language science"),
    }
    m = score_multiple_choice({"1": "The answer is (B).", "2": "maybe", "extra": "A"}, anns)
    assert m["accuracy"] == pytest.approx(100.0 / 3)
    assert m["category/natural_science/accuracy"] == pytest.approx(100.0)
    assert m["category/language_science/accuracy"] == pytest.approx(0.0)
    assert (m["n"], m["n_unparsed"], m["n_missing"], m["n_extra"]) == (3, 1, 1, 1)


def test_circular_group():
    assert circular_group(7) == (7, 0)
    assert circular_group(2000007) == (7, 2)


def _group(index, answers):
    """Annotations of one MMBench group; pass k shows the options rotated left by k."""
    opts = ("cat", "dog", "bird", "fish")
    return {
        str(index + k * 1_000_000): MMBenchAnnotation(opts[k:] + opts[:k], a, str(index), k, "animals", "perception")
        for k, a in enumerate(answers)
    }


def test_score_mmbench_circular():
    anns = {**_group(7, "BADC"), **_group(8, "BADC")}
    preds = {
        "7": "B", "1000007": "A. dog", "2000007": "The answer is D.", "3000007": "dog",  # all right
        "8": "B", "1000008": "A", "2000008": "D", "3000008": "no idea",  # last pass unreadable
    }
    m = score_mmbench(preds, anns)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["vanilla_accuracy"] == pytest.approx(100.0)
    assert m["category/animals/accuracy"] == pytest.approx(50.0)
    assert (m["n"], m["n_questions"], m["n_unparsed"], m["n_missing"]) == (2, 8, 1, 0)


def test_score_mmbench_missing_pass_fails_group():
    anns = _group(7, "BADC")
    m = score_mmbench({"7": "B", "1000007": "A", "2000007": "D"}, anns)
    assert m["accuracy"] == 0.0 and m["n_missing"] == 1 and m["n_unparsed"] == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12", 12.0),
        ("1,000 g", 1000.0),
        ("The answer is 3.5.", 3.5),
        ("x = 4", 4.0),
        ("-3", -3.0),
        ("12cm", 12.0),
        ("The answer is 2, not 3", 2.0),
        ("1 or 2", None),
        ("none", None),
        ("H2O", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


FLOAT = MathVistaAnnotation("1.2", "free_form", "float", 1)
INT = MathVistaAnnotation("1000", "free_form", "integer")
MC = MathVistaAnnotation("square", "multi_choice", "text", choices=("circle", "square", "triangle"))
TEXT = MathVistaAnnotation("Paris", "free_form", "text")
LIST = MathVistaAnnotation("[1, 2, 3]", "free_form", "list")


@pytest.mark.parametrize(
    "pred, ann, expected",
    [
        ("1.23", FLOAT, True),  # rounded to 1 decimal
        ("The bar is 1.23 cm long", FLOAT, True),
        ("1.26", FLOAT, False),  # → 1.3
        ("between 1 and 2", FLOAT, None),
        ("1,000 apples", INT, True),
        ("1000.7", INT, True),  # the official int() truncation
        ("999.9", INT, False),
        ("B", MC, True),
        ("square", MC, True),
        ("(A) circle", MC, False),
        ("no idea", MC, None),
        ("paris.", TEXT, True),
        ("London", TEXT, False),
        ("", TEXT, None),
        ("[1, 2, 3]", LIST, True),
        ("[1,2,4]", LIST, False),
    ],
)
def test_mathvista_correct(pred, ann, expected):
    assert mathvista_correct(pred, ann) is expected


def test_score_mathvista_breakdowns():
    anns = {"1": FLOAT, "2": INT, "3": MC}
    m = score_mathvista({"1": "between 1 and 2", "2": "1000", "3": "circle"}, anns)
    assert m["accuracy"] == pytest.approx(100.0 / 3)
    assert m["question_type/free_form/accuracy"] == pytest.approx(50.0)
    assert m["question_type/multi_choice/accuracy"] == pytest.approx(0.0)
    assert m["answer_type/integer/accuracy"] == pytest.approx(100.0)
    assert m["n_unparsed"] == 1
