"""Writing files and folders so that nothing is half-written and nothing the user owns is lost.

* :func:`atomic_open` / :func:`atomic_write` / :func:`atomic_write_json` — a file is written to a
  temporary file beside it, flushed to disk and renamed over the target, so a reader (or a run
  killed mid-write) sees the old file or the new one, never a partial one.
* :func:`staged_dir` — a folder (a model, a run's results) is built in a temporary sibling and
  moved into place only when complete; an existing target is replaced only when the caller was
  told to (``overwrite``), and the old one is deleted only after the new one is in place.
* :func:`refuse_occupied` — refuse, before any work, to write over an output that already exists.

Standard library only: importing it costs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class OutputExistsError(FileExistsError, ValueError):
    """An output already exists and the command was not told to replace it."""


def _umask_mode(mode: int = 0o666) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """A handle on a temporary file beside ``path``; on success it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. On any exception the temporary file is removed
    and ``path`` is left as it was. ``durable`` fsyncs before the rename (a power cut then leaves
    the old file or the whole new one); files that are cheap to make again may skip it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; give the usual file permissions
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes, durable: bool = True) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", durable=durable) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """``json.dump`` to ``path`` atomically (UTF-8, trailing newline)."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, default=str)
        f.write("\n")


def refuse_occupied(out: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an output folder that exists and is not empty, unless ``overwrite`` (call it before slow work)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty; choose another output or pass {flag}")


@contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it becomes ``out``.

    If ``out`` exists and is not empty, it is refused unless ``overwrite``; then it is moved aside,
    the new folder moved in, and only then the old one deleted. On any exception the temporary
    folder is removed and ``out`` is untouched.
    """
    out = Path(out).absolute()
    refuse_occupied(out, overwrite, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))
        yield tmp
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, aside / "old")
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------- folders a generator owns
OWNER_FILE = ".hires-vlm-owned.json"


class ForeignFilesError(OutputExistsError):
    """A folder a generator would write into holds files it did not write."""


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _is_temp_of(rel: str, owned: set[str]) -> bool:
    """``dir/.name.<anything>.tmp`` is an interrupted atomic write of ``dir/name``."""
    parent, _, base = rel.rpartition("/")
    if not (base.startswith(".") and base.endswith(".tmp")):
        return False
    for target in owned:
        t_parent, _, t_base = target.rpartition("/")
        if t_parent == parent and base.startswith(f".{t_base}."):
            return True
    return False


class OwnedFolder:
    """A folder a generator owns: marked by ``.hires-vlm-owned.json``, which lists every file it wrote.

    :meth:`claim` creates the folder, or takes it over when it is empty, or when it is already
    marked and holds nothing but the listed files; otherwise it refuses, naming what it found, so
    that a generator never writes over, or deletes, a file it did not write. :meth:`record` adds
    files to the list *before* they are written (so an interrupted run leaves nothing unlisted);
    :meth:`prune` deletes listed files that are no longer wanted — and only those.

    ``adopt(root)``, if given, recognises a folder written before the marker existed: it returns
    the set of files that folder's generator wrote (or ``None``), and the folder is then claimed if
    it holds nothing else.
    """

    def __init__(self, root: str | os.PathLike, owner: str, adopt=None):
        self.root = Path(root)
        self.owner = owner
        self.adopt = adopt
        self.files: set[str] = set()

    @property
    def marker(self) -> Path:
        return self.root / OWNER_FILE

    def _write(self) -> None:
        atomic_write_json(self.marker, {"owner": self.owner, "files": sorted(self.files)}, indent=0)

    def _refuse(self, what: str) -> None:
        raise ForeignFilesError(
            f"{self.root} {what}; {self.owner} writes only into a new or empty folder, or one it wrote before. "
            "Choose another folder, or move those files away"
        )

    def claim(self) -> set[str]:
        """Take the folder (see the class); return the files it already holds that are ours."""
        root = self.root
        if root.exists() and not root.is_dir():
            self._refuse("is a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
        present = {p.relative_to(root).as_posix() for p in _files_under(root)}
        if self.marker.exists():
            try:
                data = json.loads(self.marker.read_text(encoding="utf-8"))
                files = {str(f) for f in data["files"]}
                if data.get("owner") != self.owner:
                    self._refuse(f"belongs to {data.get('owner')!r}")
            except (OSError, ValueError, KeyError, TypeError):
                self._refuse(f"has an unreadable {OWNER_FILE}")
        elif not present:
            files = set()
        else:
            files = self.adopt(root) if self.adopt is not None else None
            if files is None:
                self._refuse(f"holds {len(present)} file(s) it did not write ({_examples(present)})")
        foreign = {f for f in present - files - {OWNER_FILE} if not _is_temp_of(f, files)}
        if foreign:
            self._refuse(f"holds {len(foreign)} file(s) it did not write ({_examples(foreign)})")
        self.files = files & present
        if not self.marker.exists() or self.files != files:
            self._write()  # a folder claimed again unchanged is not touched
        return set(self.files)

    def record(self, rel_paths) -> None:
        """List ``rel_paths`` (POSIX, relative to the folder) as ours, before they are written."""
        self.files |= {str(p) for p in rel_paths}
        self._write()

    def prune(self, keep) -> int:
        """Delete the listed files not in ``keep`` and our interrupted writes; return how many were deleted."""
        keep = {str(p) for p in keep}
        removed = 0
        for rel in sorted(self.files - keep):
            path = self.root / rel
            if path.is_file():
                path.unlink()
                removed += 1
        for path in _files_under(self.root):
            rel = path.relative_to(self.root).as_posix()
            if _is_temp_of(rel, self.files | keep):
                path.unlink()
        self.files = keep
        self._write()
        return removed


def _examples(names, k: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:k]) + (f", … {len(names) - k} more" if len(names) > k else "")


# ---------------------------------------------------------------------- paths given by records
class PathOutsideError(ValueError):
    """A path from a data record is absolute, holds a NUL byte, or resolves outside its folder."""


def is_inside(path: str | os.PathLike, roots) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots`` (symlinks resolved)."""
    full = os.path.realpath(path)
    for root in roots:
        r = os.path.realpath(root)
        if os.path.commonpath([r, full]) == r:
            return True
    return False


def resolve_inside(root: str | os.PathLike, rel: str, what: str = "image path") -> str:
    """``root/rel`` with symlinks resolved, if it stays inside ``root`` — the one rule for every path
    a training or evaluation record gives. Refuses absolute paths, ``..`` escapes, symlinks that
    leave the folder and NUL bytes with :class:`PathOutsideError`; ``rel`` must be a non-empty string.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise PathOutsideError(f"{what} must be a non-empty string, got {rel!r}")
    if "\x00" in rel:
        raise PathOutsideError(f"{what} {rel!r} contains a NUL byte")
    if os.path.isabs(rel):
        raise PathOutsideError(f"{what} {rel!r} is absolute, outside {os.fspath(root)!r}: records give paths "
                               "relative to their folder")
    full = os.path.realpath(os.path.join(root, rel))
    if not is_inside(full, [root]):
        raise PathOutsideError(f"{what} {rel!r} points outside {os.fspath(root)!r}")
    return full


# ---------------------------------------------------------------------- JSON files of records
class DataFileError(ValueError):
    """A data file cannot be read as a whole; the message names the file and the fix."""


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole JSON file (a UTF-8 BOM is accepted), with errors that name the file.

    Truncated or malformed JSON, bytes that are not UTF-8 and nesting too deep for the parser are
    :class:`DataFileError` s, never a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {os.fspath(path)!r}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        hint = " — the file ends early (truncated?)" if err.pos >= len(text.rstrip()) else ""
        raise DataFileError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
                            f"{hint}") from None
    except RecursionError:
        raise DataFileError(f"{path} nests JSON deeper than the parser allows; records are flat objects") from None


def iter_jsonl(path: str | os.PathLike, bad: dict | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-empty line of a JSON Lines file.

    A line that is not UTF-8, not JSON or nested too deep is skipped and counted in ``bad``
    (reason → count) — one broken line never loses the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {os.fspath(path)!r}")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "line is not UTF-8"
            except json.JSONDecodeError:
                reason = "line is not valid JSON"
            except RecursionError:
                reason = "line nests JSON too deep"
            else:
                continue
            if bad is not None:
                bad[reason] = bad.get(reason, 0) + 1


def read_records_file(path: str | os.PathLike, bad: dict | None = None) -> list:
    """A JSON list (``[...]``) or a JSON Lines file, by its first non-blank character."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {os.fspath(path)!r}")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        data = read_json_file(path)
        if not isinstance(data, list):
            raise DataFileError(f"{path} must hold a JSON list of records")
        return data
    return [value for _, value in iter_jsonl(path, bad)]
