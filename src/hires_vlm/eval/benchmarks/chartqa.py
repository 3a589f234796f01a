"""ChartQA loader (the released ``ChartQA Dataset`` folder, test split).

Layout: ``test/test_human.json`` and ``test/test_augmented.json``, each a list of
``{"imgname": "…png", "query": "…", "label": "…"}``, and the charts in ``test/png/``. ``path`` may
be the dataset folder or its ``test/`` folder; the splits present are read. The files have no
question ids, so the sample id is ``"<split>/<position in the file>"`` (``human/0``, …).

Prompt (lmms-eval's default): ``<query>\\nAnswer the question with a single word.``
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.chartqa import ChartQAAnnotation, score_chartqa
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_json, require_dir
from .prompts import SINGLE_WORD, short_answer_prompt

SPLIT_FILES = {"human": "test_human.json", "augmented": "test_augmented.json"}


def load_chartqa(path: str | Path, *, image_dir: str | Path | None = None) -> Benchmark:
    """ChartQA test questions. ``path``: the dataset folder or its ``test/`` folder."""
    root = require_dir(Path(path), "chartqa", "the ChartQA folder (with test/test_human.json)")
    test = root / "test" if (root / "test").is_dir() else root
    present = {s: test / f for s, f in SPLIT_FILES.items() if (test / f).is_file()}
    if not present:
        raise BenchmarkDataError(
            f"chartqa: expected {' and/or '.join(SPLIT_FILES.values())} in {test}, found neither"
        )
    images = Path(image_dir) if image_dir else test / "png"
    c = Collector()
    for split, file in present.items():
        records = read_json(file, "chartqa", "a list of {imgname, query, label}")
        if not isinstance(records, list):
            raise BenchmarkDataError(f"chartqa: {file} is not a JSON list; expected the ChartQA layout")
        for i, rec in enumerate(records):
            try:
                image = need(rec, "imgname")
                query = need(rec, "query")
                label = need(rec, "label", (str, int, float))
            except Malformed as err:
                c.skip(str(err))
                continue
            meta = {"split": split, "imgname": image}
            c.add(
                EvalSample(f"{split}/{i}", images / image, short_answer_prompt(query, SINGLE_WORD), meta),
                ChartQAAnnotation(str(label), split),
            )
    return c.build("chartqa", root, score_chartqa)
