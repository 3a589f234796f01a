"""Loaders of the open-answer VQA benchmarks: TextVQA, VQAv2 and GQA.

Layouts read (the released files, unchanged):

* **TextVQA** — ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, question, image_id,
  answers: [10 strings]}, …]}``) and the images ``train_images/<image_id>.jpg`` (validation images
  ship in ``train_val_images.zip`` as ``train_images/``).
* **VQAv2** — ``v2_OpenEnded_mscoco_<subset>_questions.json`` (``{"questions": [{question_id,
  image_id, question}], "data_subtype": …}``), optionally ``v2_mscoco_<subset>_annotations.json``
  (``{"annotations": [{question_id, answers: [{answer}], answer_type}]}``; absent for test-dev),
  and the images ``<subset>/COCO_<subset>_<image_id:012d>.jpg`` (test-dev images are in ``test2015``).
* **GQA** — ``testdev_balanced_questions.json`` (``{qid: {imageId, question, answer, types}}``)
  and ``images/<imageId>.jpg``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..scorers.gqa import GQAAnnotation, score_gqa
from ..scorers.vqa import VQAAnnotation, score_textvqa, score_vqav2
from ._collect import Collector, Malformed, need
from .base import Benchmark, BenchmarkDataError, EvalSample, read_json, resolve_file
from .prompts import short_answer_prompt

TEXTVQA_FILES = ("TextVQA_0.5.1_val.json",)
GQA_FILES = ("testdev_balanced_questions.json",)


def _answers(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Malformed("'answers' is not a non-empty list")
    out = []
    for a in value:
        a = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(a, str):
            raise Malformed("an answer is not a string")
        out.append(a)
    return tuple(out)


def load_textvqa(path: str | Path, *, image_dir: str | Path | None = None, with_ocr_tokens: bool = False) -> Benchmark:
    """TextVQA validation. ``path``: the JSON file or its folder.

    ``with_ocr_tokens`` adds LLaVA's ``Reference OCR token: a, b, c`` line for records that carry
    an ``ocr_tokens`` list (the Rosetta-OCR variant LLaVA-1.5 reports); records without one are
    unchanged.
    """
    file = resolve_file(path, TEXTVQA_FILES, "textvqa", "the TextVQA question file")
    root = file.parent
    images = Path(image_dir) if image_dir else root / "train_images"
    data = read_json(file, "textvqa", "a TextVQA JSON file with a 'data' list")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BenchmarkDataError(f"textvqa: {file} has no 'data' list; expected the TextVQA_0.5.1 layout")
    c = Collector()
    for rec in data["data"]:
        try:
            qid = need(rec, "question_id", (int, str))
            question = need(rec, "question")
            image_id = need(rec, "image_id")
            ann = VQAAnnotation(_answers(rec["answers"])) if rec.get("answers") is not None else None
            prompt = question.strip()
            tokens = rec.get("ocr_tokens")
            if with_ocr_tokens and isinstance(tokens, list) and tokens:
                prompt += "\nReference OCR token: " + ", ".join(str(t) for t in tokens)
        except Malformed as err:
            c.skip(str(err))
            continue
        meta = {"image_id": image_id, "split": rec.get("set_name")}
        c.add(EvalSample(str(qid), images / f"{image_id}.jpg", short_answer_prompt(prompt), meta), ann)
    return c.build("textvqa", root, score_textvqa, image_roots=[images])


_VQAV2_QUESTIONS = re.compile(r"v2_OpenEnded_mscoco_(.+)_questions\.json$")


def _vqav2_question_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise BenchmarkDataError(
            f"vqav2: {path} does not exist; expected a folder with v2_OpenEnded_mscoco_<subset>_questions.json"
        )
    found = sorted(p for p in path.iterdir() if _VQAV2_QUESTIONS.search(p.name))
    if not found:
        raise BenchmarkDataError(
            f"vqav2: expected v2_OpenEnded_mscoco_<subset>_questions.json (e.g. <subset> = val2014) "
            f"in {path}, found none"
        )
    if len(found) > 1:
        preferred = [p for p in found if "val2014" in p.name]
        if len(preferred) == 1:
            return preferred[0]
        raise BenchmarkDataError(
            f"vqav2: several question files in {path} ({', '.join(p.name for p in found)}); pass the file itself"
        )
    return found[0]


def load_vqav2(
    path: str | Path,
    *,
    annotations_file: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> Benchmark:
    """VQAv2. ``path``: the questions JSON or its folder; annotations are looked up next to it."""
    qfile = _vqav2_question_file(Path(path))
    root = qfile.parent
    data = read_json(qfile, "vqav2", "a VQAv2 questions file with a 'questions' list")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise BenchmarkDataError(f"vqav2: {qfile} has no 'questions' list; expected the VQAv2 questions layout")
    m = _VQAV2_QUESTIONS.search(qfile.name)
    subset = str(data.get("data_subtype") or (m.group(1) if m else "val2014"))
    image_subset = subset.replace("test-dev", "test")
    images = Path(image_dir) if image_dir else root / image_subset

    afile = Path(annotations_file) if annotations_file else root / f"v2_mscoco_{subset}_annotations.json"
    answers: dict[str, VQAAnnotation] = {}
    c = Collector()
    if annotations_file or afile.is_file():
        adata = read_json(afile, "vqav2", "a VQAv2 annotations file with an 'annotations' list")
        if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
            raise BenchmarkDataError(f"vqav2: {afile} has no 'annotations' list; expected the VQAv2 annotations layout")
        for rec in adata["annotations"]:
            try:
                qid = str(need(rec, "question_id", (int, str)))
                answers[qid] = VQAAnnotation(_answers(rec.get("answers")), rec.get("answer_type"))
            except Malformed as err:
                c.skip(f"annotation: {err}")
    for rec in data["questions"]:
        try:
            qid = str(need(rec, "question_id", (int, str)))
            image_id = need(rec, "image_id", (int, str))
            question = need(rec, "question")
            image = images / f"COCO_{image_subset}_{int(image_id):012d}.jpg"
        except Malformed as err:
            c.skip(str(err))
            continue
        except ValueError:
            c.skip("'image_id' is not a number")
            continue
        c.add(EvalSample(qid, image, short_answer_prompt(question), {"image_id": image_id}), answers.get(qid))
    return c.build("vqav2", root, score_vqav2, image_roots=[images])


def load_gqa(path: str | Path, *, image_dir: str | Path | None = None) -> Benchmark:
    """GQA test-dev balanced. ``path``: the questions JSON or its folder."""
    file = resolve_file(path, GQA_FILES, "gqa", "the GQA questions file")
    root = file.parent
    images = Path(image_dir) if image_dir else root / "images"
    data = read_json(file, "gqa", "a GQA questions file (an object keyed by question id)")
    if not isinstance(data, dict):
        raise BenchmarkDataError(f"gqa: {file} is not an object keyed by question id; expected the GQA layout")
    c = Collector()
    for qid, rec in data.items():
        try:
            image_id = need(rec, "imageId")
            question = need(rec, "question")
            answer = rec.get("answer")
            types = rec.get("types") if isinstance(rec.get("types"), dict) else {}
            ann = GQAAnnotation(answer, types.get("structural")) if isinstance(answer, str) else None
        except Malformed as err:
            c.skip(str(err))
            continue
        sample = EvalSample(str(qid), images / f"{image_id}.jpg", short_answer_prompt(question), {"image_id": image_id})
        c.add(sample, ann)
    return c.build("gqa", root, score_gqa, image_roots=[images])
