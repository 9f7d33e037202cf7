"""The snapshot file: its format, its checks, and how it is replaced.

Written atomically (a temporary file in the same directory, fsynced, then
``os.replace``, then the directory fsynced).  A snapshot about to be replaced by one
that lost most of its content (a Redis emptied and partly refilled before anyone
noticed) is first moved to ``<name>.previous``, unless that already holds more, so the
last good snapshot is never lost to a bad one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader or a crash finds the old file or the
    new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename must reach the disk too, or a crash could bring the old file back.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        return summarise(load_snapshot(path))
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
