"""What every benchmark loader produces: :class:`EvalSample` records in a :class:`Benchmark`.

A loader reads one benchmark's *released* file layout from a local directory (nothing is
downloaded) and returns a :class:`Benchmark`: the samples to generate answers for, in file order,
and the annotations to score those answers against. Images stay on disk (or base64 in a TSV)
until :meth:`EvalSample.load_image` is called, so loading a benchmark is cheap and a generation
loop can pull batches with :meth:`Benchmark.batches` and write one
:func:`prediction_row` per answer.

Error policy: a missing file raises :class:`BenchmarkDataError` naming the file and the layout
expected; a malformed record is skipped and counted in :attr:`Benchmark.skipped` (reason →
count), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ... import fsio
from ..scorers.common import qid_key

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger(__name__)

ImageSource = Union[Path, Callable[[], "Image.Image"]]

# The strings pandas reads as missing by default; the TSV benchmarks are written and read with
# pandas by their reference toolkits, so an option cell holding one of these is *no option*.
PANDAS_NA = frozenset(
    "#N/A|#N/A N/A|#NA|-1.#IND|-1.#QNAN|-NaN|-nan|1.#IND|1.#QNAN|<NA>|N/A|NA|NULL|NaN|None|n/a|nan|null".split("|")
) | {""}


class BenchmarkDataError(FileNotFoundError):
    """A benchmark file is missing or unreadable as a whole; the message says what was expected."""


@dataclass(frozen=True)
class Base64Image:
    """A picklable callable that decodes a base64-encoded image (TSV benchmarks)."""

    data: str

    def __call__(self) -> "Image.Image":
        from PIL import Image

        try:
            raw = base64.b64decode(self.data, validate=False)
            image = Image.open(io.BytesIO(raw))
            image.load()
        except (binascii.Error, ValueError, OSError) as err:
            raise ValueError(f"cannot decode base64 image ({len(self.data)} characters): {err}") from err
        return image

    def __repr__(self) -> str:  # keep reprs of samples short
        return f"Base64Image(<{len(self.data)} chars>)"


def _open_image(source: ImageSource, question_id: str) -> "Image.Image":
    if callable(source) and not isinstance(source, Path):
        image = source()
    else:
        from PIL import Image

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} of question {question_id!r} does not exist")
        image = Image.open(path)
        image.load()
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass(frozen=True)
class EvalSample:
    """One question to answer.

    ``question_id`` is a string (ids are matched as strings). ``image`` is a path or a callable
    returning a PIL image; ``extra_images`` holds further images of multi-image questions (MMMU).
    ``prompt`` is the text to give the model *after* the image placeholder: the question, options
    laid out the LLaVA way and the benchmark's answer-format instruction. ``meta`` carries the
    record's other fields (split, category, …) for logging and analysis.
    """

    question_id: str
    image: ImageSource | None
    prompt: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    extra_images: tuple[ImageSource, ...] = ()

    def load_image(self) -> "Image.Image":
        """The (first) image as an RGB PIL image."""
        if self.image is None:
            raise ValueError(f"question {self.question_id!r} has no image")
        return _open_image(self.image, self.question_id)

    def load_images(self) -> list["Image.Image"]:
        """All images of the question, in order."""
        sources = ([self.image] if self.image is not None else []) + list(self.extra_images)
        return [_open_image(s, self.question_id) for s in sources]


def prediction_row(sample: EvalSample, text: str, model_id: str) -> dict[str, Any]:
    """One line of a LLaVA-style answer file: ``{question_id, prompt, text, model_id}``."""
    return {"question_id": sample.question_id, "prompt": sample.prompt, "text": text, "model_id": model_id}


class Benchmark:
    """Samples in file order plus the annotations to score them, for one benchmark on disk."""

    def __init__(
        self,
        name: str,
        root: Path,
        samples: list[EvalSample],
        annotations: Mapping[str, Any],
        scorer: Callable[[Mapping[Any, Any], Mapping[Any, Any]], dict],
        skipped: Counter | None = None,
        align: Callable[["Benchmark", dict[str, str]], dict[str, str]] | None = None,
    ):
        self.name = name
        # Maps an answer file's ids to this benchmark's (e.g. LLaVA's POPE answer files); None: as they are.
        self._align = align
        self.root = Path(root)
        self._samples = list(samples)
        self._annotations = {qid_key(k): v for k, v in annotations.items()}
        self._scorer = scorer
        self.skipped: Counter = Counter(skipped or {})
        if self.skipped:
            logger.warning(
                "%s: skipped %d record(s) under %s: %s",
                name, sum(self.skipped.values()), root, dict(self.skipped),
            )

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[EvalSample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return (
            f"Benchmark({self.name!r}, root={str(self.root)!r}, samples={len(self)}, "
            f"annotated={len(self._annotations)}, skipped={self.n_skipped})"
        )

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def samples(self, limit: int | None = None) -> Iterator[EvalSample]:
        """The samples in file order (the first ``limit`` only, if given)."""
        return iter(self._samples[:limit] if limit is not None else self._samples)

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[list[EvalSample]]:
        """Consecutive lists of at most ``batch_size`` samples; the last may be shorter."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunk = list(self.samples(limit))
        for start in range(0, len(chunk), batch_size):
            yield chunk[start : start + batch_size]

    def annotations(self) -> dict[str, Any]:
        """Question id → annotation record for every sample that has a ground truth."""
        if not self._annotations:
            raise BenchmarkDataError(
                f"{self.name}: the data under {self.root} has no ground-truth answers to score against"
            )
        return dict(self._annotations)

    def align(self, predictions: dict[str, str]) -> dict[str, str]:
        """An answer file's ``{id: text}`` (in file order) under this benchmark's question ids."""
        return self._align(self, predictions) if self._align is not None else predictions

    def score(self, predictions: Mapping[Any, Any]) -> dict:
        """Score ``{question_id: answer text}`` with this benchmark's scorer."""
        return self._scorer(predictions, self.annotations())


# --- reading helpers ----------------------------------------------------------------------------


def require_file(path: Path, bench: str, what: str) -> Path:
    """``path`` if it is a file, else :class:`BenchmarkDataError` explaining ``what`` belongs there."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkDataError(f"{bench}: expected {what} at {path}, but no such file exists")
    return path


def require_dir(path: Path, bench: str, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise BenchmarkDataError(f"{bench}: expected {what} at {path}, but no such directory exists")
    return path


def resolve_file(path: Path | str, names: tuple[str, ...], bench: str, what: str) -> Path:
    """``path`` itself if it is a file, else the first of ``names`` inside the directory ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise BenchmarkDataError(
            f"{bench}: expected {what} ({' or '.join(names)}) in {path}, but none of them exists"
        )
    raise BenchmarkDataError(f"{bench}: {path} does not exist; expected {what} ({' or '.join(names)}) or its folder")


def read_json(path: Path, bench: str, what: str) -> Any:
    require_file(path, bench, what)
    try:
        return fsio.read_json_file(path)
    except fsio.DataFileError as err:
        raise BenchmarkDataError(f"{bench}: {err}; expected {what}") from err


def read_jsonl(path: Path, bench: str, what: str, skipped: Counter) -> list[dict]:
    """The JSON object of each non-empty line; a bad line is skipped and counted."""
    require_file(path, bench, what)
    rows = []
    bad: dict[str, int] = {}
    for _, row in fsio.iter_jsonl(path, bad):
        if not isinstance(row, dict):
            skipped["line is not a JSON object"] += 1
            continue
        rows.append(row)
    skipped.update(bad)
    return rows


def read_tsv(path: Path, bench: str, what: str, skipped: Counter, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header (VLMEvalKit / MMBench layout).

    A row with the wrong number of fields is skipped and counted. Cells are strings; a missing
    required column raises :class:`BenchmarkDataError`.
    """
    require_file(path, bench, what)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 image cells are large
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise BenchmarkDataError(
                f"{bench}: {path} lacks column(s) {', '.join(missing)}; expected {what} with columns "
                f"{', '.join(required)} (found {', '.join(header) or 'no header'})"
            )
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                skipped["row has the wrong number of fields"] += 1
                continue
            rows.append(row)
    return rows


def is_missing(value: Any) -> bool:
    """True for ``None`` and for the cell strings pandas reads as missing (``""``, ``nan``, ``None`` …)."""
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in PANDAS_NA


IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def find_image(directory: Path, stem: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Path | None:
    """The file ``<stem><ext>`` in ``directory`` for the first extension that exists, else None."""
    for ext in extensions:
        candidate = directory / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None
