"""Image checks for the SMR builder: does the file exist, can Pillow read it, what is its hash.

Each file is read once: the same bytes feed Pillow's ``verify`` and the SHA-256 that
deduplication compares. Results are cached per path because many questions share one image
(AI2D, ChartQA and DVQA ask several questions per chart or diagram).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .records import IMAGE_CORRUPT, IMAGE_MISSING


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """``sha256`` of the file's bytes when readable; otherwise ``problem`` names a skip reason."""

    sha256: str | None
    problem: str | None = None


class ImageChecker:
    """Checks images and remembers the answer for each absolute path."""

    def __init__(self) -> None:
        self._cache: dict[str, ImageCheck] = {}

    def check(self, path: Path) -> ImageCheck:
        key = os.path.abspath(path)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = _check(Path(key))
        return cached


def _check(path: Path) -> ImageCheck:
    if not path.is_file():
        return ImageCheck(None, IMAGE_MISSING)
    try:
        data = path.read_bytes()
    except OSError:
        return ImageCheck(None, IMAGE_MISSING)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    # Pillow reports unreadable files with many exception types (UnidentifiedImageError,
    # SyntaxError from plugins, OSError, ValueError, struct.error, DecompressionBombError): any
    # of them means the record cannot be trained on, which is all this check decides.
    except Exception:
        return ImageCheck(None, IMAGE_CORRUPT)
    return ImageCheck(hashlib.sha256(data).hexdigest())
