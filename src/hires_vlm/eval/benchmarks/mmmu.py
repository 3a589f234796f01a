"""MMMU (multiple-choice questions) loader: VLMEvalKit's ``MMMU_DEV_VAL.tsv``.

Layout: the multiple-choice TSV of :mod:`.tsv`; ``image`` holds a list of base64 images for
multi-image questions (the first becomes ``EvalSample.image``, the rest ``extra_images``);
``split`` is ``dev`` or ``validation``; ``category`` is the subject. Questions without options
(MMMU's open questions) are left out and counted under
``skipped["open question (only multiple choice is scored)"]``. The ``<image k>`` markers stay in
the question text.

Not read: the Hugging Face parquet release (it needs ``pyarrow``, which this package does not
depend on); convert it to the TSV layout first.
"""

from __future__ import annotations

from pathlib import Path

from ..scorers.choice import score_mmmu
from .base import Benchmark
from .tsv import load_tsv_mcq


def load_mmmu(path: str | Path, *, split: str | None = "validation") -> Benchmark:
    """MMMU multiple-choice questions of ``split`` (``None``: every split). ``path``: the TSV or its folder."""
    keep = None if split is None else (lambda row: row.get("split") in (None, split))
    return load_tsv_mcq(
        Path(path),
        "mmmu",
        score_mmmu,
        keep=keep,
        no_options_reason="open question (only multiple choice is scored)",
        file_hint="MMMU_DEV_VAL.tsv (VLMEvalKit layout)",
    )
