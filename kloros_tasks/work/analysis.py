"""What a file-change task does, minus Celery: validate, fetch, analyse, publish.

``handle_change`` is called by the thin tasks in tasks.py with a Redis client, a
Publisher and a detector.  It never raises for bad input: it returns an outcome word
and logs why.  Redis errors propagate so the task layer retries them.

Deferred evaluation: while more changes wait in the detector's queue, or the watcher
holds the root's burst marker (it is still sending a cold scan, a reconciliation or
a ``git checkout``), a change only updates the index and adds the files it affects
to ``kloros:deferred:<detector>:<root>``; once the burst is over they are all
evaluated once (``settle``).  Cross-file rules are then judged against the
whole burst instead of half of it, so no question is opened only to be resolved a
moment later, and a file affected by a hundred changes is evaluated once instead of
a hundred times.  Questions are a pure function of the final index, so the result is
the same as evaluating after every change.  The settle task queued when a burst starts
deferring waits for the burst's end (it queues itself again while one goes on), up to
SETTLE_MAX_WAIT; a change that finds the burst over settles at once too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from kloros_tasks import names
from kloros_tasks.detectors._kept import Kept
from kloros_tasks.detectors.base import FileDetector
from kloros_tasks.state.index import RedisIndex
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work import blobs, engine
from kloros_tasks.work.deferral import defer, next_deferred, root_lock, someone_waits
from kloros_tasks.work.payload import Change, PayloadError, decoded, parse

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 30
LOCK_WAIT = 60
SETTLE_BATCH = 200  # deferred files evaluated between two looks for a waiting change
# Batches evaluated under one hold of the lock while no change waits, their lookups
# kept.  Five made integration's settle of Django in process 1.4 s instead of 2.2 s,
# but raised the peak of a 5,000-file burst by 10 MiB (the kept resolver of 1,000
# generated files, whose lookups are nearly all different), two by 7 MiB for a gain
# within the noise: one, until the view is bounded by what it holds
# (docs/performance.md, section 0).
SETTLE_KEPT = 1
SETTLE_BUDGET = 20.0  # seconds one task spends settling before handing the rest over
# However long a burst goes on, deferred files are judged after this long: a watcher
# that never stops sending must not silence the root for ever.
SETTLE_MAX_WAIT = 600.0
SETTLE_RECHECK = 1.0  # seconds a settle task waits before looking at the burst again
# Fairness: a waiter says that it waits for the root's lock (deferral.someone_waits);
# settling pauses SETTLE_YIELD s between two batches only then, so a change waiting
# for the lock gets it in between instead of timing out behind a settle of thousands
# of files.  Nobody waiting (one pool process, a cold scan), it does not pause: that
# was 1.4 s of sleep on Django's 895 files.
SETTLE_YIELD = 0.12


@dataclass(frozen=True)
class Context:
    client: object
    publisher: Publisher
    max_file_bytes: int
    # Called with (detector, root) when a burst starts deferring evaluations: the task
    # layer queues a settle task behind the burst, so the deferred files are judged
    # even if the burst's last task never completes (dead-lettered, worker killed).
    schedule_settle: Callable[[str, str], None] | None = None
    # How long a root's lock outlives a holder that died (a child SIGKILLed or killed
    # at the hard time limit): no holder can need it longer than the task time limit.
    lock_timeout: float = LOCK_TIMEOUT
    lock_wait: float = LOCK_WAIT  # then redis.exceptions.LockError: the task tries again
    # The other file detectors this worker serves, for a batch that claims its Python
    # files (claims.py): called with (detector, root), it gives each other detector
    # and whether its environment changed (worker_detector).  None where the worker
    # serves one file detector's queue.
    companions: Callable[[str, str], list[tuple[FileDetector, bool]]] | None = None
    claimant: str | None = None  # the task's id, which owns the claims it takes


def registered_root(client, root: str) -> dict | None:
    raw = client.hget(names.ROOTS, root)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def read_inside(base: str, rel: str, max_bytes: int) -> bytes | str | None:
    """The bytes of ``rel`` under the root directory ``base``, read as the watcher would:
    its real path must lie inside the root's real path with no symlink on the way, and
    its size is checked before any byte is read.  Returns the bytes, a reason string
    when it is too large, or None (absent, not a regular file, behind a link)."""
    if not isinstance(base, str) or not os.path.isabs(base):
        return None
    try:
        base = os.path.realpath(base)
        path = os.path.join(base, rel)
        # realpath resolves every symlink on the way: any difference means one was
        # crossed (a link to a file, or to a directory inside or outside the root).
        if os.path.realpath(path) != path:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            if st.st_size > max_bytes:
                return f"too large ({st.st_size} bytes > {max_bytes})"
            raw = f.read(max_bytes + 1)
    except (OSError, ValueError):
        return None
    if len(raw) > max_bytes:  # grew after the stat
        return f"too large ({len(raw)}+ bytes > {max_bytes})"
    return raw


def _local_copy(root_info: dict, change: Change, host: str,
                max_bytes: int) -> bytes | str | None:
    """The file from this host's disk when the blob expired, only if it is the same
    bytes (see ``read_inside``).  ``host`` is this worker's name as configured
    (KLOROS_HOSTNAME), the name the watcher registered its roots under.  Returns the
    bytes, a reason string when it is too large, or None."""
    if root_info.get("host") != host or not root_info.get("path"):
        return None
    raw = read_inside(root_info["path"], change.path, max_bytes)
    if not isinstance(raw, bytes):
        return raw
    return raw if hashlib.sha256(raw).hexdigest() == change.sha256 else None


def content(ctx: Context, root_info: dict, change: Change,
            fetched: bytes | int | None) -> tuple[bytes | None, str | None]:
    """(bytes, None) to analyse, or (None, reason) when the change has no analysable
    content; ``fetched`` is what ``blobs.fetch`` gave for the change's digest."""
    if change.event == "deleted":
        return None, None
    if change.skip:
        return None, change.skip
    raw = fetched
    if isinstance(raw, int):  # measured in Redis, never loaded
        return None, f"too large ({raw} bytes > {ctx.max_file_bytes})"
    if raw is not None and hashlib.sha256(raw).hexdigest() != change.sha256:
        raw = None  # never analyse bytes that are not the ones named
    if raw is None:
        local = _local_copy(root_info, change, ctx.publisher.host, ctx.max_file_bytes)
        if isinstance(local, str):
            return None, local
        if local is None:
            return None, "superseded"
        raw = local
    return raw, None


def _fetch(ctx: Context, change: Change) -> bytes | int | None:
    if change.event == "deleted" or change.skip or not change.sha256:
        return None
    return blobs.fetch(ctx.client, change.sha256, ctx.max_file_bytes)


def prepare(detector: FileDetector, index, path: str, raw: bytes | None,
            reason: str | None, package: str):
    """(text, facts, reason): the decoded text and its facts, extracted from the
    layout ``index`` has now (None, None and why for content that is not text)."""
    text, reason = decode(path, raw, reason)
    facts = engine.extract(detector, index, path, text, package) if text is not None else None
    return text, facts, reason


def decode(path: str, raw: bytes | None, reason: str | None) -> tuple[str | None, str | None]:
    """(text, reason): ``raw`` decoded, or None and why it is not text."""
    if raw is None:
        return None, reason
    try:
        return engine.decode_source(path, raw), reason
    except engine.NotText as exc:
        return None, str(exc)


def apply_one(ctx: Context, detector: FileDetector, index, change: Change, text, facts,
              package: str, root_info: dict, *, readers: bool = True) -> engine.Applied:
    """``engine.apply_change`` of one change; the caller holds the root's lock."""
    applied = engine.apply_change(
        detector, index, change.path, text, change.sha256, facts=facts,
        root_package=package, reread=lambda rel: _read_local(ctx, root_info, rel),
        stamp=change.ts, readers=readers)
    if applied.stale:
        log.info("%s: %d modules under %s:%s:%s keep their old names until they change "
                 "(not readable on this host)", detector.name, len(applied.stale),
                 detector.name, change.root, change.path)
    return applied


def decode_payload(obj) -> Change:
    return parse(decoded(obj))


def handle_change(ctx: Context, detector: FileDetector, obj, *,
                  reevaluate_all: bool = False) -> str:
    """Analyse one change; returns "refused", "duplicate", "superseded", "skipped",
    "syntax-error" or "analysed"."""
    try:
        change = decode_payload(obj)
    except PayloadError as exc:
        log.warning("%s: refused malformed task payload: %s", detector.name, exc)
        return "refused"
    root_info = registered_root(ctx.client, change.root)
    if root_info is None:
        log.warning("%s: refused %s:%s: no watcher registered the root %r",
                    detector.name, change.root, change.path, change.root)
        return "refused"
    try:
        return _analyse(ctx, detector, change, root_info, reevaluate_all)
    finally:
        if change.sha256:
            blobs.release(ctx.client, change.sha256)


def _analyse(ctx: Context, detector: FileDetector, change: Change, root_info: dict,
             reevaluate_all: bool) -> str:
    index = RedisIndex(ctx.client, detector.name, change.root, keep_journal=True)
    key = f"{detector.name}:{change.root}:{change.path}"
    stored = index.facts(change.path)
    if engine.sent_later(stored, change.ts):
        log.info("%s: %s was sent before the change already analysed; ignored",
                 detector.name, key)
        return "superseded"
    if (change.sha256 and not reevaluate_all and stored is not None
            and stored.data.get(engine.DIGEST) == change.sha256):
        # Delivered again, or a rename back: already in the index.  Done only if the
        # questions it affects were published or deferred too; a delivery that died
        # (or a transient error) in between left its journal entry to finish from.
        return finish(ctx, detector, index, change) or "duplicate"
    raw, reason = content(ctx, root_info, change, _fetch(ctx, change))
    if reason == "superseded":
        log.info("%s: %s changed again before analysis; the newer task covers it",
                 detector.name, key)
        return "superseded"
    package = root_package(root_info, change.root, ctx.publisher.host)
    # Parse outside the lock: a slow or killed parse must not hold up the whole root.
    text, facts, reason = prepare(detector, index, change.path, raw, reason, package)
    with root_lock(ctx, detector.name, change.root):
        applied = apply_one(ctx, detector, index, change, text, facts, package, root_info)
        owners = set(applied.owners)
        if reevaluate_all:  # the world the detector judges against changed
            owners.update(index.paths())
        judge(ctx, detector, index, change.root, owners, package)
        index.settled(change.path)
    pipe = ctx.client.pipeline(transaction=False)  # both records in one round trip
    outcome = record(pipe, key, reason or applied.skipped, applied.error)
    pipe.execute()
    return outcome


def finish(ctx: Context, detector: FileDetector, index: RedisIndex,
            change: Change) -> str | None:
    """Publish or defer what the journaled last change of the file affects; None when
    nothing was left unfinished."""
    if index.pending(change.path) is None:
        return None
    with root_lock(ctx, detector.name, change.root):
        touched = index.pending(change.path)
        if touched is None:  # another delivery finished it meanwhile
            return None
        owners = {change.path} | detector.affected(change.path, touched, index)
        package = root_package(registered_root(ctx.client, change.root), change.root,
                               ctx.publisher.host)
        judge(ctx, detector, index, change.root, owners, package)
        index.settled(change.path)
    log.info("%s: finished %s:%s, whose questions an earlier delivery left unpublished",
             detector.name, change.root, change.path)
    return "analysed"


def judge(ctx: Context, detector: FileDetector, index, root: str, owners: set[str],
          package: str, *, join: bool = False) -> None:
    """Defer ``owners`` while a burst goes on, else publish their questions now.  With
    ``join`` they are also deferred while evaluations of the root wait to be settled
    (the task that settles them evaluates each file once)."""
    if not defer(ctx, detector.name, root, owners, join):
        _publish(ctx, detector, index, root, owners, package)


def root_package(root_info: dict | None, root: str, host: str) -> str:
    """The dotted package name of a watched root that is itself a package: from this
    host's disk when the root is here, else the root's name (used only when the
    index holds the root's own ``__init__.py``)."""
    info = root_info or {}
    if info.get("host") == host and info.get("path"):
        return engine.package_prefix(info["path"])
    return root


def _read_local(ctx: Context, root_info: dict, rel: str) -> str | None:
    """The text of another file of the root from this host's disk, or None."""
    if root_info.get("host") != ctx.publisher.host or not root_info.get("path"):
        return None
    raw = read_inside(root_info["path"], rel, ctx.max_file_bytes)
    if not isinstance(raw, bytes):
        return None
    try:
        return engine.decode_source(rel, raw)
    except engine.NotText:
        return None


def _publish(ctx: Context, detector: FileDetector, index, root: str, owners,
             package: str, view: Kept | None = None) -> None:
    ctx.publisher.sync_many(detector.name, root,
                            engine.evaluate(detector, index, owners, root, package, view))


def settle(ctx: Context, detector: FileDetector, root: str,
           budget: float = SETTLE_BUDGET) -> int:
    """Evaluate and publish the deferred files of (detector, root), SETTLE_BATCH at a
    time, for up to ``budget`` seconds; returns how many are still deferred.

    Files leave the set only after their questions are published, so a worker killed
    half-way leaves them for the next settle.  While nobody waits for the root's lock,
    up to SETTLE_KEPT batches are evaluated under one hold of it, through one view
    that keeps what their lookups read (the modules most files import are read once,
    not once per batch)."""
    key, since = names.deferred(detector.name, root), names.deferred_since(detector.name, root)
    index = RedisIndex(ctx.client, detector.name, root)
    deadline = time.monotonic() + budget
    package = root_package(registered_root(ctx.client, root), root, ctx.publisher.host)
    while True:
        waits = False
        with root_lock(ctx, detector.name, root):
            view = Kept(index)  # holds while the lock is held
            for _ in range(SETTLE_KEPT):
                batch = next_deferred(ctx.client, key, index, SETTLE_BATCH)
                if not batch:
                    ctx.client.delete(since)
                    return 0
                _publish(ctx, detector, index, root, batch, package, view)
                ctx.client.srem(key, *batch)
                # More may follow: let a waiting change in first.
                waits = len(batch) == SETTLE_BATCH and \
                    someone_waits(ctx.client, detector.name, root)
                if waits or time.monotonic() >= deadline:
                    break
        if time.monotonic() >= deadline:
            return ctx.client.scard(key)
        if waits:
            time.sleep(SETTLE_YIELD)


def record(target, key: str, reason: str | None, error: str | None) -> str:
    """Record why ``key`` ("<detector>:<root>:<path>") was not analysed and whether it
    parses, through ``target`` (a client or a pipeline); returns the outcome word."""
    if reason:
        log.warning("not analysing %s: %s", key, reason)
        target.hset(names.SKIPPED, key, reason)
    else:
        target.hdel(names.SKIPPED, key)
    if error is None:
        target.hdel(names.SYNTAX_ERRORS, key)
        return "skipped" if reason else "analysed"
    log.info("%s does not parse (%s); keeping its previous facts", key, error)
    target.hset(names.SYNTAX_ERRORS, key, error)
    return "syntax-error"
