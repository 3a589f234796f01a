"""MMBench loader (the released ``mmbench_dev_*.tsv`` / ``MMBench_DEV_EN*.tsv`` files).

Layout: one TSV (see :mod:`.tsv`) with ``index, question, hint, A–D, answer, category,
l2-category, split, image``. Circular copies, when the file has them, carry ``index + k·1e6``.
Files without them (LLaVA's ``mmbench_dev_20230712.tsv``) get the copies made here, the way
LLaVA's ``model_vqa_mmbench.py --all-rounds`` makes them: pass ``k`` shows the options rotated
left by ``k`` under the same letters, so the answer letter moves back by ``k``. Pass ``circular=False``
to ask each question once.

Prompt (LLaVA): ``<hint>\\n<question>\\nA. …\\nB. …\\nAnswer with the option's letter from the
given choices directly.``
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.choice import LETTERS
from ..scorers.mmbench import CIRCULAR_STRIDE, MMBenchAnnotation, circular_group, score_mmbench
from ._collect import Collector, Malformed
from .base import Benchmark, EvalSample
from .prompts import multiple_choice_prompt
from .tsv import answer_letter, find_tsv, read_mcq_tsv


def load_mmbench(path: str | Path, *, circular: bool = True) -> Benchmark:
    """MMBench from its TSV (``path``: the file or a folder holding exactly one ``.tsv``)."""
    file = find_tsv(Path(path), "mmbench", "the MMBench TSV, e.g. mmbench_dev_20230712.tsv")
    c = Collector()
    rows = read_mcq_tsv(file, "mmbench", c.skipped)
    entries = []
    for row in rows:
        try:
            try:
                index = int(row.index)
            except ValueError as err:
                raise Malformed("'index' is not an integer") from err
            if len(row.options) < 2:
                raise Malformed("fewer than two options")
            entries.append((index, row, answer_letter(row)))
        except Malformed as err:
            c.skip(str(err))
    has_copies = any(index >= CIRCULAR_STRIDE for index, _, _ in entries)
    for index, row, letter in entries:
        group, k = circular_group(index)
        passes = [(index, k, row.options, letter)]
        if circular and not has_copies:
            n = len(row.options)
            for shift in range(1, n):
                options = row.options[shift:] + row.options[:shift]
                moved = LETTERS[(LETTERS.index(letter) - shift) % n] if letter else None
                passes.append((index + shift * CIRCULAR_STRIDE, shift, options, moved))
        elif not circular and k > 0:
            continue
        for qid, k_pass, options, answer in passes:
            meta = {
                "group": str(group),
                "circular_pass": k_pass,
                "category": row.get("category"),
                "l2_category": row.get("l2-category"),
                "split": row.get("split"),
                "options": options,
            }
            ann = (
                MMBenchAnnotation(options, answer, str(group), k_pass, row.get("category"), row.get("l2-category"))
                if answer
                else None
            )
            prompt = multiple_choice_prompt(row.question, options, context=row.hint)
            c.add(EvalSample(str(qid), row.images[0], prompt, meta, tuple(row.images[1:])), ann)
    return c.build("mmbench", file.parent, score_mmbench)
