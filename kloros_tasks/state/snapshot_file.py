"""The snapshot file: its format, its checks, and how it is replaced.

One JSON object: ``format``, ``version`` and ``written_at`` first, then ``seen``,
``facts``, ``owned`` and ``ledger``, and last a ``summary`` (open questions and
indexed files), which ``read_summary`` reads from the end of the file without loading
the rest.  A snapshot written before the summary existed is read and counted whole.

Written as it is produced (``JsonStream`` into an ``AtomicFile``: a temporary file in
the same directory, fsynced, then ``os.replace``, then the directory fsynced), so the
writer never holds the whole document.  A snapshot about to be replaced by one
that lost most of its content (a Redis emptied and partly refilled before anyone
noticed) is first moved to ``<name>.previous``, unless that already holds more, so the
last good snapshot is never lost to a bad one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("kloros_tasks.state.snapshot")

FORMAT = "kloros-state-snapshot"
VERSION = 1
PREVIOUS_SUFFIX = ".previous"  # a snapshot replaced by one that lost most of its content
SHRINK_MIN = 20  # below this many files (or questions), halving is a small tree changing
WRITE_BUFFER = 1 << 20  # bytes buffered before a snapshot being written goes to the disk
SUMMARY_TAIL = 256  # bytes at the end of a snapshot that hold its "summary" member
_HEAD = f'{{"format":"{FORMAT}","version":{VERSION},'.encode()  # how a writer starts
_SUMMARY = re.compile(rb'"summary":\{"questions":(\d+),"files":(\d+)\}\}\s*\Z')


class SnapshotError(ValueError):
    """A file is not a readable state snapshot; the message says why."""


@dataclass(frozen=True)
class Summary:
    """What a snapshot holds: open questions and indexed files (per detector)."""

    questions: int
    files: int


def summarise(document: dict[str, Any]) -> Summary:
    """How many open questions and indexed files a snapshot document holds."""
    files = sum(len(paths) for paths in document["facts"].values())
    return Summary(questions=len(document["ledger"]), files=files)


def read_summary(path: str | os.PathLike) -> Summary:
    """What the snapshot at ``path`` holds, from the ``summary`` member its writer
    put last, so that the file need not be read whole; a snapshot without one (written
    before it existed) is loaded and counted.  SnapshotError or OSError as
    ``load_snapshot``."""
    with open(path, "rb") as f:
        head = f.read(len(_HEAD))
        f.seek(max(0, f.seek(0, os.SEEK_END) - SUMMARY_TAIL))
        found = _SUMMARY.search(f.read())
    if head == _HEAD and found:
        return Summary(questions=int(found[1]), files=int(found[2]))
    return summarise(load_snapshot(path))


class AtomicFile:
    """A temporary file beside ``path`` that ``commit`` puts in place, so that a reader
    or a crash finds the old file or the new one, never part of one; left without a
    commit (an exception while writing), it is removed and ``path`` is untouched.

    Written through a bounded buffer, so a large snapshot goes to the disk as it is
    produced instead of being built whole in memory first."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._tmp: str | None = None
        self._out = None

    def __enter__(self) -> AtomicFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                         suffix=".tmp")
        self._out = os.fdopen(fd, "w", encoding="ascii", buffering=WRITE_BUFFER)
        return self

    def write(self, text: str) -> None:
        self._out.write(text)

    def commit(self, summary: Summary | None = None) -> None:
        """Flush and fsync the new file, keep the old one as ``<name>.previous`` when
        ``summary`` says the new one lost most of its content (``keep_previous``), then
        rename the new file over ``path`` and fsync the directory."""
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        if summary is not None:
            keep_previous(self.path, summary)
        os.replace(self._tmp, self.path)
        self._tmp = None
        # The rename must reach the disk too, or a crash could bring the old file back.
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __exit__(self, *_exc) -> None:
        if self._tmp is not None:
            with contextlib.suppress(OSError, ValueError):
                self._out.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (AtomicFile)."""
    with AtomicFile(path) as out:
        out.write(text)
        out.commit()


class JsonStream:
    """Writes one JSON value piece by piece: objects opened and closed explicitly,
    members written as they come, compact and ASCII-only as ``json.dumps`` writes them."""

    def __init__(self, out) -> None:
        self.out = out
        self._first: list[bool] = []  # per open object: no member written yet

    def begin(self, key: str | None = None) -> None:
        """Open an object: the whole value, or the member ``key`` of the open one."""
        self._key(key)
        self.out.write("{")
        self._first.append(True)

    def item(self, key: str, value: Any) -> None:
        """The member ``key`` of the open object."""
        self._key(key)
        self.out.write(_dumps(value))

    def end(self) -> None:
        self.out.write("}")
        self._first.pop()

    def _key(self, key: str | None) -> None:
        if not self._first:
            return
        if not self._first[-1]:
            self.out.write(",")
        self._first[-1] = False
        self.out.write(_dumps(key) + ":")


def begin_document(doc: JsonStream, written_at: float) -> None:
    """Open a snapshot document: format, version and time first (``read_summary``
    recognises a snapshot by them)."""
    doc.begin()
    doc.item("format", FORMAT)
    doc.item("version", VERSION)
    doc.item("written_at", written_at)


def end_document(doc: JsonStream, summary: Summary) -> None:
    """Close a snapshot document with its ``summary``, the last member, where
    ``read_summary`` finds it without reading the rest."""
    doc.item("summary", {"questions": summary.questions, "files": summary.files})
    doc.end()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def load_snapshot(path: str | os.PathLike) -> dict[str, Any]:
    """The checked snapshot document at ``path``: SnapshotError when the file is not a
    snapshot of this version or any part is malformed; OSError when it cannot be read."""
    try:
        document = json.loads(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SnapshotError("not a kloros state snapshot")
    if document.get("version") != VERSION:
        raise SnapshotError(f"snapshot version {document.get('version')!r} is not {VERSION}")
    summary = document.get("summary", {"questions": 0, "files": 0})  # absent: written before
    if not isinstance(summary, dict) or not all(
            isinstance(summary.get(k), int) for k in ("questions", "files")):
        raise SnapshotError("'summary' is malformed")
    _check(document, "ledger", _is_json_object)
    _check(document, "owned", lambda v: isinstance(v, list) and all(_is_str(m) for m in v))
    for part, valid in (("seen", _is_str), ("facts", _is_facts)):
        _check(document, part, lambda v, valid=valid: isinstance(v, dict) and all(
            _is_str(f) and valid(x) for f, x in v.items()))
    return document


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_json_object(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _is_facts(value: Any) -> bool:
    """A facts JSON as RedisIndex stores it: relations of string lists, a data object."""
    if not _is_json_object(value):
        return False
    obj = json.loads(value)
    relations, data = obj.get("relations", {}), obj.get("data", {})
    return isinstance(data, dict) and isinstance(relations, dict) and all(
        isinstance(v, list) and all(_is_str(x) for x in v) for v in relations.values())


def _check(document: dict, part: str, valid: Callable[[Any], bool]) -> None:
    value = document.get(part)
    if not isinstance(value, dict) or not all(
            _is_str(key) and valid(item) for key, item in value.items()):
        raise SnapshotError(f"{part!r} is missing or malformed")


# --- replacing --------------------------------------------------------------------------

def previous_path(path: str | os.PathLike) -> Path:
    """Where a snapshot is kept when a newer one lost most of its content."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def shrank(old: Summary, new: Summary) -> bool:
    """True when ``new`` lost most of what ``old`` held: a Redis emptied and partly
    refilled, not a tree that shrank a little."""
    return (old.files >= SHRINK_MIN and new.files * 2 < old.files) or (
        old.questions >= SHRINK_MIN and new.questions * 2 < old.questions)


def _summary_of(path: Path) -> Summary | None:
    try:
        return read_summary(path)
    except (SnapshotError, OSError):
        return None  # none, or unreadable: nothing worth keeping


def keep_previous(path: Path, new: Summary) -> None:
    """Before ``path`` is replaced by a snapshot that lost most of its content, move it
    to ``<name>.previous``, unless that already holds more (the last good one)."""
    old = _summary_of(path) if path.exists() else None
    if old is None or not shrank(old, new):
        return
    previous = previous_path(path)
    kept = _summary_of(previous) if previous.exists() else None
    if kept is not None and kept.files >= old.files and kept.questions >= old.questions:
        return
    os.replace(path, previous)
    log.warning("the new state snapshot holds %d files and %d open questions where %s held"
                " %d and %d; the previous one is kept as %s", new.files, new.questions,
                path, old.files, old.questions, previous)
