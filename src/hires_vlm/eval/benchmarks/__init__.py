"""Benchmark loaders and the registry that names them.

``BENCHMARKS`` maps a name to a :class:`BenchmarkSpec` (loader + scorer + the layout it reads);
:func:`get_benchmark` fails with "benchmark 'x' is not supported; choose one of …" on an unknown
name, and :func:`load_benchmark` reads a benchmark from a local folder::

    bench = load_benchmark("pope", "/data/pope")
    for batch in bench.batches(8):
        answers = generate([s.load_image() for s in batch], [s.prompt for s in batch])
        rows += [prediction_row(s, a, model_id) for s, a in zip(batch, answers)]
    metrics = bench.score({r["question_id"]: r["text"] for r in rows})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import scorers
from .ai2d import load_ai2d
from .base import Base64Image, Benchmark, BenchmarkDataError, EvalSample, ImageSource, prediction_row
from .chartqa import load_chartqa
from .mathvista import load_mathvista
from .mmbench import load_mmbench
from .mme import load_mme
from .mmmu import load_mmmu
from .pope import load_pope
from .scienceqa import load_scienceqa_img
from .seedbench import load_seedbench
from .synthetic import load_synthetic, score_synthetic
from .vqa import load_gqa, load_textvqa, load_vqav2


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: how to load it, how to score it, and the files it expects (for messages)."""

    name: str
    loader: Callable[..., Benchmark]
    scorer: Callable[[Mapping[Any, Any], Mapping[Any, Any]], dict]
    layout: str
    headline: str  # the metric key papers quote

    @property
    def options(self) -> list[str]:
        """The loader options (``--option KEY=VALUE``) this benchmark takes."""
        import inspect

        params = list(inspect.signature(self.loader).parameters.values())[1:]
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def load(self, path: str | Path, **options: Any) -> Benchmark:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name} takes no option {', '.join(unknown)}; its options: "
                             f"{', '.join(self.options) or 'none'}")
        return self.loader(path, **options)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("textvqa", load_textvqa, scorers.score_textvqa,
                      "TextVQA_0.5.1_val.json + train_images/", "accuracy"),
        BenchmarkSpec("vqav2", load_vqav2, scorers.score_vqav2,
                      "v2_OpenEnded_mscoco_<subset>_questions.json [+ v2_mscoco_<subset>_annotations.json] + <subset>/",
                      "accuracy"),
        BenchmarkSpec("gqa", load_gqa, scorers.score_gqa,
                      "testdev_balanced_questions.json + images/", "accuracy"),
        BenchmarkSpec("scienceqa_img", load_scienceqa_img, scorers.score_scienceqa_img,
                      "problems.json + pid_splits.json + [images/]test/<pid>/image.png", "accuracy"),
        BenchmarkSpec("ai2d", load_ai2d, scorers.score_ai2d,
                      "ai2d/ (questions/, images/, ai2d_test_ids.csv) or AI2D_TEST.tsv", "accuracy"),
        BenchmarkSpec("seedbench", load_seedbench, scorers.score_seedbench,
                      "SEED-Bench.json + SEED-Bench-image/ or SEEDBench_IMG.tsv", "accuracy"),
        BenchmarkSpec("mmmu", load_mmmu, scorers.score_mmmu,
                      "MMMU_DEV_VAL.tsv (VLMEvalKit layout)", "accuracy"),
        BenchmarkSpec("pope", load_pope, scorers.score_pope,
                      "coco_pope_{random,popular,adversarial}.json + val2014/", "mean/f1"),
        BenchmarkSpec("mme", load_mme, scorers.score_mme,
                      "MME_Benchmark_release_version/<subtask>/...", "perception"),
        BenchmarkSpec("mmbench", load_mmbench, scorers.score_mmbench,
                      "mmbench_dev_*.tsv (index, question, hint, A-D, answer, category, l2-category, image)",
                      "accuracy"),
        BenchmarkSpec("chartqa", load_chartqa, scorers.score_chartqa,
                      "test/test_human.json + test/test_augmented.json + test/png/", "accuracy"),
        BenchmarkSpec("mathvista", load_mathvista, scorers.score_mathvista,
                      "testmini.json + images/", "accuracy"),
        BenchmarkSpec("synthetic", load_synthetic, score_synthetic,
                      "the folder of the embedded synthetic benchmark (test.json + images/)", "accuracy"),
    )
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The registered benchmark ``name``; ValueError naming the supported ones otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(
            f"benchmark {name!r} is not supported; choose one of {', '.join(sorted(BENCHMARKS))}"
        ) from None


def load_benchmark(name: str, path: str | Path, **options: Any) -> Benchmark:
    """Read benchmark ``name`` from the local ``path`` (see each loader for its options)."""
    return get_benchmark(name).load(path, **options)


__all__ = [
    "BENCHMARKS",
    "Base64Image",
    "Benchmark",
    "BenchmarkDataError",
    "BenchmarkSpec",
    "EvalSample",
    "ImageSource",
    "get_benchmark",
    "load_ai2d",
    "load_benchmark",
    "load_chartqa",
    "load_gqa",
    "load_mathvista",
    "load_mmbench",
    "load_mme",
    "load_mmmu",
    "load_pope",
    "load_scienceqa_img",
    "load_seedbench",
    "load_synthetic",
    "load_textvqa",
    "load_vqav2",
    "prediction_row",
]
