"""ScienceQA-IMG loader (the released ``problems.json`` + ``pid_splits.json``).

Layout: ``problems.json`` = ``{pid: {question, choices: [..], answer: int, hint, image:
"image.png" | null, subject, grade, …}}``, ``pid_splits.json`` = ``{"train": [pid, …], "val": …,
"test": …}``, images at ``images/<split>/<pid>/<image>`` (or ``<split>/<pid>/<image>`` directly
under the folder). ScienceQA-IMG is the test problems that have an image (2,017 of 4,241).

Prompt (LLaVA-1.5 / lmms-eval): ``Context: <hint>\\n<question>\\nA. …\\nAnswer with the option's
letter from the given choices directly.`` (the context line only when the hint is not empty).
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.choice import LETTERS, ChoiceAnnotation, score_scienceqa_img
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_json, require_dir
from .prompts import multiple_choice_prompt


def load_scienceqa_img(path: str | Path, *, split: str = "test", image_dir: str | Path | None = None) -> Benchmark:
    """ScienceQA problems of ``split`` that have an image. ``path``: the folder of problems.json (or that file)."""
    path = Path(path)
    if path.is_file() and path.name in ("problems.json", "pid_splits.json"):
        path = path.parent
    root = require_dir(path, "scienceqa_img", "the ScienceQA folder with problems.json and pid_splits.json")
    problems = read_json(root / "problems.json", "scienceqa_img", "problems.json (pid → problem)")
    splits = read_json(root / "pid_splits.json", "scienceqa_img", "pid_splits.json (split → list of pids)")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise BenchmarkDataError(f"scienceqa_img: problems.json and pid_splits.json in {root} must be JSON objects")
    if split not in splits or not isinstance(splits[split], list):
        raise BenchmarkDataError(
            f"scienceqa_img: pid_splits.json in {root} has no split {split!r} (found {', '.join(map(str, splits))})"
        )
    if image_dir:
        images = Path(image_dir)
    else:
        images = root / "images" / split if (root / "images" / split).is_dir() else root / split
    c = Collector()
    for pid in splits[split]:
        pid = str(pid)
        rec = problems.get(pid)
        try:
            if rec is None:
                raise Malformed("pid of the split is not in problems.json")
            if not rec.get("image"):
                continue  # a text-only problem: not part of ScienceQA-IMG
            question = need(rec, "question")
            choices = need(rec, "choices", list)
            answer = need(rec, "answer", int)
            if not 2 <= len(choices) <= len(LETTERS) or not 0 <= answer < len(choices):
                raise Malformed("'answer' is not an index into 'choices'")
            options = tuple(str(x) for x in choices)
        except Malformed as err:
            c.skip(str(err))
            continue
        hint = str(rec.get("hint") or "").strip()
        prompt = multiple_choice_prompt(question, options, context=f"Context: {hint}" if hint else None)
        meta = {k: rec.get(k) for k in ("subject", "topic", "category", "grade", "skill")}
        ann = ChoiceAnnotation(options, LETTERS[answer], rec.get("subject"))
        c.add(EvalSample(pid, images / pid / str(rec["image"]), prompt, meta), ann)
    return c.build("scienceqa_img", root, score_scienceqa_img)
