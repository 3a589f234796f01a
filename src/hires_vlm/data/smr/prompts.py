"""Text of SMR conversations: how questions, options and answers are written.

One format for every source, so the model sees multiple choice the same way everywhere:

* options are lettered ``A. …`` / ``B. …``, one per line, after the question;
* a multiple-choice answer ends with ``The answer is B. <option text>.``; where the source has a
  reasoning path (ScienceQA lecture + solution, TabMWP solution, MATH-Vision solution, ArxivQA
  rationale, …) it comes first, on its own lines;
* a free-form answer with reasoning ends with ``The answer is <answer>.``; a free-form answer
  without reasoning is the bare answer, and its question carries LLaVA-1.5's short-answer
  instruction (the one SliME's own evaluation uses for MathVision, ChartQA, …).
"""

from __future__ import annotations

import re
import string
import zlib
from collections.abc import Sequence

LETTERS = string.ascii_uppercase

SHORT_ANSWER = "Answer the question using a single word or phrase."

# SliME paper, appendix Table 5: the prompts used for TextbookQA's instructional diagrams.
DESCRIBE_PROMPTS = (
    "Describe the following image in detail",
    "Provide a detailed description of the given image",
    "Give an elaborate explanation of the image you see",
    "Share a comprehensive rundown of the presented image",
    "Offer a thorough analysis of the image",
    "Explain the various aspects of the image before you",
    "Clarify the contents of the displayed image with great detail",
    "Characterize the image using a well-detailed description",
    "Break down the elements of the image in a detailed manner",
    "Walk through the important details of the image",
    "Portray the image with a rich, descriptive narrative",
    "Narrate the contents of the image with precision",
    "Analyze the image in a comprehensive and detailed manner",
    "Illustrate the image through a descriptive explanation",
    "Examine the image closely and share its details",
    "Write an exhaustive depiction of the given image",
)

_OPTION_PREFIX = re.compile(r"^\s*(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])\s*[.):])\s*")
_LABEL = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*(?:[\)\].:]|$)")
_SPACES = re.compile(r"[ \t]+")


def clean_text(value: object) -> str:
    """A source field as stripped text; ``None`` becomes ``""``."""
    return "" if value is None else str(value).strip()


def strip_option_prefix(option: str, index: int) -> str:
    """Drop the letter a source already put before option ``index`` (``"B. x"`` → ``"x"``)."""
    match = _OPTION_PREFIX.match(option)
    if match:
        letter = next(group for group in match.groups() if group)
        if letter.upper() == LETTERS[index]:
            return option[match.end() :].strip()
    return option.strip()


def letter_index(label: object, n_options: int) -> int | None:
    """Index of a letter label (``"C"``, ``"(C)"``, ``"C. text"``), or None if it is not one."""
    match = _LABEL.match(clean_text(label))
    if not match:
        return None
    index = LETTERS.index(match.group(1).upper())
    return index if index < n_options else None


def _letters_only(options: Sequence[str]) -> bool:
    # MATH-Vision: when the options are drawn in the image, the released options are "A".."E".
    return all(option.strip().upper() == LETTERS[i] for i, option in enumerate(options))


def format_options(options: Sequence[str]) -> str:
    """``A. x`` lines; options that are only their own letters become ``Options: A, B, C``."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options, at most {len(LETTERS)} can be lettered")
    if _letters_only(options):
        return "Options: " + ", ".join(LETTERS[: len(options)])
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def multiple_choice_prompt(question: str, options: Sequence[str], *, context: str = "") -> str:
    """Question (after an optional ``Context:`` line), then the lettered options."""
    head = f"Context: {context}\n{question}" if context else question
    return f"{head}\n{format_options(options)}"


def short_answer_prompt(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER}"


def _final_sentence(body: str) -> str:
    return f"The answer is {body}" + ("" if body.endswith((".", "!", "?")) else ".")


def multiple_choice_answer(index: int, options: Sequence[str], *, reasoning: str = "") -> str:
    """``[reasoning\\n]The answer is <letter>. <option text>.``"""
    letter = LETTERS[index]
    text = options[index].strip()
    body = letter if text.upper() == letter else f"{letter}. {text}"
    final = _final_sentence(body)
    return f"{reasoning}\n{final}" if reasoning else final


def free_form_answer(answer: str, *, reasoning: str = "") -> str:
    """``reasoning\\nThe answer is <answer>.``, or the bare answer when there is no reasoning."""
    return f"{reasoning}\n{_final_sentence(answer)}" if reasoning else answer


def join_reasoning(*parts: str) -> str:
    """Non-empty parts of a reasoning path, one per paragraph line."""
    return "\n".join(part for part in (clean_text(p) for p in parts) if part)


def describe_prompt(key: str) -> str:
    """One of Table 5's description prompts, chosen by a stable hash of ``key`` (reproducible)."""
    return DESCRIBE_PROMPTS[zlib.crc32(key.encode("utf-8")) % len(DESCRIBE_PROMPTS)]


def normalise_question(text: str) -> str:
    """The question as compared for deduplication: case-folded, whitespace collapsed."""
    return " ".join(text.replace("<image>", " ").casefold().split())


def tidy_lines(text: str) -> str:
    """Collapse runs of spaces inside lines and drop empty lines (after removing inline tokens)."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)
