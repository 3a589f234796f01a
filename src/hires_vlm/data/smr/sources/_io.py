"""Small file helpers shared by the source converters (JSON, JSON Lines, layout look-ups)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ..records import MALFORMED, Item, Skipped, SourceLayoutError


def load_json(path: Path) -> object:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON Lines file; blank lines are ignored."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def first_existing(root: Path, candidates: tuple[str, ...], *, what: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that exists, else a layout error."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    tried = ", ".join(candidates)
    raise SourceLayoutError(f"{root}: no {what} (looked for {tried})")


def natural_key(path: Path) -> tuple:
    """Sort key that puts ``2.json`` before ``10.json``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def guarded(record_id: str, build: Callable[[], Item]) -> Item:
    """Run one record's conversion; a missing or ill-typed field skips the record, not the run."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return Skipped(MALFORMED, record_id)
