"""Multiple-choice answers: a deterministic option parser and the letter-accuracy scorer.

Used by ScienceQA-IMG, AI2D, SEED-Bench, MMMU (multiple choice), MMBench and MathVista
(multiple choice). The reference scripts disagree on how to read a free-text answer: LLaVA's
ScienceQA script accepts ``"B"``, ``"B. …"`` and ``"The answer is B."``; VLMEvalKit looks for a
single option letter among the words and then for a single option text; MMMU's script falls back
to ``random.choice``. :func:`parse_choice` takes the unambiguous cases of all of them, in a fixed
order, and **never guesses**: an answer it cannot read returns ``None``, scores 0 and is counted
as ``unparsed``.

The rules, first match wins (letters are the first ``len(options)`` of ``A B C …``):

1. The whole answer is one letter, optionally wrapped: ``B``, ``b``, ``(B)``, ``[B]``, ``B.``,
   ``B)``, ``**B**`` (a lower-case letter that is itself one option's text picks that option).
2. The answer opens with a letter label: ``B. text``, ``(B) text``, ``B) text``, ``B: text``.
3. An explicit statement names one letter: ``The answer is (B).``, ``Answer: B``,
   ``the correct option is B``. Several statements must agree.
4. The answer equals one option's text (case, surrounding punctuation and spacing ignored).
5. Exactly one distinct letter appears in brackets, ``(B)``, anywhere.
6. Exactly one distinct letter appears as a stand-alone capital. ``A`` and ``I`` are English
   words too: followed by a lower-case word (``"A dog"``, ``"I think"``) they do not count,
   unless that word is a conjunction (``"A or B"`` names two letters).
7. Exactly one option text occurs as whole words in an answer no longer than twice the options'
   total length; when several occur and one of them contains all the others (``"red and blue"``
   vs ``"red"``), that one.

Worked examples with options ``["cat", "dog", "red and blue"]``:
``"B"`` → B; ``"(b)"`` → B; ``"C. red and blue"`` → C; ``"The answer is (A)."`` → A;
``"Dog."`` → B; ``"It is red and blue"`` → C; ``"A dog"`` → B (rule 7; "A" followed by a word is
an article); ``"A or B"`` → None (two letters); ``""`` → None; ``"D"`` → None (no such option).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations, slug

LETTERS = string.ascii_uppercase

_WRAPPED_LETTER = re.compile(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:]?")
_LEADING_LABEL = re.compile(r"(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.:)])(?=\s|$)")
_STATEMENT = re.compile(
    r"(?i:answer\s*(?:is|:)|option\s*(?:is|:)?|choice\s*(?:is|:)?)\s*:?\s*\**\s*"
    r"(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?![A-Za-z0-9']))"
)
_BRACKETED = re.compile(r"\(([A-Z])\)|\[([A-Z])\]")
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_EDGE_PUNCT = " \t\n\r.,;:!?\"'`*_()[]{}"


def option_letters(n: int) -> str:
    """The labels of ``n`` options: ``option_letters(3) == "ABC"``."""
    if not 0 < n <= len(LETTERS):
        raise ValueError(f"a question needs 1..{len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def _norm_text(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(_EDGE_PUNCT)


def _first_group(match: re.Match) -> str:
    return next(g for g in match.groups() if g)


def _single(found: list[str], letters: str) -> str | None:
    distinct = {x for x in found if x in letters}
    return distinct.pop() if len(distinct) == 1 and all(x in letters for x in found) else None


_CONJUNCTION = re.compile(r"[ \t]+(?:or|and|nor|vs\.?|versus)\b")
_LOWER_WORD = re.compile(r"[ \t]+[a-z]")


def _bare_letter_counts(text: str, match: re.Match) -> bool:
    letter, end = match.group(1), match.end()
    if end == len(text) or text[end] in ".,;:!?)]\n\r*":
        return True
    if letter not in ("A", "I"):
        return text[end] in " \t"
    # "A" and "I" are English words: before a lower-case word ("A dog", "I think") they are read
    # as words, except before a conjunction ("A or B" still names option A).
    rest = text[end:]
    return bool(_CONJUNCTION.match(rest)) or not _LOWER_WORD.match(rest)


def _option_text_match(text: str, options: Sequence[str], letters: str) -> str | None:
    answer = _norm_text(text)
    norm = [_norm_text(o) for o in options]
    total = sum(len(o) for o in norm)
    if not answer or len(answer) > 2 * total:
        return None
    found = [
        i for i, o in enumerate(norm) if o and re.search(r"(?<!\w)" + re.escape(o) + r"(?!\w)", answer)
    ]
    if len(found) == 1:
        return letters[found[0]]
    covering = [i for i in found if all(norm[j] in norm[i] for j in found)]
    if len(covering) == 1 and len({norm[i] for i in found}) == len(found):
        return letters[covering[0]]
    return None


def parse_choice(response: str, options: Sequence[str]) -> str | None:
    """The option letter a free-text answer picks, or ``None`` if it cannot be read unambiguously.

    >>> opts = ["cat", "dog", "red and blue"]
    >>> [parse_choice(r, opts) for r in ["B", "(b)", "C. red and blue", "The answer is (A).", "Dog."]]
    ['B', 'B', 'C', 'A', 'B']
    >>> [parse_choice(r, opts) for r in ["It is red and blue", "A dog", "A or B", "", "D"]]
    ['C', 'B', None, None, None]
    """
    letters = option_letters(len(options))
    text = str(response or "").strip()
    if not text:
        return None
    core = text.strip(" \t\n\r*_`\"'")

    # 1. the answer is a single (wrapped) letter; a lower-case one that is an option's text is that option
    m = _WRAPPED_LETTER.fullmatch(core)
    if m:
        same_text = [i for i, o in enumerate(options) if _norm_text(o) == m.group(1)]
        if m.group(1).islower() and len(same_text) == 1:
            return letters[same_text[0]]
        if m.group(1).upper() in letters:
            return m.group(1).upper()
    # 2. a leading label
    m = _LEADING_LABEL.match(core)
    if m and _first_group(m) in letters:
        return _first_group(m)
    # 3. explicit statements
    stated = [_first_group(s) for s in _STATEMENT.finditer(text)]
    if stated:
        letter = _single(stated, letters)
        if letter:
            return letter
    # 4. the answer is exactly one option's text
    answer = _norm_text(text)
    exact = [i for i, o in enumerate(options) if _norm_text(o) == answer]
    if len(exact) == 1:
        return letters[exact[0]]
    # 5. one bracketed letter
    bracketed = [_first_group(b) for b in _BRACKETED.finditer(text)]
    letter = _single(bracketed, letters) if bracketed else None
    if letter:
        return letter
    # 6. one stand-alone letter
    bare = [b.group(1) for b in _BARE_LETTER.finditer(text) if _bare_letter_counts(text, b)]
    bare = [b for b in bare if b in letters]
    if len(set(bare)) == 1:
        return bare[0]
    # 7. option text inside the answer
    return _option_text_match(text, options, letters)


def format_options(options: Sequence[str]) -> str:
    """``["x", "y"]`` → ``"A. x\\nB. y"`` (LLaVA's option layout)."""
    return "\n".join(f"{letter}. {opt}" for letter, opt in zip(option_letters(len(options)), options))


@dataclass(frozen=True)
class ChoiceAnnotation:
    """One multiple-choice question: option texts in prompt order, the correct letter, a category."""

    options: tuple[str, ...]
    answer: str
    category: str | None = None

    def __post_init__(self):
        if self.answer not in option_letters(len(self.options)):
            raise ValueError(f"answer {self.answer!r} is not one of the {len(self.options)} option letters")


def score_multiple_choice(
    predictions: Mapping[Any, Any], annotations: Mapping[Any, ChoiceAnnotation], *, bench: str = "multiple choice"
) -> dict:
    """Letter accuracy (%), per-category accuracy and the ``n_unparsed`` count.

    >>> anns = {1: ChoiceAnnotation(("cat", "dog"), "B"), 2: ChoiceAnnotation(("x", "y", "z"), "A")}
    >>> m = score_multiple_choice({1: "The answer is (B).", 2: "I am not sure"}, anns)
    >>> m["accuracy"], m["n_unparsed"]
    (50.0, 1)
    """
    anns = require_annotations(annotations, bench)
    look = Lookup(predictions, anns)
    hits = unparsed = 0
    by_cat: dict[str, list[int]] = {}
    for qid, ann in anns.items():
        letter = parse_choice(look.get(qid), ann.options)
        unparsed += letter is None and look.answered(qid)
        hit = int(letter == ann.answer)
        hits += hit
        if ann.category:
            by_cat.setdefault(slug(ann.category), []).append(hit)
    metrics: dict[str, Any] = {"accuracy": pct(hits, len(anns))}
    for name in sorted(by_cat):
        metrics[f"category/{name}/accuracy"] = pct(sum(by_cat[name]), len(by_cat[name]))
    metrics.update(n=len(anns), n_unparsed=unparsed, **look.counts())
    return metrics


def score_scienceqa_img(predictions: Mapping[Any, Any], annotations: Mapping[Any, ChoiceAnnotation]) -> dict:
    """ScienceQA-IMG: letter accuracy over the test problems that have an image (category = subject)."""
    return score_multiple_choice(predictions, annotations, bench="scienceqa_img")


def score_ai2d(predictions: Mapping[Any, Any], annotations: Mapping[Any, ChoiceAnnotation]) -> dict:
    """AI2D (test): letter accuracy."""
    return score_multiple_choice(predictions, annotations, bench="ai2d")


def score_seedbench(predictions: Mapping[Any, Any], annotations: Mapping[Any, ChoiceAnnotation]) -> dict:
    """SEED-Bench (image): letter accuracy, per question type (category)."""
    return score_multiple_choice(predictions, annotations, bench="seedbench")


def score_mmmu(predictions: Mapping[Any, Any], annotations: Mapping[Any, ChoiceAnnotation]) -> dict:
    """MMMU multiple-choice questions: letter accuracy, per subject (category)."""
    return score_multiple_choice(predictions, annotations, bench="mmmu")
