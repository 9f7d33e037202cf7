"""The watched roots (and whether inotify can watch them), and bringing the tasks sent
and the ``kloros:seen:<root>`` hashes in line with the disk.

The producer's pump thread hands the Syncer batches of changed paths (and, at start
and every reconciliation, whole trees); the Syncer looks at each file, stores the
blobs, sends the tasks and records what it sent.

Delivery: a change is written to the seen hash only after every task for it was sent,
and a blob is stored before the first task that needs it is sent.  Besides the tasks
themselves, a batch of one root costs a few round trips, however many files it holds:
one HMGET (a reconciliation reads each seen hash once, with HGETALL), one MULTI/EXEC
of blobs per ``BLOB_FLUSH_BYTES`` of content, one pipelined seen-hash write.  A
reconciliation and a storm (STORM_FILES or more files in one batch) send one batch
task per detector per ``payload.BATCH_FILES`` files or ``payload.BATCH_BYTES`` of
blobs; a smaller batch sends one task per detector per file, as a live edit does.  A
failure in the middle of a batch may send a change twice (tasks are idempotent) and
may leave blob references that no task releases (their TTL ends them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from kloros_tasks import names
from kloros_tasks.settings import Settings
from kloros_tasks.watch import filters
from kloros_tasks.watch.filters import SeenEntry
from kloros_tasks.watch.send import Sender
from kloros_tasks.watch.tree import walk_tree
from kloros_tasks.work import blobs
from kloros_tasks.work.payload import BATCH_BYTES, BATCH_FILES, Change, batch_json

log = logging.getLogger(__name__)

BATCH = 500  # paths per seen-hash pipeline
# Content held for one blob pipeline: bounds the producer's memory when a batch is
# hundreds of files near the size cap, while small files still go in one round trip.
BLOB_FLUSH_BYTES = 8 * 1024 * 1024
GONE, IGNORE, LARGE, CONTENT = "gone", "ignore", "large", "content"
INOTIFY_MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
# The burst marker (names.burst): held while a reconciliation or a storm of changes of
# a root is being sent, so that workers defer judging until the whole of it is in the
# queue (a watcher sending slower than workers drain would otherwise let them judge a
# half-indexed tree).  Its TTL frees the workers of a watcher that died while sending.
BURST_TTL = 30
BURST_REFRESH = 5.0
STORM_FILES = 20  # changed files in one batch that make a storm
STORM_LINGER = 5  # seconds a storm's marker outlasts its last batch: more may follow

Reader = Callable[[str, int], bytes]


def inotify_watch_limit() -> int | None:
    """``fs.inotify.max_user_watches``, or None where it cannot be read (not Linux)."""
    try:
        return int(INOTIFY_MAX_WATCHES.read_text())
    except (OSError, ValueError):
        return None


def count_dirs(path: str, stop_after: int) -> int:
    """Directories watchdog would watch under ``path`` (itself included, symlinks not
    followed), counting no further than ``stop_after`` + 1."""
    count, stack = 0, [path]
    while stack and count <= stop_after:
        count += 1
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
    return count


@dataclass(frozen=True)
class Root:
    name: str
    path: str  # absolute, symlinks resolved


class WatchError(ValueError):
    """The roots cannot be watched; the message is one line for the operator."""


def resolve_roots(paths: Iterable[str | os.PathLike]) -> list[Root]:
    """The watched roots, named by ``root_name``; raise WatchError when one is not a
    directory, when two share a name, or when there is none."""
    by_name: dict[str, str] = {}
    for raw in paths:
        path = os.path.realpath(os.fspath(raw))
        if not os.path.isdir(path):
            raise WatchError(f"watch root {os.fspath(raw)!r} is not a directory")
        name = filters.root_name(path)
        if by_name.get(name, path) != path:
            raise WatchError(
                f"watch roots {by_name[name]} and {path} have the same name {name!r};"
                " root names must be unique (rename or move one of them)"
            )
        by_name[name] = path
    if not by_name:
        raise WatchError("no watch root given (PATH arguments or KLOROS_WATCH_ROOTS)")
    return [Root(name, path) for name, path in by_name.items()]


@dataclass
class _Task:
    rel: str
    detectors: Iterable[str]
    event: str
    sha: str | None = None
    skip: str | None = None
    size: int = 0  # bytes of its blob


def bounded(tasks: list[_Task]) -> Iterable[list[_Task]]:
    """``tasks`` in order, cut into batches of at most BATCH_FILES files and BATCH_BYTES
    of blobs (a single file over it makes a batch of its own)."""
    batch: list[_Task] = []
    size = 0
    for task in tasks:
        if batch and (len(batch) == BATCH_FILES or size + task.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(task)
        size += task.size
    if batch:
        yield batch


@dataclass
class _Plan:
    """One root's share of a batch, in the order it reaches Redis: blobs, then the
    tasks that need them, then the seen-hash writes once every task is sent."""

    blobs: list[tuple[str, bytes, int]] = field(default_factory=list)
    blob_bytes: int = 0
    tasks: list[_Task] = field(default_factory=list)
    writes: list[tuple[str, str | None]] = field(default_factory=list)

    def store(self, sha: str, data: bytes, refs: int) -> None:
        self.blobs.append((sha, data, refs))
        self.blob_bytes += len(data)


def _under_symlink(base: str, rel: str) -> bool:
    """True when a directory between the root and ``rel`` is a symlink."""
    current = base
    for part in rel.split("/")[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            return True
    return False


class Syncer:
    """Makes the tasks sent and the ``kloros:seen:<root>`` hashes agree with the disk.

    Every method may raise a Redis or broker connection error; nothing is then recorded
    as seen, so the caller can simply try the same paths again later.
    """

    def __init__(self, settings: Settings, client: redis.Redis, sender: Sender,
                 reader: Reader, roots: list[Root]) -> None:
        self.settings, self.client, self.sender = settings, client, sender
        self.reader, self.roots = reader, roots
        self.by_name = {root.name: root for root in roots}
        self._bursts: dict[str, float] = {}  # root name -> when its marker was last set

    # --- the burst marker -------------------------------------------------------------
    def _hold_burst(self, name: str, ttl: int = BURST_TTL) -> None:
        self.client.set(names.burst(name), json.dumps({"pid": os.getpid(), "ts": time.time()}),
                        ex=ttl)
        self._bursts[name] = time.monotonic()

    def _refresh_bursts(self) -> None:
        now = time.monotonic()
        for name, since in list(self._bursts.items()):
            if now - since >= BURST_REFRESH:
                self._hold_burst(name)

    def _end_bursts(self) -> None:
        """The last task of the burst is sent: workers may judge."""
        if self._bursts:
            self.client.delete(*(names.burst(name) for name in self._bursts))
            self._bursts.clear()

    def process(self, items: Iterable[tuple[tuple[str, str], str]]) -> None:
        """Send what changed for each ((root name, relpath), kind): one HMGET, one blob
        pipeline and one pipelined seen-hash write per root."""
        by_root: dict[str, list[str]] = {}
        for (name, rel), _kind in items:
            by_root.setdefault(name, []).append(rel)
        for name, rels in by_root.items():
            if len(rels) >= STORM_FILES:
                # More batches may follow (the pump sends a storm in batches): the
                # marker lingers past this one instead of being deleted.
                self.client.set(names.burst(name), json.dumps({"pid": os.getpid(),
                                                               "ts": time.time()}),
                                ex=STORM_LINGER)
            olds = self.client.hmget(names.seen(name), rels)
            self._sync(self.by_name[name], zip(rels, olds, strict=True),
                       bulk=len(rels) >= STORM_FILES)

    def seen_under(self, root: Root, dirs: set[str]) -> list[str]:
        """The seen paths inside any of the directories ``dirs`` (relpaths)."""
        found = []
        for key in (k.decode() for k in self.client.hkeys(names.seen(root.name))):
            parts = key.split("/")
            if any("/".join(parts[:i]) in dirs for i in range(1, len(parts))):
                found.append(key)
        return found

    def reconcile(self, stopping: threading.Event,
                  progress: Callable[[int, int], None] | None = None) -> bool:
        """Bring every seen hash in line with the disk: one HGETALL per root; files whose
        stat differs are hashed, gone ones deleted, writes pipelined per batch.  False
        when ``stopping`` interrupted it."""
        plans, files = [], 0
        for root in self.roots:
            raw = self.client.hgetall(names.seen(root.name))
            seen = {k.decode(): v for k, v in raw.items()}
            on_disk = dict(walk_tree(root.path, self.settings.exclude))
            to_check, gone = filters.reconcile_plan(on_disk, seen)
            plans.append((root, seen, to_check + gone))
            files += len(on_disk)
        total, done = sum(len(p[2]) for p in plans), 0
        try:
            for root, _seen, rels in plans:
                if rels:
                    self._hold_burst(root.name)
            for root, seen, rels in plans:
                for start in range(0, len(rels), BATCH):
                    if progress is not None:
                        progress(done, total)
                    if stopping.is_set():
                        return False
                    batch = rels[start:start + BATCH]
                    self._sync(root, ((rel, seen.get(rel)) for rel in batch), bulk=True)
                    done += len(batch)
            self._end_bursts()
        finally:
            # Cut short (stopping, Redis gone): the markers expire by themselves, and
            # the next reconciliation sets them again.
            self._bursts.clear()
        if progress is not None:
            progress(done, total)
        log.info("reconciled %d files under %s: %d new, changed or gone since last sent",
                 files, ", ".join(root.name for root, _, _ in plans), total)
        return True

    # --- one batch of one root --------------------------------------------------------
    def _sync(self, root: Root, olds: Iterable[tuple[str, bytes | None]],
              bulk: bool = False) -> None:
        """Handle each (relpath, raw seen entry) and commit the batch's writes; with
        ``bulk`` (a reconciliation, a storm), send batch tasks."""
        plan = _Plan()
        for rel, raw in olds:
            self._handle(root, rel, SeenEntry.parse(raw), plan)
            if plan.blob_bytes >= BLOB_FLUSH_BYTES:
                self._flush(root, plan, bulk)
        self._flush(root, plan, bulk)
        self._commit(root.name, plan.writes)

    def _flush(self, root: Root, plan: _Plan, bulk: bool = False) -> None:
        """Store the planned blobs in one round trip, then send the tasks needing them:
        one per detector per file, or with ``bulk`` one per detector per bounded batch
        of files (a batch holds one reference to each blob it names, as a task does)."""
        blobs.store_many(self.client, plan.blobs, ttl=self.settings.blob_ttl)
        plan.blobs, plan.blob_bytes = [], 0
        tasks, plan.tasks = plan.tasks, []
        if not bulk:
            for task in tasks:
                self._refresh_bursts()
                self._send(root, task)
            return
        # Cut once, for every detector: each detector's batch k holds its share of the
        # same files, so the first of a worker's batch tasks k to start can apply their
        # Python files for every detector it serves, parsing each once (work/claims.py).
        # Package markers first (filters.markers_first), as a reconciliation walks them.
        tasks.sort(key=lambda task: filters.markers_first(task.rel))
        # One stamp per chunk, so that each detector's share names the same changes.
        for chunk in bounded(tasks):
            ts = time.time()
            for detector in sorted({d for task in chunk for d in task.detectors}):
                self._refresh_bursts()
                self._send_batch(root, detector, [t for t in chunk if detector in t.detectors],
                                 ts)

    def _examine(self, root: Root, rel: str) -> tuple[str, os.stat_result | None, bytes]:
        """What is at ``rel`` now: GONE (absent, or nothing to analyse: a symlink, a FIFO,
        a socket, a device, a path through a symlinked directory), IGNORE (unreadable for
        now), LARGE (stat only) or CONTENT (stat and bytes)."""
        path = os.path.join(root.path, rel)
        if _under_symlink(root.path, rel):
            log.debug("not following %s: a directory on its path is a symlink", path)
            return GONE, None, b""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return GONE, None, b""
        except OSError as exc:
            log.warning("cannot stat %s (%s); it is retried on its next change", path, exc)
            return IGNORE, None, b""
        if not stat.S_ISREG(st.st_mode):
            log.debug("ignoring %s: not a regular file", path)
            return GONE, None, b""
        cap = self.settings.max_file_bytes
        if st.st_size > cap:
            return LARGE, st, b""
        try:
            data = self.reader(path, cap + 1)
        except (FileNotFoundError, NotADirectoryError):
            return GONE, None, b""
        except OSError as exc:
            log.warning("cannot read %s (%s); it is retried on its next change", path, exc)
            return IGNORE, None, b""
        return (LARGE if len(data) > cap else CONTENT), st, data

    def _handle(self, root: Root, rel: str, old: SeenEntry | None, plan: _Plan) -> None:
        """Plan the change of one file (if any): its blob, its tasks, its seen-hash write."""
        detectors = filters.should_enqueue(rel, self.settings.exclude)
        what, st, data = self._examine(root, rel) if detectors else (GONE, None, b"")
        if what == IGNORE:
            return
        if what == GONE:
            if old is not None:  # the workers forget it; a path never sent needs nothing
                plan.tasks.append(_Task(rel, filters.route(rel), "deleted"))
                plan.writes.append((rel, None))
            return
        sha = hashlib.sha256(data).hexdigest() if what == CONTENT else None
        size = st.st_size if sha else max(st.st_size, len(data))
        entry = SeenEntry(sha, st.st_mtime_ns, size)
        action = filters.decide(old, entry)
        if action == filters.SEND:
            event = "created" if old is None else "modified"
            if sha is None:
                skip = f"too large ({size} bytes > {self.settings.max_file_bytes})"
                plan.tasks.append(_Task(rel, detectors, event, skip=skip))
            else:
                plan.store(sha, data, len(detectors))
                plan.tasks.append(_Task(rel, detectors, event, sha=sha, size=len(data)))
        if action != filters.SAME:
            plan.writes.append((rel, entry.format()))

    def _send(self, root: Root, task: _Task) -> None:
        ts = time.time()
        for detector in sorted(task.detectors):
            change = Change(root=root.name, path=task.rel, event=task.event,
                            sha256=task.sha, skip=task.skip, ts=ts)
            self.sender.send(detector, change.to_json())

    def _send_batch(self, root: Root, detector: str, batch: list[_Task], ts: float) -> None:
        changes = [Change(root=root.name, path=task.rel, event=task.event, sha256=task.sha,
                          skip=task.skip, ts=ts) for task in batch]
        if len(changes) == 1:  # a batch of one is a single-file task
            self.sender.send(detector, changes[0].to_json())
        else:
            self.sender.send_batch(detector, batch_json(root.name, changes))

    def _commit(self, root_key: str, writes: list[tuple[str, str | None]]) -> None:
        if not writes:
            return
        key = names.seen(root_key)
        pipe = self.client.pipeline(transaction=False)
        for rel, value in writes:
            if value is None:
                pipe.hdel(key, rel)
            else:
                pipe.hset(key, rel, value)
        pipe.execute()
