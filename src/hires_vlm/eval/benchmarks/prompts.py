"""Prompt text of the evaluation questions, laid out the way LLaVA-1.5 evaluates.

LLaVA's ``docs/Evaluation.md`` fixes two formats, and lmms-eval's LLaVA defaults use the same:

* short answer: ``<question>\\nAnswer the question using a single word or phrase.``
* multiple choice: ``<question>\\nA. <option>\\nB. <option>\\n…\\nAnswer with the option's letter
  from the given choices directly.``

The prompt never contains the image placeholder; the model's chat template puts it in front.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..scorers.choice import format_options

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
SINGLE_WORD = "Answer the question with a single word."  # lmms-eval's ChartQA instruction


def short_answer_prompt(question: str, instruction: str = SHORT_ANSWER) -> str:
    """``"What is it?"`` → ``"What is it?\\nAnswer the question using a single word or phrase."``"""
    return f"{question.strip()}\n{instruction}"


def multiple_choice_prompt(question: str, options: Sequence[str], context: str | None = None) -> str:
    """Question, optional context line(s) before it, lettered options, the letter instruction.

    >>> print(multiple_choice_prompt("Which is red?", ["apple", "sky"]))
    Which is red?
    A. apple
    B. sky
    Answer with the option's letter from the given choices directly.
    """
    head = f"{context.strip()}\n" if context and context.strip() else ""
    return f"{head}{question.strip()}\n{format_options(options)}\n{OPTION_LETTER}"
