"""What an SMR build did, per source: records read, kept, skipped (by reason), duplicates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SourceCounts:
    """Counts for one source. ``read == kept + duplicates + sum(skipped.values())``."""

    read: int = 0
    kept: int = 0
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "read": self.read,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "skipped": dict(sorted(self.skipped.items())),
            "notes": list(self.notes),
        }


@dataclass
class SMRReport:
    """The report of one ``build_smr`` run, written next to the output as ``<out>.report.json``."""

    sources_dir: str
    out_file: str
    image_root: str
    seed: int
    limits: dict[str, int | None]
    sources: dict[str, SourceCounts] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # source name -> why it was not read

    @property
    def total(self) -> SourceCounts:
        total = SourceCounts()
        for counts in self.sources.values():
            total.read += counts.read
            total.kept += counts.kept
            total.duplicates += counts.duplicates
            total.skipped.update(counts.skipped)
        return total

    def to_dict(self) -> dict:
        return {
            "sources_dir": self.sources_dir,
            "out_file": self.out_file,
            "image_root": self.image_root,
            "seed": self.seed,
            "limits": dict(self.limits),
            "sources": {name: counts.to_dict() for name, counts in self.sources.items()},
            "missing": dict(self.missing),
            "total": self.total.to_dict(),
        }

    def format_table(self) -> str:
        """Plain-text table, one row per source read, then the missing sources and notes."""
        header = ("source", "read", "kept", "dup", "skipped", "skip reasons")
        rows = [_row(name, counts) for name, counts in self.sources.items()]
        rows.append(_row("TOTAL", self.total))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
        lines = []
        for row in (header, *rows):
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:])]
            lines.append("  ".join(cells + [row[-1]]).rstrip())
        for name, counts in self.sources.items():
            lines += [f"note [{name}]: {note}" for note in counts.notes]
        lines += [f"missing [{name}]: {why}" for name, why in self.missing.items()]
        return "\n".join(lines)


def _row(name: str, counts: SourceCounts) -> tuple[str, ...]:
    reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(counts.skipped.items()))
    skipped = sum(counts.skipped.values())
    return (name, str(counts.read), str(counts.kept), str(counts.duplicates), str(skipped), reasons)
