"""SEED-Bench (image questions) loader: the released ``SEED-Bench.json``, or VLMEvalKit's TSV.

Released layout: ``SEED-Bench.json`` = ``{"question_type": {"Scene Understanding": 1, …},
"questions": [{question_id, question, choice_a, choice_b, choice_c, choice_d, answer: "A"…"D",
data_id, data_type: "image" | "video", question_type_id}]}`` with images at
``SEED-Bench-image/<data_id>``. Only ``data_type == "image"`` questions are read (LLaVA's
SEED-IMG); video questions need extracted frames and are left out. The category of a question is
its question-type name, so the scorer reports accuracy per type.
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.choice import ChoiceAnnotation, score_seedbench
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_json
from .prompts import multiple_choice_prompt
from .tsv import load_tsv_mcq

SEED_FILES = ("SEED-Bench.json",)


def load_seedbench(path: str | Path, *, image_dir: str | Path | None = None) -> Benchmark:
    """SEED-Bench image questions. ``path``: SEED-Bench.json, its folder, or a ``.tsv`` file."""
    path = Path(path)
    if path.suffix == ".tsv" or (path.is_dir() and not (path / SEED_FILES[0]).exists() and any(path.glob("*.tsv"))):
        return load_tsv_mcq(path, "seedbench", score_seedbench, file_hint="SEEDBench_IMG.tsv (VLMEvalKit layout)")
    file = path if path.is_file() else path / SEED_FILES[0]
    data = read_json(file, "seedbench", "SEED-Bench.json with 'question_type' and 'questions'")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise BenchmarkDataError(f"seedbench: {file} has no 'questions' list; expected the SEED-Bench.json layout")
    root = file.parent
    images = Path(image_dir) if image_dir else root / "SEED-Bench-image"
    type_names = {v: k for k, v in (data.get("question_type") or {}).items()}
    c = Collector()
    for rec in data["questions"]:
        try:
            if need(rec, "data_type") != "image":
                continue
            qid = str(need(rec, "question_id", (int, str)))
            question = need(rec, "question")
            options = tuple(str(need(rec, f"choice_{x}", (str, int, float))) for x in "abcd")
            answer = need(rec, "answer")
            if answer not in "ABCD" or len(answer) != 1:
                raise Malformed("'answer' is not one of A, B, C, D")
            data_id = need(rec, "data_id")
        except Malformed as err:
            c.skip(str(err))
            continue
        category = type_names.get(rec.get("question_type_id"))
        meta = {"question_type": category, "data_id": data_id}
        c.add(
            EvalSample(qid, images / data_id, multiple_choice_prompt(question, options), meta),
            ChoiceAnnotation(options, answer, category),
        )
    return c.build("seedbench", root, score_seedbench, image_roots=[images])
