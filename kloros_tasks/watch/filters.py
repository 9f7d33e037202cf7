"""The producer's pure decisions: which paths matter, to whom, and when.

Nothing here touches the file system, Redis or the clock: paths are relative POSIX
strings, times are numbers handed in by the caller.  ``producer.py`` is the I/O edge
that feeds these functions; tests call them directly.

Routing rule for ``names.FILE_DETECTOR_SUFFIXES``: an entry that starts with "." and
has no other "." (``.py``, ``.md``) is a suffix, compared with the file's last
suffix; any other entry (``pyproject.toml``, ``requirements*.txt``,
``.env.example``) is a glob matched, case-sensitively, against the file's basename.
"""

from __future__ import annotations

import errno
import posixpath
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from kloros_tasks import names
from kloros_tasks.routing import is_suffix_entry, route  # noqa: F401 - part of this module's API
from kloros_tasks.work.payload import PayloadError, check_relpath

# --- what is never analysed ---------------------------------------------------------
VCS_DIRS = frozenset({".git", ".hg", ".svn"})
CACHE_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
# Virtualenvs are recognised by name only: spotting ``pyvenv.cfg`` would need a read.
VENV_DIRS = frozenset({".venv", "venv", ".tox", ".nox", "site-packages"})
VENDOR_DIRS = frozenset({"node_modules"})
BUILD_DIRS = frozenset({"build", "dist"})
SKIP_DIRS = VCS_DIRS | CACHE_DIRS | VENV_DIRS | VENDOR_DIRS | BUILD_DIRS
SKIP_DIR_GLOBS = ("*.egg-info",)
# vim swap files and its "can I write here?" probe 4913, emacs backups and lock links.
EDITOR_TEMP_GLOBS = ("*.swp", "*.swo", "*.swx", "*~", ".#*", "4913")

# --- change kinds -------------------------------------------------------------------
CHANGED = "changed"
DELETED = "deleted"
DIR_CHANGED = "dir_changed"  # a directory appeared (created or moved in): walk it
DIR_DELETED = "dir_deleted"  # a directory vanished: everything seen under it is gone
FILE_KINDS = (CHANGED, DELETED)

# What to do with a file after looking at it (see ``decide``).
SEND, RESTAT, SAME = "send", "restat", "same"
# The sysctl to raise for each errno watchdog reports when inotify runs out.
INOTIFY_SYSCTL = {
    errno.ENOSPC: "fs.inotify.max_user_watches",
    errno.EMFILE: "fs.inotify.max_user_instances",
}

_ROOT_CHARS = re.compile(r"[^A-Za-z0-9_.@+-]")
ROOT_NAME_MAX = 128


def _parts(relpath: str) -> list[str]:
    return [p for p in relpath.split("/") if p]


def _excluded_by(relpath: str, parts: list[str], exclude: Iterable[str]) -> bool:
    """True when a KLOROS_EXCLUDE glob matches the whole relpath or one component."""
    for pattern in exclude:
        if fnmatchcase(relpath, pattern) or any(fnmatchcase(p, pattern) for p in parts):
            return True
    return False


def _skipped_dir_name(name: str) -> bool:
    return name in SKIP_DIRS or any(fnmatchcase(name, g) for g in SKIP_DIR_GLOBS)


def dir_is_excluded(relpath: str, exclude: Iterable[str] = ()) -> bool:
    """True when nothing under directory ``relpath`` (relative to its root) is analysed.

    Used to prune walks; the root itself (``""``) is never excluded.
    """
    parts = _parts(relpath)
    if not parts:
        return False
    return any(_skipped_dir_name(p) for p in parts) or _excluded_by(relpath, parts, exclude)


def is_editor_temp(name: str) -> bool:
    """True for a basename that an editor writes while saving, never a real source."""
    return any(fnmatchcase(name, g) for g in EDITOR_TEMP_GLOBS)


def is_utf8(relpath: str) -> bool:
    """False for a name holding undecodable bytes (Python keeps them as surrogates)."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def should_enqueue(
    relpath: str,
    exclude: Iterable[str] = (),
    table: Mapping[str, Iterable[str]] | None = None,
) -> set[str]:
    """The detectors that want the file at ``relpath``; empty when it must be ignored.

    Ignored: anything under VCS, cache, virtualenv, node_modules or build directories,
    editor temp files, names that are not valid UTF-8 (they cannot travel in a JSON
    task), and whatever a KLOROS_EXCLUDE glob (``exclude``) matches, tried against the
    whole relpath and against each path component.
    """
    if not is_utf8(relpath):
        return set()
    parts = _parts(relpath)
    if not parts or is_editor_temp(parts[-1]):
        return set()
    if any(_skipped_dir_name(p) for p in parts[:-1]) or _excluded_by(relpath, parts, exclude):
        return set()
    return route(relpath, table)


def root_name(path: str) -> str:
    """A watched root's name: its basename, every character outside [A-Za-z0-9_.@+-]
    replaced by "_", at most 128 characters ("root" for the file-system root)."""
    base = posixpath.basename(path.rstrip("/")) or "root"
    name = _ROOT_CHARS.sub("_", base)[:ROOT_NAME_MAX]
    return "_" + name[1:] if name in (".", "..") else name


def relative(root_path: str, path: str) -> str | None:
    """``path`` relative to ``root_path``, or None when it is the root itself, lies
    outside it, or is not a path a task payload can carry."""
    prefix = root_path.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    try:
        return check_relpath(path[len(prefix):])
    except PayloadError:
        return None


def inotify_advice(err: int | None, detail: str) -> str | None:
    """The one line printed when inotify runs out of watches or instances, else None."""
    sysctl = INOTIFY_SYSCTL.get(err)
    if sysctl is None:
        return None
    return (f"kloros-tasks watch: {detail}; raise {sysctl} (e.g. sysctl -w {sysctl}=524288,"
            " persisted in /etc/sysctl.d/) or watch a smaller tree")


def event_changes(
    event_type: str, src: str, dest: str, is_directory: bool
) -> list[tuple[str, str]]:
    """Translate one watchdog event (by its ``event_type`` string) into (path, kind) pairs.

    A move is a deletion of its source and a change of its destination.  Opens,
    closes without a write and directory modifications carry no change.
    """
    if event_type == "moved":
        gone, came = (DIR_DELETED, DIR_CHANGED) if is_directory else (DELETED, CHANGED)
        return [(p, k) for p, k in ((src, gone), (dest, came)) if p]
    if is_directory:
        kind = {"created": DIR_CHANGED, "deleted": DIR_DELETED}.get(event_type)
    elif event_type in ("created", "modified", "closed", "attrib"):
        # attrib: a chmod can make a file that could not be read readable again.
        kind = CHANGED
    else:
        kind = DELETED if event_type == "deleted" else None
    return [(src, kind)] if kind and src else []


def coalesce(old: str | None, new: str) -> str:
    """Fold a new event kind into the one already waiting for the same path.

    created + modified -> changed; changed then deleted -> deleted; deleted then
    created -> changed.  The latest event describes the file's final state, which
    the producer checks again anyway, so the newer kind wins once normalised.
    """
    # ``old`` stays in the signature so call sites read as the fold they are.
    return DELETED if new == DELETED else CHANGED


class Debouncer:
    """Per-path quiet window: a path is due once no event arrived for ``quiet`` seconds,
    or once it has waited ``max_delay`` seconds (so a file written without pause,
    a log say, is still analysed now and then)."""

    def __init__(self, quiet: float, max_delay: float = 2.0) -> None:
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self._waiting: dict[Hashable, list] = {}  # key -> [kind, first, last]

    def __len__(self) -> int:
        return len(self._waiting)

    def feed(self, key: Hashable, kind: str, now: float) -> None:
        """Record an event of ``kind`` for ``key`` at time ``now``."""
        entry = self._waiting.get(key)
        if entry is None:
            self._waiting[key] = [coalesce(None, kind), now, now]
        else:
            entry[0] = coalesce(entry[0], kind)
            entry[2] = now

    def _is_due(self, entry: list, now: float) -> bool:
        return now - entry[2] >= self.quiet or now - entry[1] >= self.max_delay

    def due(self, now: float) -> list[tuple[Hashable, str]]:
        """Remove and return the (key, kind) pairs whose window has passed, oldest first."""
        ready = [k for k, e in self._waiting.items() if self._is_due(e, now)]
        return [(k, self._waiting.pop(k)[0]) for k in ready]

    def flush(self) -> list[tuple[Hashable, str]]:
        """Remove and return everything, due or not (used when stopping)."""
        out = [(k, e[0]) for k, e in self._waiting.items()]
        self._waiting.clear()
        return out

    def next_in(self, now: float) -> float | None:
        """Seconds until the next key is due (0 when one already is), None when idle."""
        if not self._waiting:
            return None
        soonest = min(min(e[2] + self.quiet, e[1] + self.max_delay) for e in self._waiting.values())
        return max(0.0, soonest - now)


class PendingChanges:
    """Changes waiting to be sent, one coalesced kind per key, at most ``limit`` keys.

    Past the limit a new key is not stored; ``overflow`` is set instead, and the
    owner must then reconcile every root, which finds whatever was not stored.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overflow = False
        self._items: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, kind: str) -> None:
        if key in self._items or len(self._items) < self.limit:
            self._items[key] = coalesce(self._items.get(key), kind)
        else:
            self.overflow = True

    def take(self, count: int) -> list[tuple[Hashable, str]]:
        """Remove and return up to ``count`` changes, oldest first."""
        keys = list(self._items)[:count]
        return [(k, self._items.pop(k)) for k in keys]

    def restore(self, items: Iterable[tuple[Hashable, str]]) -> None:
        """Put back changes that could not be sent; a newer kind for a key wins."""
        for key, kind in items:
            if key not in self._items:
                self.add(key, kind)


class Backoff:
    """Exponential retry delays: ``first`` seconds, doubling, capped at ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass(frozen=True)
class SeenEntry:
    """A value of the ``kloros:seen:<root>`` hash: "sha256 mtime_ns size".

    A file sent without content (too large) is stored with "-" for its digest.
    """

    sha256: str | None
    mtime_ns: int
    size: int

    def format(self) -> str:
        return f"{self.sha256 or '-'} {self.mtime_ns} {self.size}"

    @property
    def stat(self) -> tuple[int, int]:
        return (self.mtime_ns, self.size)

    @classmethod
    def parse(cls, raw: str | bytes | None) -> SeenEntry | None:
        """None when absent; a malformed value parses to an entry that matches nothing,
        so the file is simply analysed again."""
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        fields = text.split()
        try:
            sha, mtime, size = fields[0], int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            return cls(None, -1, -1)
        return cls(None if sha == "-" else sha, mtime, size)


def decide(old: SeenEntry | None, new: SeenEntry) -> str:
    """SEND when the file must be analysed, RESTAT when only its stored stat is stale
    (touched, same bytes), SAME when nothing changed.  ``new.sha256`` is None for a
    file too large to read: then only its stat can tell."""
    if old == new:
        return SAME
    if old is not None and new.sha256 is not None and old.sha256 == new.sha256:
        return RESTAT
    return SEND


def reconcile_plan(
    walked: Mapping[str, tuple[int, int]], seen: Mapping[str, str | bytes]
) -> tuple[list[str], list[str]]:
    """Compare a walk ({relpath: (mtime_ns, size)}) with the seen hash.

    Returns (to_check, gone): files that are new or whose stat differs (the caller
    hashes them to tell a real change from a touch), and seen paths no longer there.
    """
    to_check = []
    for rel, stat in walked.items():
        entry = SeenEntry.parse(seen.get(rel))
        if entry is None or entry.stat != stat:
            to_check.append(rel)
    gone = [rel for rel in seen if rel not in walked]
    return sorted(to_check, key=markers_first), sorted(gone)


def markers_first(rel: str) -> tuple[bool, str]:
    """Sort key: package markers (``__init__.py``) before other files, each by path.
    A module's name depends on the markers above it; sent with the first batches,
    they are indexed before most modules below them, which are then named right from
    the start instead of extracted again when their marker comes (engine._renamed)."""
    return posixpath.basename(rel) != names.PACKAGE_FILE, rel
