"""MME loader (the released ``MME_Benchmark_release_version`` folder).

Layout: one folder per subtask (``existence``, ``count``, …, ``code_reasoning``). In five of them
(``artwork``, ``celebrity``, ``landmark``, ``posters``, ``scene``) the images are in ``images/``
and the questions in ``questions_answers_YN/``; in the others each image sits next to its ``.txt``.
Both arrangements are accepted for every subtask. A question file ``<stem>.txt`` belongs to the
image ``<stem>.jpg``/``.png`` and holds one ``question<TAB>Yes|No`` line per question (two per
image). The sample id is ``"<subtask>/<image file>#<line>"``; the scorer groups by image.

Prompt (lmms-eval's default for LLaVA): the question without its ``" Please answer yes or no."``
tail, then ``\\nAnswer the question using a single word or phrase.``
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.mme import COGNITION, PERCEPTION, MMEAnnotation, score_mme
from ._collect import Collector
from .base import Benchmark, BenchmarkDataError, EvalSample, find_image, require_dir
from .prompts import short_answer_prompt

RELEASE_FOLDER = "MME_Benchmark_release_version"
YES_NO_TAIL = " Please answer yes or no."


def _root(path: Path) -> Path:
    root = require_dir(path, "mme", f"the {RELEASE_FOLDER} folder")
    if not any((root / s).is_dir() for s in PERCEPTION + COGNITION) and (root / RELEASE_FOLDER).is_dir():
        root = root / RELEASE_FOLDER
    if not any((root / s).is_dir() for s in PERCEPTION + COGNITION):
        raise BenchmarkDataError(
            f"mme: no subtask folder ({', '.join(PERCEPTION + COGNITION)}) in {root}; "
            f"expected the {RELEASE_FOLDER} layout"
        )
    return root


def load_mme(path: str | Path) -> Benchmark:
    """MME from its release folder (or the folder that contains it)."""
    root = _root(Path(path))
    c = Collector()
    for subtask in PERCEPTION + COGNITION:
        folder = root / subtask
        if not folder.is_dir():
            continue
        if (folder / "questions_answers_YN").is_dir():
            text_dir, image_dir = folder / "questions_answers_YN", folder / "images"
        else:
            text_dir = image_dir = folder
        for txt in sorted(text_dir.glob("*.txt")):
            image = find_image(image_dir, txt.stem)
            if image is None:
                c.skip("question file without its image")
                continue
            try:
                lines = txt.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                c.skip("question file is not UTF-8 text")
                continue
            k = 0
            for line in lines:
                if not line.strip():
                    continue
                parts = line.rstrip("\r\n").split("\t")
                answer = parts[-1].strip() if len(parts) >= 2 else ""
                if len(parts) != 2 or answer.lower() not in ("yes", "no") or not parts[0].strip():
                    c.skip("line is not 'question<TAB>Yes|No'")
                    continue
                question = parts[0].strip()
                if question.endswith(YES_NO_TAIL.strip()):
                    question = question[: -len(YES_NO_TAIL.strip())].rstrip()
                image_key = f"{subtask}/{image.name}"
                meta = {"subtask": subtask, "image_key": image_key, "raw_question": parts[0].strip()}
                c.add(
                    EvalSample(f"{image_key}#{k}", image, short_answer_prompt(question), meta),
                    MMEAnnotation(subtask, image_key, answer),
                )
                k += 1
    return c.build("mme", root, score_mme)
