"""VQA accuracy with the EvalAI answer normalisation (TextVQA, VQAv2).

The rules, re-implemented from the VQA challenge's published evaluation (the EvalAI answer
processor as used by the TextVQA/M4C evaluator and by LLaVA's ``eval_textvqa.py``):

1. **Normalise** every answer, prediction and ground truth alike (:func:`normalize_vqa_answer`):
   lower-case; drop ``,`` and ``?``; split off ``'s``; turn newlines/tabs into spaces;
   punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space
   and replaced by a space otherwise; a ``.`` not followed by a digit is deleted (``3.5`` keeps its
   point); number words ``none``/``zero``…``ten`` become digits; articles ``a an the`` are
   dropped; contraction spellings without an apostrophe are mapped to the apostrophe form
   (``dont`` → ``don't``).
2. **Score** against the (normally ten) human answers ``g_1..g_10``: for each ``i``, the answer is
   ``min(#{j ≠ i : g_j = pred} / 3, 1)``; the question's accuracy is the mean over ``i``. So an
   answer given by ≥ 4 annotators scores 1, by 3 annotators 0.9, by 2 annotators 0.6, by 1 annotator 0.3.

Known differences from the reference scripts, all documented choices:

* The reference period rule is the regex ``(?!<=\\d)(\\.)(?!\\d)`` called with ``re.UNICODE`` in
  the *count* position, so it deletes at most 32 periods; here every qualifying period is deleted.
* The official VQAv2 server normalises ground-truth answers only when the ten answers disagree;
  here they are always normalised (as lmms-eval and the TextVQA evaluator do). This only matters
  when ten identical human answers contain a number word, an article or punctuation.

Worked example (TextVQA): ground truths ``["two"]*3 + ["2"]*1 + ["three"]*6`` normalise to
``["2"]*4 + ["3"]*6``. The prediction ``"Two."`` normalises to ``"2"``; leaving out one of the
four ``"2"`` answers leaves 3 matches (1.0), leaving out any other leaves 4 (1.0): accuracy 1.0.
The prediction ``"2 "`` scores the same; ``"a three"`` → ``"3"`` → 1.0; ``"four"`` → 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .common import Lookup, pct, require_annotations, slug

# --- data tables (facts of the EvalAI processor) -------------------------------------------------

_CONTRACTION_PAIRS = """
    aint ain't | arent aren't | cant can't | couldve could've
    couldnt couldn't | couldn'tve couldn't've | couldnt've couldn't've | didnt didn't
    doesnt doesn't | dont don't | hadnt hadn't | hadnt've hadn't've
    hadn'tve hadn't've | hasnt hasn't | havent haven't | hed he'd
    hed've he'd've | he'dve he'd've | hes he's | howd how'd
    howll how'll | hows how's | Id've I'd've | I'dve I'd've
    Im I'm | Ive I've | isnt isn't | itd it'd
    itd've it'd've | it'dve it'd've | itll it'll | let's let's
    maam ma'am | mightnt mightn't | mightnt've mightn't've | mightn'tve mightn't've
    mightve might've | mustnt mustn't | mustve must've | neednt needn't
    notve not've | oclock o'clock | oughtnt oughtn't | ow's'at 'ow's'at
    'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't | shed've she'd've
    she'dve she'd've | she's she's | shouldve should've | shouldnt shouldn't
    shouldnt've shouldn't've | shouldn'tve shouldn't've | somebody'd somebodyd | somebodyd've somebody'd've
    somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's | someoned someone'd
    someoned've someone'd've | someone'dve someone'd've | someonell someone'll | someones someone's
    somethingd something'd | somethingd've something'd've | something'dve something'd've | somethingll something'll
    thats that's | thered there'd | thered've there'd've | there'dve there'd've
    therere there're | theres there's | theyd they'd | theyd've they'd've
    they'dve they'd've | theyll they'll | theyre they're | theyve they've
    twas 'twas | wasnt wasn't | wed've we'd've | we'dve we'd've
    weve we've | werent weren't | whatll what'll | whatre what're
    whats what's | whatve what've | whens when's | whered where'd
    wheres where's | whereve where've | whod who'd | whod've who'd've
    who'dve who'd've | wholl who'll | whos who's | whove who've
    whyll why'll | whyre why're | whys why's | wont won't
    wouldve would've | wouldnt wouldn't | wouldnt've wouldn't've | wouldn'tve wouldn't've
    yall y'all | yall'll y'all'll | y'allll y'all'll | yall'd've y'all'd've
    y'alld've y'all'd've | y'all'dve y'all'd've | youd you'd | youd've you'd've
    you'dve you'd've | youll you'll | youre you're | youve you've
"""
# (The table is the processor's data as published, including its odd entries such as
# "somebody'd" → "somebodyd" and upper-case keys that can never match lower-cased text.)
CONTRACTIONS: dict[str, str] = dict(
    pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair.strip()
)

NUMBER_WORDS: dict[str, str] = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
NUMBER_WORDS["none"] = "0"

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")


def _strip_punctuation(text: str) -> str:
    # Whether a mark is deleted or becomes a space is decided on the text as it came in, for
    # every mark at once; a comma between digits anywhere makes every mark a deletion.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if (touches_space or delete_all) else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _map_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """Normalise one answer the EvalAI way.

    >>> normalize_vqa_answer("Two dogs.")
    '2 dogs'
    >>> normalize_vqa_answer("The cat's toy")
    "cat 's toy"
    >>> normalize_vqa_answer("dont")
    "don't"
    >>> normalize_vqa_answer("3.5")
    '3.5'
    >>> normalize_vqa_answer("coca-cola")
    'coca cola'
    """
    text = str(text).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _map_words(_strip_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Soft VQA accuracy in [0, 1] of one prediction against the human answers (normalises both).

    >>> vqa_accuracy("yes", ["yes"] * 10)
    1.0
    >>> round(vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8), 4)
    0.6
    """
    if not gt_answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in gt_answers]
    total_matches = sum(1 for g in gts if g == pred)
    per_left_out = [min(1.0, (total_matches - (g == pred)) / 3.0) for g in gts]
    return sum(per_left_out) / len(per_left_out)


@dataclass(frozen=True)
class VQAAnnotation:
    """Human answers of one VQA question; ``answer_type`` (VQAv2: yes/no, number, other) optional."""

    answers: tuple[str, ...]
    answer_type: str | None = None


def _score_vqa(bench: str, predictions: Mapping[Any, Any], annotations: Mapping[Any, VQAAnnotation]) -> dict:
    anns = require_annotations(annotations, bench)
    look = Lookup(predictions, anns)
    total = 0.0
    by_type: dict[str, list[float]] = {}
    n_empty = 0
    for qid, ann in anns.items():
        text = look.get(qid)
        n_empty += not text.strip()
        acc = vqa_accuracy(text, ann.answers)
        total += acc
        if ann.answer_type:
            by_type.setdefault(slug(ann.answer_type), []).append(acc)
    metrics: dict[str, Any] = {"accuracy": pct(total, len(anns))}
    for name in sorted(by_type):
        metrics[f"answer_type/{name}/accuracy"] = pct(sum(by_type[name]), len(by_type[name]))
    metrics.update(n=len(anns), n_empty=n_empty, **look.counts())
    return metrics


def score_textvqa(predictions: Mapping[Any, Any], annotations: Mapping[Any, VQAAnnotation]) -> dict:
    """TextVQA accuracy (%).

    >>> anns = {1: VQAAnnotation(("two",) * 3 + ("2",) + ("three",) * 6)}
    >>> score_textvqa({1: "Two."}, anns)["accuracy"]
    100.0
    """
    return _score_vqa("textvqa", predictions, annotations)


def score_vqav2(predictions: Mapping[Any, Any], annotations: Mapping[Any, VQAAnnotation]) -> dict:
    """VQAv2 accuracy (%), overall and per answer type (``answer_type/yes_no/accuracy`` …).

    >>> anns = {1: VQAAnnotation(("yes",) * 10, "yes/no"), 2: VQAAnnotation(("2",) * 2 + ("3",) * 8, "number")}
    >>> m = score_vqav2({1: "Yes", 2: "two"}, anns)
    >>> round(m["accuracy"], 4), round(m["answer_type/number/accuracy"], 4)
    (80.0, 60.0)
    """
    return _score_vqa("vqav2", predictions, annotations)
