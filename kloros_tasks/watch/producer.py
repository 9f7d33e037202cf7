"""The watchdog producer (``kloros-tasks watch``): file events in, analyze tasks out.

Threads: watchdog's observer and emitter threads only push (root, path, kind) into
an in-memory queue; one pump thread owns everything else (debounce, lstat, read,
hash, blob, send through ``sync.Syncer``, retries, heartbeat); the caller's thread
supervises them all.  The kind an event carries is a hint: what is on disk when a
path's quiet window ends decides what is sent.

Delivery: while Redis or the broker is unreachable, changes wait in memory (coalesced
per path, bounded by ``settings.pending_limit``; past the bound the next contact
reconciles every root) and are retried with exponential backoff, so none is lost.

inotify limits: watchdog adds one inotify watch per directory under each root,
excluded directories included (inotify cannot prune a recursive watch), and silently
skips subdirectories it cannot watch.  So the producer counts the directories first:
more than ``fs.inotify.max_user_watches``, or an ENOSPC from watchdog, and it prints
one line naming that sysctl and exits with status 1.  Raise it with
``sysctl -w fs.inotify.max_user_watches=524288`` (persisted in /etc/sysctl.d/), or
watch a smaller tree.  Events lost to an inotify queue overflow
(``fs.inotify.max_queued_events``) start a reconciliation at once: watchdog only logs
IN_Q_OVERFLOW and rebuilds its watches, so the observer here then queues a
QueueOverflowEvent (observer.py).  A reconciliation also runs every RECONCILE_EVERY seconds.

State snapshot (``keep_snapshot``, unless ``--no-snapshot``): restored into a Redis
without file state before reconciling, at start and when Redis lost the watcher's
registration (checked with every heartbeat, so within seconds); written every
SNAPSHOT_EVERY seconds and at shutdown.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import Settings, check_state_dir
from kloros_tasks.state import snapshot
from kloros_tasks.watch import filters, sync
from kloros_tasks.watch.observer import OVERFLOW, InboxHandler, overflow_observer, watch_root
from kloros_tasks.watch.send import CelerySender, Sender
from kloros_tasks.watch.signals import stop_on_signals
from kloros_tasks.watch.sync import (
    BATCH,
    Reader,
    Syncer,
    WatchError,
    resolve_roots,
)
from kloros_tasks.watch.tree import read_file, walk_tree

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INOTIFY, EXIT_CONFIG, EXIT_THREAD_DIED = 0, 1, 2, 3
HEARTBEAT_TTL = 30
RECONCILE_EVERY = 600.0
MAX_DRAIN = 10_000  # inbox items taken before the pump ticks again
IDLE_WAIT = 0.5  # the pump wakes at least this often when idle (retries, heartbeat)
SUPERVISE_EVERY = 1.0  # thread liveness checks; a stop request wakes it at once
STOP_FLUSH_SECONDS = 2.0
# Failures that mean "Redis or the broker is away for now": hold and retry.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError, ConnectionError)


class Watcher:
    """Watches roots and sends one task per interested detector for each change."""

    def __init__(
        self,
        settings: Settings,
        roots: Iterable[str | os.PathLike],
        *,
        sender: Sender | None = None,
        progress: Callable[[int, int], None] | None = None,
        reader: Reader = read_file,
        observer_factory: Callable[[], Any] = overflow_observer,
        clock: Callable[[], float] = time.monotonic,
        watch_limit: Callable[[], int | None] = sync.inotify_watch_limit,
        snapshot_path: Path | None = None,
        snapshot_every: float = snapshot.SNAPSHOT_EVERY,
    ) -> None:
        self.settings = settings
        self.roots = resolve_roots(roots)
        self.by_name = {root.name: root for root in self.roots}
        self.progress, self.observer_factory, self.clock = progress, observer_factory, clock
        self.watch_limit = watch_limit
        # No retries inside redis-py: the pump has its own backoff and must not stall
        # for seconds on every call while Redis is away.
        self.client = redis_client(settings.redis_url, retries=0)
        sender = sender if sender is not None else CelerySender(settings)
        self.sync = Syncer(settings, self.client, sender, reader, self.roots)
        # KLOROS_HOSTNAME when set: workers compare it before reading this host's disk.
        self.host = settings.host
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.debouncer = filters.Debouncer(settings.debounce_ms / 1000)
        self.pending = filters.PendingChanges(settings.pending_limit)
        self.backoff = filters.Backoff()
        self.redis_up, self.retry_at = True, 0.0
        self.registered, self.reconcile_needed, self.initial_done = False, True, False
        self.observers: list[Any] = []
        self.pump_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_beat = self._last_reconcile = float("-inf")
        self.heartbeat_every = settings.watcher_heartbeat_ms / 1000
        self._gone_dirs: dict[str, set[str]] = {}  # root name -> vanished directories
        # Restored before the first reconciliation and whenever Redis turns out to have
        # lost its data; written only when no such restore is pending.
        self.snapshot_path, self.snapshot_every = snapshot_path, snapshot_every
        self.restore_due = snapshot_path is not None

    @property
    def held(self) -> int:
        """Changes received but not yet sent."""
        return len(self.pending) + len(self.debouncer)

    # --- lifecycle (caller's thread) ---------------------------------------------------
    def run(self, stop_event: threading.Event | None = None) -> int:
        """Watch until ``stop_event`` is set (status 0) or a thread dies (status 3);
        status 1 when the inotify limits are too low for the roots."""
        stop_event = stop_event if stop_event is not None else threading.Event()
        try:
            self._start_observers()
        except OSError as exc:
            self._stop_observers()
            self.client.close()
            advice = filters.inotify_advice(exc.errno, exc.strerror or str(exc))
            if advice is None:
                raise
            print(advice, file=sys.stderr)
            return EXIT_INOTIFY
        self.pump_thread = threading.Thread(target=self._pump, name="kloros-watch-pump",
                                            daemon=True)
        self.pump_thread.start()
        try:
            return self._supervise(stop_event)
        finally:
            self._shutdown()

    def _start_observers(self) -> None:
        limit = self.watch_limit()
        if limit is not None:
            needed = sum(sync.count_dirs(root.path, limit) for root in self.roots)
            if needed > limit:
                raise OSError(errno.ENOSPC, f"more than {limit} directories to watch"
                              " exceed the inotify watch limit")
        observer = self.observer_factory()
        self.observers.append(observer)
        for root in self.roots:
            watch_root(observer, InboxHandler(root.name, self.inbox), root.path)
        observer.start()
        log.info("watching %s", ", ".join(f"{root.name} ({root.path})" for root in self.roots))

    def _threads(self) -> list[threading.Thread]:
        emitters = [e for o in self.observers for e in getattr(o, "emitters", ())]
        return [*self.observers, *emitters, self.pump_thread]

    def _supervise(self, stop_event: threading.Event) -> int:
        next_snapshot = self.clock() + self.snapshot_every
        while not stop_event.wait(SUPERVISE_EVERY):
            dead = next((t for t in self._threads() if not t.is_alive()), None)
            if dead is not None:
                log.error("watcher thread %s died; exiting so that it is restarted", dead.name)
                return EXIT_THREAD_DIED
            if self.clock() >= next_snapshot:  # here, so that the pump never waits for it
                self._keep_snapshot()
                next_snapshot = self.clock() + self.snapshot_every
        return EXIT_OK

    def _stop_observers(self) -> None:
        for observer in self.observers:
            observer.stop()
        for observer in self.observers:
            if observer.is_alive():
                observer.join(1.0)

    def _shutdown(self) -> None:
        self._stop_observers()
        self._stopping.set()
        if self.pump_thread is not None:
            self.pump_thread.join(STOP_FLUSH_SECONDS + 1.0)
        if self.pump_thread is None or not self.pump_thread.is_alive():
            self._keep_snapshot()  # after the final flush, so the seen hashes are current
            self.client.close()

    def _keep_snapshot(self) -> None:
        """Write the snapshot, unless the pump has yet to check whether to restore it: a
        Redis back empty must not overwrite what restores it."""
        if self.snapshot_path is not None and not self.restore_due:
            snapshot.keep_snapshot(self.client, self.snapshot_path)

    # --- the pump thread ------------------------------------------------------------------
    def _pump(self) -> None:
        try:
            # Register, restore and reconcile at once: waiting for the inbox first
            # held every start (a warm restart's last step) up by IDLE_WAIT.
            self._tick(self.clock())
            while not self._stopping.is_set():
                wait = self.debouncer.next_in(self.clock())
                self._receive(IDLE_WAIT if wait is None else min(wait, IDLE_WAIT))
                self._tick(self.clock())
            self._final_flush()
        except Exception:
            # Logged here with its traceback; the supervisor sees the thread gone and
            # exits non-zero so that the service manager restarts a clean watcher.
            log.exception("the watcher's pump thread failed")

    def _receive(self, timeout: float) -> None:
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        now = self.clock()
        for _ in range(MAX_DRAIN):
            self._accept(*item, now)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, root_key: str, path: str, kind: str, now: float) -> None:
        root = self.by_name[root_key]
        if kind == OVERFLOW:
            if not self.reconcile_needed:  # one line per reconciliation, however many roots
                log.warning("the inotify event queue overflowed under %s and events were "
                            "lost (fs.inotify.max_queued_events); reconciling every root "
                            "now", root.name)
            self.reconcile_needed = True
            return
        rel = filters.relative(root.path, path)
        if rel is None:
            return
        if kind == filters.DIR_CHANGED:
            if not filters.dir_is_excluded(rel, self.settings.exclude):
                for found, _stat in walk_tree(root.path, self.settings.exclude, rel):
                    self.debouncer.feed((root.name, found), filters.CHANGED, now)
        elif kind == filters.DIR_DELETED:
            self._gone_dirs.setdefault(root.name, set()).add(rel)
        elif filters.should_enqueue(rel, self.settings.exclude):
            self.debouncer.feed((root.name, rel), kind, now)
        elif not filters.is_utf8(rel):
            log.warning("ignoring %r in %s: its name is not valid UTF-8", rel, root.name)

    def _forget_dirs(self, now: float) -> None:
        """Every seen file under a vanished directory is now deleted (or changed, for
        those that reappear: the debouncer folds that in and the disk decides).  One
        HKEYS per root per tick, however many directories an ``rm -r`` removed."""
        gone_dirs, self._gone_dirs = self._gone_dirs, {}
        if not self.redis_up:
            self.reconcile_needed = True  # what was under them is known only to Redis
            return
        try:
            for name, dirs in gone_dirs.items():
                for path in self.sync.seen_under(self.by_name[name], dirs):
                    self.debouncer.feed((name, path), filters.DELETED, now)
        except TRANSIENT as exc:
            self.reconcile_needed = True
            self._went_down(exc, now)

    def _tick(self, now: float) -> None:
        if self._gone_dirs:
            self._forget_dirs(now)
        for key, kind in self.debouncer.due(now):
            self.pending.add(key, kind)
        if now - self._last_reconcile >= RECONCILE_EVERY:
            self.reconcile_needed = True  # catches events inotify dropped
        if self.redis_up or now >= self.retry_at:
            self._attempt(now)
        if self.redis_up and now - self._last_beat >= self.heartbeat_every:
            self._beat(now)

    def _attempt(self, now: float) -> None:
        try:
            if not self.redis_up:
                self.client.ping()
            if len(self.pending) or self.reconcile_needed:
                self._check_registered()
            if self.restore_due:
                self._restore()
            if not self.registered:
                self._register()
            if self.pending.overflow:
                self.pending.overflow, self.reconcile_needed = False, True
            if self.reconcile_needed:
                self._reconcile()
            while len(self.pending) and not self._stopping.is_set():
                self._send_pending(BATCH)
        except TRANSIENT as exc:
            self._went_down(exc, now)
            return
        if not self.redis_up:
            self.redis_up = True
            self.backoff.reset()
            log.info("Redis is reachable again; held changes were sent")

    def _went_down(self, exc: BaseException, now: float) -> None:
        if self.redis_up:
            log.warning("Redis unreachable (%s); holding changes and retrying", exc)
            self.redis_up = False
        self.retry_at = now + self.backoff.next()

    def _check_registered(self) -> None:
        """Before anything is sent, and with every heartbeat: roots this watcher registered
        gone mean Redis lost its data (restarted empty, which redis-py reconnects to
        silently, or flushed): restore the snapshot, register again, reconcile at once."""
        if self.registered and not all(self.client.hmget(names.ROOTS, list(self.by_name))):
            log.warning("Redis lost the watcher's registration (restarted empty or flushed);"
                        " restoring the snapshot, registering again and reconciling now")
            self.registered = False
            self.restore_due = self.snapshot_path is not None
            self.reconcile_needed = True  # the seen hashes went too, or predate the disk

    def _restore(self) -> None:
        """A Redis without file state gets the snapshot back before anything is sent,
        so open questions are not published again and only files changed since are."""
        if snapshot.restore_snapshot(self.client, self.snapshot_path, self.by_name):
            self.reconcile_needed = True  # the restored seen hashes predate the disk
        self.restore_due = False

    def _register(self) -> None:
        # The queues' bindings first: a Redis that lost them drops every task silently.
        if hasattr(self.sync.sender, "declare"):
            self.sync.sender.declare()
        mapping = {r.name: json.dumps({"path": r.path, "host": self.host}) for r in self.roots}
        self.client.hset(names.ROOTS, mapping=mapping)
        self.registered = True

    def _beat(self, now: float) -> None:
        self._last_beat = now
        body = {"host": self.host, "pid": os.getpid(), "roots": [r.name for r in self.roots],
                "ts": time.time(), "pending": self.held}
        try:
            self._check_registered()  # a Redis emptied under us is noticed within seconds
            self.client.set(names.WATCHER_HEARTBEAT, json.dumps(body), ex=HEARTBEAT_TTL)
        except TRANSIENT as exc:
            self._went_down(exc, now)

    def _final_flush(self) -> None:
        """Best effort, bounded: what is not sent now the next start's reconciliation finds,
        because the seen hash was not updated for it."""
        for key, kind in self.debouncer.flush():
            self.pending.add(key, kind)
        deadline = self.clock() + STOP_FLUSH_SECONDS
        while self.redis_up and len(self.pending) and self.clock() < deadline:
            try:
                self._send_pending(50)
            except TRANSIENT as exc:
                log.warning("stopping with changes unsent (%s); the next start sends them", exc)
                return

    # --- handing changes to the Syncer ------------------------------------------------
    def _send_pending(self, count: int) -> None:
        batch = self.pending.take(count)
        try:
            self.sync.process(batch)
        except TRANSIENT:
            self.pending.restore(batch)  # nothing of it was recorded as seen
            raise

    def _reconcile(self) -> None:
        progress = None if self.initial_done else self.progress
        if self.sync.reconcile(self._stopping, progress):
            self.reconcile_needed, self.initial_done = False, True
            self._last_reconcile = self.clock()


def run_watch(
    settings: Settings,
    roots: Iterable[str | os.PathLike],
    *,
    sender: Sender | None = None,
    stop_event: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_snapshot: bool = False,
) -> int:
    """Run the producer until SIGTERM/SIGINT or ``stop_event``; returns the exit status:
    0 stopped, 1 inotify limit too low, 2 bad roots, 3 a watcher thread died.
    ``keep_snapshot``: restore and write ``$KLOROS_STATE_DIR/snapshot.json``."""
    stop_event = stop_event if stop_event is not None else threading.Event()
    if keep_snapshot:
        check_state_dir(settings.state_dir)  # one line and status 2, not a traceback later
    path = snapshot.default_path(settings.state_dir) if keep_snapshot else None
    try:
        watcher = Watcher(settings, roots, sender=sender, progress=progress, snapshot_path=path)
    except WatchError as exc:
        print(f"kloros-tasks watch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with stop_on_signals(stop_event):
        return watcher.run(stop_event)
