"""Deferred evaluation: the root's lock, the deferred set and the burst it waits for.

While a burst of changes of a root goes on (tasks wait in the detector's queue, or the
watcher's burst marker is held), the files whose questions may change are added to
the deferred set of (detector, root) instead of being evaluated; the settle
(analysis.settle) evaluates them once the burst is over.  Index updates and the
set's changes of one detector on one root happen under the root's lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from redis.lock import Lock

from kloros_tasks import names
from kloros_tasks.work import claims

log = logging.getLogger(__name__)
# A waiter polls the root's lock every LOCK_POLL s and says at each poll that it waits,
# for LOCK_WAITING_MS (a few polls).
LOCK_POLL = 0.05
LOCK_WAITING_MS = 500
WHOLE_ROOT_CHUNK = 1_000  # paths per SADD when every file of a root is deferred


class Context(Protocol):
    """What of the tasks' context (analysis.Context) deferral uses."""

    client: object
    lock_timeout: float
    lock_wait: float
    schedule_settle: Callable[[str, str], None] | None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


class RootLock(Lock):
    """The lock serialising one detector's index updates on one root; a caller that
    finds it held says so (``names.lock_waiting``) at each poll while it waits."""

    def __init__(self, client, detector: str, root: str, **kwargs) -> None:
        super().__init__(client, names.lock(detector, root), **kwargs)
        self.waiting = names.lock_waiting(detector, root)
        self._probing = False

    def do_acquire(self, token) -> bool:
        if super().do_acquire(token):
            return True
        if not self._probing:
            self.redis.set(self.waiting, b"1", px=LOCK_WAITING_MS)
        return False

    def try_acquire(self) -> bool:
        """Take the lock if it is free now, without waiting or saying that one waits;
        ``with`` then holds it without taking it again."""
        self._probing = True
        try:
            return self.acquire(blocking=False)
        finally:
            self._probing = False

    def __enter__(self):
        if self.local.token is not None:  # taken by try_acquire
            return self
        return super().__enter__()


def root_lock(ctx: Context, detector: str, root: str) -> RootLock:
    return RootLock(ctx.client, detector, root, timeout=ctx.lock_timeout,
                    sleep=LOCK_POLL, blocking_timeout=ctx.lock_wait)


def held_now(ctx: Context, detector: str, root: str) -> bool:
    """Whether another task holds the root's lock now (asked by taking and releasing
    it, without saying that one waits)."""
    lock = root_lock(ctx, detector, root)
    if not lock.try_acquire():
        return True
    lock.release()
    return False


def take_settling(client, detector: str, root: str, owner: str, ttl: float) -> bool:
    """Whether ``owner`` (a task id) is now the one task settling (detector, root): it
    took ``names.settling``, or holds it already (a redelivery of the same task).  Two
    settles of one root would take the root's lock in turns, each pausing for the
    other between its holds: twice the time for the same work."""
    key, ms = names.settling(detector, root), max(1, int(ttl * 1000))
    pipe = client.pipeline(transaction=True)
    pipe.set(key, owner, nx=True, px=ms)
    pipe.get(key)
    _, holder = pipe.execute()
    if holder is not None and holder != owner.encode():
        return False
    client.pexpire(key, ms)  # a redelivery's own marker: its TTL counts from now
    return True


def drop_settling(client, detector: str, root: str, owner: str) -> None:
    """``owner`` settled (detector, root), or gave up: another settle may run."""
    key = names.settling(detector, root)
    if client.get(key) == owner.encode():
        client.delete(key)


def someone_waits(client, detector: str, root: str) -> bool:
    """Whether a worker waits for the root's lock (announced within LOCK_WAITING_MS)."""
    return bool(client.exists(names.lock_waiting(detector, root)))


def in_burst(client, detector: str, root: str) -> bool:
    """More changes are coming: tasks wait in the detector's queue, or the watcher is
    still sending a reconciliation or storm of ``root`` (its burst marker), or a task
    applies a claimed batch of it for several detectors (claims.py)."""
    return any(burst_state(client, detector, root))


def burst_state(client, detector: str, root: str) -> tuple[bool, int, int]:
    """(the watcher holds the root's burst marker, how many tasks apply a claimed batch
    of the root now, how many tasks wait in the detector's queue)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(detector)
    pipe.exists(names.burst(root))
    claims.count_claiming(pipe, root)
    waiting, sending, *_, claiming = pipe.execute()
    return bool(sending), claiming, waiting


def defer_whole_root(ctx: Context, detector: str, root: str, index, changes: int) -> bool:
    """Whether every file of the root is deferred (``names.WHOLE_ROOT``), so that a batch
    of ``changes`` applied now need not look up which other files read what it changes:
    the settle evaluates them all.  Evaluating every file is never wrong (a superset of
    the files affected), only dearer when few are: so a burst turns to it once the files
    it deferred and the batch's changes make up half of the files the index may hold
    after the batch (a cold scan or a new root from its first batch, a storm of new
    files after a few).  Most files of such a burst defer themselves anyway, and the
    lookups of their readers were a fifth of a cold scan's CPU.  The caller holds the
    root's lock, under which alone the mark is set and taken away."""
    key = names.deferred(detector, root)
    pipe = ctx.client.pipeline(transaction=False)
    pipe.sismember(key, names.WHOLE_ROOT)
    pipe.scard(key)
    pipe.llen(detector)
    pipe.exists(names.burst(root))
    claims.count_claiming(pipe, root)
    marked, deferred, waiting, sending, *_, claiming = pipe.execute()
    sending = sending or claiming
    if marked:
        return True
    if not (waiting or sending) or index.size() > 2 * deferred + changes:
        return False
    _add_deferred(ctx, detector, root, {names.WHOLE_ROOT})
    log.info("%s: every file of %s will be evaluated when its burst settles", detector, root)
    return True


def defer(ctx: Context, detector: str, root: str, owners: set[str],
           join: bool = False) -> bool:
    """Add ``owners`` to the deferred set while a burst goes on (with ``join``, also
    while the set is not empty); False means evaluate them now.  The first deferral of
    a burst schedules its settle task."""
    if not owners:
        return False
    if not in_burst(ctx.client, detector, root) and not (
            join and ctx.client.exists(names.deferred(detector, root))):
        return False
    _add_deferred(ctx, detector, root, owners)
    return True


def _add_deferred(ctx: Context, detector: str, root: str, owners: set[str]) -> None:
    pipe = ctx.client.pipeline()
    pipe.set(names.deferred_since(detector, root), time.time(), nx=True)
    pipe.sadd(names.deferred(detector, root), *owners)
    first, _ = pipe.execute()
    if first and ctx.schedule_settle is not None:
        ctx.schedule_settle(detector, root)


def deferred_for(client, detector: str, root: str) -> float | None:
    """Seconds since the oldest deferred evaluation of (detector, root), or None."""
    since = client.get(names.deferred_since(detector, root))
    try:
        return max(0.0, time.time() - float(since)) if since is not None else None
    except ValueError:
        return 0.0


def next_deferred(client, key: str, index, count: int) -> list[str]:
    """Up to ``count`` deferred files; ``names.WHOLE_ROOT`` is first replaced, in one
    transaction, by every file the index holds."""
    pipe = client.pipeline(transaction=False)
    pipe.sismember(key, names.WHOLE_ROOT)
    pipe.srandmember(key, count)
    whole, batch = pipe.execute()
    if whole:
        paths = index.paths()
        pipe = client.pipeline()
        for start in range(0, len(paths), WHOLE_ROOT_CHUNK):
            pipe.sadd(key, *paths[start:start + WHOLE_ROOT_CHUNK])
        pipe.srem(key, names.WHOLE_ROOT)
        pipe.execute()
        batch = client.srandmember(key, count)
    return [_text(m) for m in batch]


def deferred_roots(client, detector: str, registered: list | None = None) -> list[str]:
    """The registered roots (``registered``, when the caller read them) with evaluations
    of ``detector`` deferred and no burst being sent (settled when their burst ends)."""
    roots = [_text(r) for r in (client.hkeys(names.ROOTS) if registered is None else registered)]
    pipe = client.pipeline(transaction=False)
    for root in roots:
        pipe.exists(names.deferred(detector, root))
        pipe.exists(names.burst(root))
    found = pipe.execute()
    return [root for i, root in enumerate(roots) if found[2 * i] and not found[2 * i + 1]]
