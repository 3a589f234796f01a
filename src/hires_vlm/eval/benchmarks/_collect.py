"""Record-by-record assembly of a benchmark, with the skip-and-count policy in one place."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ... import fsio
from ..scorers.common import qid_key
from .base import Benchmark, EvalSample


class Malformed(Exception):
    """Raised while parsing one record; the message is the skip reason that gets counted."""


def need(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...] | None = str) -> Any:
    """``record[key]``, checked to exist, be non-null and (optionally) be of ``kind``."""
    if not isinstance(record, Mapping):
        raise Malformed("record is not a JSON object")
    value = record.get(key)
    if value is None:
        raise Malformed(f"record lacks '{key}'")
    if kind is not None and not isinstance(value, kind):
        raise Malformed(f"'{key}' has the wrong type")
    if isinstance(value, str) and not value.strip():
        raise Malformed(f"'{key}' is empty")
    return value


class Collector:
    """Accumulates samples and annotations; later duplicates of a question id are skipped."""

    def __init__(self, skipped: Counter | None = None):
        self.samples: list[EvalSample] = []
        self.annotations: dict[str, Any] = {}
        self.skipped: Counter = skipped if skipped is not None else Counter()
        self._seen: set[str] = set()

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def add(self, sample: EvalSample, annotation: Any = None) -> None:
        qid = qid_key(sample.question_id)
        if qid in self._seen:
            self.skip("duplicate question id")
            return
        self._seen.add(qid)
        self.samples.append(sample)
        if annotation is not None:
            self.annotations[qid] = annotation

    def build(self, name: str, root: Path, scorer: Callable[..., dict], image_roots=(), align=None) -> Benchmark:
        """The benchmark; a sample whose image file lies outside ``root`` and ``image_roots`` (the
        folders the user gave) is skipped and counted — the package's one path rule (``fsio``)."""
        roots = [root, *image_roots]
        kept = []
        for sample in self.samples:
            paths = [s for s in [sample.image, *sample.extra_images] if isinstance(s, (str, os.PathLike))]
            if all(_inside(p, roots) for p in paths):
                kept.append(sample)
            else:
                self.skip("image path outside the data folder")
                self.annotations.pop(qid_key(sample.question_id), None)
        return Benchmark(name, root, kept, self.annotations, scorer, self.skipped, align=align)


def _inside(path, roots) -> bool:
    try:
        return "\x00" not in os.fspath(path) and fsio.is_inside(path, roots)
    except (ValueError, OSError):
        return False
