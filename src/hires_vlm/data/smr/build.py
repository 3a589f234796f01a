"""Build the SMR instruction set: run every source's converter, check images, deduplicate, write.

Per candidate record, in this order: the per-source cap (random, seeded), the image path made
relative to the image root, the image check (exists, Pillow verifies it), then deduplication on
(SHA-256 of the image bytes, normalised question) across and within sources, the first one
kept. Kept records are streamed into a temporary file next to the output, which replaces the
output only once everything succeeded (``os.replace``), so a failed run never leaves a partial
file behind. The report goes to ``<out>.report.json`` the same way.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .images import ImageChecker
from .prompts import normalise_question
from .records import (
    IMAGE_OUTSIDE_ROOT,
    SUBSAMPLED,
    Candidate,
    Item,
    Note,
    Skipped,
    SourceLayoutError,
)
from .registry import SourceSpec, find_source_dir, get_source, select_sources
from .report import SMRReport, SourceCounts


class SMRError(RuntimeError):
    """The build cannot run at all (no sources dir, no source found)."""


def report_path(out_file: str | os.PathLike) -> Path:
    """Where the report of a build writing ``out_file`` goes: ``<out>.report.json``."""
    out = Path(out_file)
    return out.with_name(out.name + ".report.json")


def build_smr(
    sources_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    sources: Iterable[str] | None = None,
    image_root: str | os.PathLike | None = None,
    seed: int = 0,
    limits: Mapping[str, int | None] | None = None,
    progress: bool = True,
) -> SMRReport:
    """Convert every source found under ``sources_dir`` into one LLaVA conversation JSON list.

    ``sources``: names to build (default: all); a missing one is reported and skipped.
    ``image_root``: what written image paths are relative to (default: ``sources_dir``).
    ``limits``: per-source caps overriding the defaults (DVQA: 100 000); ``None`` or 0 = no cap.
    Raises :class:`SMRError` when no source is found.
    """
    sources_root = Path(sources_dir)
    if not sources_root.is_dir():
        raise SMRError(f"sources dir {sources_root} does not exist or is not a folder")
    root = Path(image_root) if image_root is not None else sources_root
    specs = select_sources(sources)
    caps = {spec.name: spec.default_limit for spec in specs}
    for name, cap in (limits or {}).items():
        caps[get_source(name).name] = cap or None
    report = SMRReport(
        sources_dir=str(sources_root),
        out_file=str(out_file),
        image_root=str(root),
        seed=seed,
        limits={spec.name: caps[spec.name] for spec in specs},
    )

    located: list[tuple[SourceSpec, Iterator[Item]]] = []
    for spec in specs:
        folder = find_source_dir(sources_root, spec)
        if folder is None:
            report.missing[spec.name] = f"no folder named {' / '.join(spec.folders)}"
            continue
        try:
            located.append((spec, spec.convert(folder)))
        except SourceLayoutError as error:
            report.missing[spec.name] = str(error)
    if not located:
        raise SMRError(_nothing_found(sources_root, specs, report.missing))

    checker = ImageChecker()
    seen: set[tuple[str, str]] = set()
    with atomic_text(Path(out_file)) as handle:
        writer = _JsonListWriter(handle)
        for spec, items in located:
            counts = report.sources[spec.name] = SourceCounts()
            capped = _cap(items, caps[spec.name], f"{seed}:{spec.name}")
            for item in tqdm(capped, desc=spec.name, unit="rec", disable=not progress):
                record = _admit(item, spec.name, counts, root, checker, seen)
                if record is not None:
                    writer.write(record)
        writer.close()
    write_json_atomic(report_path(out_file), report.to_dict())
    return report


def _admit(
    item: Item,
    source: str,
    counts: SourceCounts,
    image_root: Path,
    checker: ImageChecker,
    seen: set[tuple[str, str]],
) -> dict | None:
    """Count one item; return the record to write when it is kept."""
    if isinstance(item, Note):
        counts.notes.append(item.text)
        return None
    counts.read += 1
    if isinstance(item, Skipped):
        counts.skipped[item.reason] += 1
        return None
    relative = _relative(item.image, image_root)
    if relative is None:
        counts.skipped[IMAGE_OUTSIDE_ROOT] += 1
        return None
    check = checker.check(item.image)
    if check.problem is not None:
        counts.skipped[check.problem] += 1
        return None
    question = item.question.replace("<image>", "").strip()
    key = (check.sha256, normalise_question(question))
    if key in seen:
        counts.duplicates += 1
        return None
    seen.add(key)
    counts.kept += 1
    return {
        "id": f"{source}_{item.id}",
        "image": relative,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": item.answer},
        ],
        "source": source,
    }


def _relative(image: Path, image_root: Path) -> str | None:
    relative = os.path.relpath(os.path.abspath(image), os.path.abspath(image_root))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return Path(relative).as_posix()


def _cap(items: Iterator[Item], cap: int | None, seed: str) -> Iterator[Item]:
    """Keep ``cap`` candidates chosen at random (seeded), in source order; skip the rest."""
    if cap is None:
        yield from items
        return
    candidates: list[Candidate] = []
    for item in items:
        if isinstance(item, Candidate):
            candidates.append(item)
        else:
            yield item
    chosen = set(random.Random(seed).sample(range(len(candidates)), min(cap, len(candidates))))
    for index, candidate in enumerate(candidates):
        yield candidate if index in chosen else Skipped(SUBSAMPLED, candidate.id)


def _nothing_found(sources_dir: Path, specs: list[SourceSpec], missing: Mapping[str, str]) -> str:
    lines = [f"no SMR source found under {sources_dir}; expected one or more of:"]
    for spec in specs:
        lines.append(f"  {spec.folders[0]}/  {spec.layout}  ({missing.get(spec.name, '')})")
    return "\n".join(lines)


class _JsonListWriter:
    """Writes a JSON list, one record per line, into an open text handle."""

    def __init__(self, handle: TextIO) -> None:
        self._handle = handle
        self._count = 0
        handle.write("[")

    def write(self, record: dict) -> None:
        separator = "\n" if self._count == 0 else ",\n"
        self._handle.write(separator + json.dumps(record, ensure_ascii=False))
        self._count += 1

    def close(self) -> None:
        self._handle.write("\n]\n")


def atomic_text(path: Path):
    """A text handle on a temp file beside ``path``; on success it replaces ``path`` atomically
    (``fsio.atomic_open``). On any exception ``path`` is left as it was."""
    from ... import fsio

    return fsio.atomic_open(path, "w")


def write_json_atomic(path: Path, data: object) -> None:
    """``json.dump`` into a temp file beside ``path``, then ``os.replace`` it into place."""
    with atomic_text(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
