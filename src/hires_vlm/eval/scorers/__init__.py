"""Benchmark scorers: pure functions from ``{question_id: answer text}`` and annotations to metrics.

Each module holds one benchmark family, its annotation record and its worked examples; the
conventions shared by all of them (ids, percentages, missing predictions) are in
:mod:`hires_vlm.eval.scorers.common`.
"""

from .chartqa import ChartQAAnnotation, relaxed_correct, score_chartqa
from .choice import (
    ChoiceAnnotation,
    format_options,
    option_letters,
    parse_choice,
    score_ai2d,
    score_mmmu,
    score_multiple_choice,
    score_scienceqa_img,
    score_seedbench,
)
from .gqa import GQAAnnotation, normalize_gqa_answer, score_gqa
from .mathvista import MathVistaAnnotation, extract_number, mathvista_correct, score_mathvista
from .mmbench import MMBenchAnnotation, circular_group, score_mmbench
from .mme import COGNITION, PERCEPTION, MMEAnnotation, mme_yes_no, score_mme
from .pope import PopeAnnotation, pope_yes_no, score_pope
from .vqa import VQAAnnotation, normalize_vqa_answer, score_textvqa, score_vqav2, vqa_accuracy

__all__ = [
    "COGNITION",
    "PERCEPTION",
    "ChartQAAnnotation",
    "ChoiceAnnotation",
    "GQAAnnotation",
    "MMBenchAnnotation",
    "MMEAnnotation",
    "MathVistaAnnotation",
    "PopeAnnotation",
    "VQAAnnotation",
    "circular_group",
    "extract_number",
    "format_options",
    "mathvista_correct",
    "mme_yes_no",
    "normalize_gqa_answer",
    "normalize_vqa_answer",
    "option_letters",
    "parse_choice",
    "pope_yes_no",
    "relaxed_correct",
    "score_ai2d",
    "score_chartqa",
    "score_gqa",
    "score_mathvista",
    "score_mmbench",
    "score_mme",
    "score_mmmu",
    "score_multiple_choice",
    "score_pope",
    "score_scienceqa_img",
    "score_seedbench",
    "score_textvqa",
    "score_vqav2",
    "vqa_accuracy",
]
