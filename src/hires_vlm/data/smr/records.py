"""What a source converter yields: a candidate record, a skipped record, or a note.

Converters stay pure: they read one source's released files and say, record by record, either
"here is a question about this image" (:class:`Candidate`) or "this record is dropped, because…"
(:class:`Skipped`). Checking images, deduplicating, counting and writing happen once, in
``build.py``, so every source is treated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Skip reasons. Closed set, so the report's columns mean the same thing for every source.
NO_IMAGE = "no_image"  # the source record has no image (text-only question)
IMAGE_MISSING = "image_missing"  # the image file does not exist
IMAGE_CORRUPT = "image_corrupt"  # Pillow cannot open or verify the file
IMAGE_OUTSIDE_ROOT = "image_outside_root"  # the image is not under the image root
EXCLUDED_SPLIT = "excluded_split"  # not a training record (val/test split, AI2D test image)
MATHVISION_TESTMINI = "mathvision_testmini"  # MATH-Vision test-mini, held out by SliME
NOT_REASONING = "not_reasoning_template"  # DVQA question outside the reasoning templates
SUBSAMPLED = "subsampled"  # dropped by the per-source cap (DVQA: 100K, as in SliME)
BAD_ANSWER = "bad_answer"  # the gold answer cannot be matched to an option
EMPTY_TEXT = "empty_text"  # question or answer is empty
MALFORMED = "malformed_record"  # a required field is missing or has the wrong type
ABC_IMAGE_UNAVAILABLE = "abc_label_image_unavailable"  # AI2D letter-label question, no letter image

SKIP_REASONS = (
    NO_IMAGE,
    IMAGE_MISSING,
    IMAGE_CORRUPT,
    IMAGE_OUTSIDE_ROOT,
    EXCLUDED_SPLIT,
    MATHVISION_TESTMINI,
    NOT_REASONING,
    SUBSAMPLED,
    BAD_ANSWER,
    EMPTY_TEXT,
    MALFORMED,
    ABC_IMAGE_UNAVAILABLE,
)


class SourceLayoutError(RuntimeError):
    """A source folder exists but lacks the files its released layout has."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One question about one image, before image checks and deduplication.

    ``id`` is the source's own id (the builder prefixes the source name); ``image`` is an
    absolute path; ``question`` carries no ``<image>`` token (the builder adds it).
    """

    id: str
    image: Path
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A source record that is read but not kept, with its reason (one of ``SKIP_REASONS``)."""

    reason: str
    id: str = ""


@dataclass(frozen=True, slots=True)
class Note:
    """Something the user should know about a whole source (shown in the report, not counted)."""

    text: str


Item = Candidate | Skipped | Note
