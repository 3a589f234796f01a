"""Reader of the multiple-choice TSV layout of MMBench and VLMEvalKit.

Columns: ``index``, ``question``, optional ``hint``, option columns ``A``, ``B``, … (an empty or
NA cell means no such option; options run until the first missing letter), ``answer`` (a letter;
absent for test splits), ``category``, ``l2-category``, ``split``, and ``image``: a base64 image,
a Python-style list of them (``"['…', '…']"``, multi-image questions), or — to save space — the
``index`` of another row whose image it shares (any cell of at most 64 characters). A TSV with no
``image`` column may give ``image_path`` (relative to the TSV's folder) instead.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..scorers.choice import LETTERS, ChoiceAnnotation
from ._collect import Collector, Malformed
from .base import Base64Image, Benchmark, BenchmarkDataError, EvalSample, ImageSource, is_missing, read_tsv
from .prompts import multiple_choice_prompt

IMAGE_REFERENCE_MAX_CHARS = 64


@dataclass(frozen=True)
class McqRow:
    index: str
    question: str
    options: tuple[str, ...]
    answer: str | None  # the raw answer cell (a letter for multiple-choice rows), None if absent
    hint: str | None
    images: tuple[ImageSource, ...]
    fields: dict[str, str] = field(default_factory=dict)  # every other non-missing column

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


def _split_images(cell: str) -> list[str]:
    cell = cell.strip()
    if len(cell) > 1 and cell[0] == "[" and cell[-1] == "]":
        try:
            value = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as err:
            raise Malformed("'image' list cannot be parsed") from err
        return [str(v) for v in value]
    return [cell]


def find_tsv(path: Path, bench: str, hint: str) -> Path:
    """``path`` if it is a ``.tsv`` file, else the single ``.tsv`` in the folder ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise BenchmarkDataError(f"{bench}: {path} does not exist; expected {hint} or its folder")
    found = sorted(path.glob("*.tsv"))
    if len(found) != 1:
        listing = ", ".join(p.name for p in found) or "none"
        raise BenchmarkDataError(f"{bench}: expected exactly one .tsv file ({hint}) in {path}, found {listing}")
    return found[0]


def read_mcq_tsv(path: Path, bench: str, skipped: Counter, *, need_image: bool = True) -> list[McqRow]:
    """All well-formed rows of a multiple-choice TSV; malformed rows are counted in ``skipped``."""
    raw = read_tsv(path, bench, "a multiple-choice TSV", skipped, required=("index", "question"))
    if raw and need_image and "image" not in raw[0] and "image_path" not in raw[0]:
        raise BenchmarkDataError(f"{bench}: {path} has neither an 'image' nor an 'image_path' column")
    by_index = {r["index"].strip(): r.get("image", "") for r in raw}
    rows: list[McqRow] = []
    for r in raw:
        try:
            index = r["index"].strip()
            if is_missing(index):
                raise Malformed("row lacks 'index'")
            if is_missing(r["question"]):
                raise Malformed("row lacks 'question'")
            options = []
            for letter in LETTERS:
                if letter not in r or is_missing(r[letter]):
                    break
                options.append(r[letter].strip())
            images: list[ImageSource] = []
            cell = (r.get("image") or "").strip()
            if cell and not is_missing(cell):
                if len(cell) <= IMAGE_REFERENCE_MAX_CHARS:
                    target = by_index.get(cell, "")
                    if len(target.strip()) <= IMAGE_REFERENCE_MAX_CHARS:
                        raise Malformed("'image' refers to a row without an image")
                    cell = target.strip()
                images = [Base64Image(b) for b in _split_images(cell)]
            elif not is_missing(r.get("image_path")):
                images = [path.parent / p for p in _split_images(r["image_path"])]
            if need_image and not images:
                raise Malformed("row has no image")
        except Malformed as err:
            skipped[str(err)] += 1
            continue
        skip = {"index", "question", "hint", "answer", "image", "image_path", *LETTERS}
        fields: dict[str, Any] = {k: v for k, v in r.items() if k not in skip and not is_missing(v)}
        rows.append(
            McqRow(
                index=index,
                question=r["question"].strip(),
                options=tuple(options),
                answer=None if is_missing(r.get("answer")) else r["answer"].strip(),
                hint=None if is_missing(r.get("hint")) else r["hint"].strip(),
                images=tuple(images),
                fields=fields,
            )
        )
    return rows


def answer_letter(row: McqRow) -> str | None:
    """The row's answer letter, None for an unanswered (test) row; Malformed if it names no option."""
    if row.answer is None:
        return None
    letter = row.answer.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[: len(row.options)]:
        raise Malformed("'answer' is not one of the option letters")
    return letter


def load_tsv_mcq(
    path: Path,
    bench: str,
    scorer: Callable[..., dict],
    *,
    category_field: str = "category",
    keep: Callable[[McqRow], bool] | None = None,
    no_options_reason: str = "fewer than two options",
    file_hint: str | None = None,
) -> Benchmark:
    """A VLMEvalKit multiple-choice TSV as a benchmark of ``ChoiceAnnotation``s.

    ``keep`` filters rows (MMMU keeps one split's multiple-choice questions). The prompt puts the
    ``hint`` cell, when present, on the line before the question.
    """
    file = find_tsv(path, bench, file_hint or f"the {bench} TSV")
    c = Collector()
    for row in read_mcq_tsv(file, bench, c.skipped):
        try:
            if keep is not None and not keep(row):
                continue
            if len(row.options) < 2:
                raise Malformed(no_options_reason)
            letter = answer_letter(row)
        except Malformed as err:
            c.skip(str(err))
            continue
        ann = ChoiceAnnotation(row.options, letter, row.get(category_field)) if letter else None
        meta = {"category": row.get(category_field), "split": row.get("split"), "options": row.options}
        prompt = multiple_choice_prompt(row.question, row.options, context=row.hint)
        c.add(EvalSample(row.index, row.images[0], prompt, meta, tuple(row.images[1:])), ann)
    return c.build(bench, file.parent, scorer)
