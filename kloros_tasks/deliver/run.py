"""Running the bridge: its loop, its chores, and stopping it at once on a signal.

``run_bridge`` survives a Redis that goes away, one that comes back empty, and the
stream key deleted under it (the stream and the group are made again), and a proxy
that restarts (nothing is read while it is away).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator

import redis

from kloros_tasks import names
from kloros_tasks.deliver.bridge import Bridge, WaitCut
from kloros_tasks.settings import Settings

log = logging.getLogger("kloros_tasks.deliver.bridge")
IDLE_BLOCK_MS = 5_000  # run_bridge's idle wait; below the client's 10 s socket timeout
THREAD_BLOCK_MS = 1_000  # where no signal can cut a wait, a stop is seen within this
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HEARTBEAT_EVERY = 5.0  # status reports the bridge down once the key's TTL runs out
BACKLOG_CHECK_EVERY = 5.0  # bounds how long a backlog parked by another bridge waits
CLAIM_EVERY = 15.0  # an entry only counts as stuck after the bridge's CLAIM_IDLE_MS anyway
# Errors after which the stream or the group must be made again: a Redis restarted
# empty, a FLUSHDB, or the stream key deleted under a blocked XREADGROUP.
LOST_STREAM = ("NOGROUP", "no longer exists")


CHORES = ((HEARTBEAT_EVERY, Bridge.heartbeat), (BACKLOG_CHECK_EVERY, Bridge.check_backlog),
          (CLAIM_EVERY, Bridge.claim_stuck))


def run_bridge(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until ``stop`` is set (SIGTERM/SIGINT in the CLI); survives Redis and proxy restarts.

    Idle, it waits on the stream up to IDLE_BLOCK_MS, and a stop signal cuts that wait
    short.  Run outside the main thread, where no signal handler runs, it waits at most
    THREAD_BLOCK_MS, so a ``stop.set()`` takes effect within that.
    """
    stop = stop or threading.Event()
    bridge = Bridge(settings)
    log.info("bridging %s to ChemBus at %s", names.STREAM, settings.chem_xsub)
    try:
        with _stop_signals_cut_waits(bridge, stop) as block_ms:
            _loop(bridge, stop, block_ms)
    finally:
        bridge.close()
    return 0


def _loop(bridge: Bridge, stop: threading.Event, block_ms: int) -> None:
    down_since = None
    due: list[float] = []  # when each chore is next due; empty: run them all now
    while not stop.is_set():
        try:
            until_chores = _chores(bridge, due)
            bridge.step(max(1, min(block_ms, math.ceil(until_chores * 1000))))
            if down_since is not None:
                log.info("redis is back after %.0f s", time.monotonic() - down_since)
                down_since = None
        except WaitCut:
            continue  # a stop signal ended the wait: the loop condition sees the stop
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if down_since is None:
                log.warning("redis unreachable (%s); retrying", exc)
                down_since = time.monotonic()
            bridge.lost_stream()  # it may come back empty
            due.clear()
            stop.wait(1.0)
        except redis.ResponseError as exc:
            if not any(sign in str(exc) for sign in LOST_STREAM):
                raise
            log.warning("%s or its consumer group is gone (%s): making them again, reading "
                        "from the start", names.STREAM, exc)
            bridge.lost_stream()
            due.clear()  # the chores begin by making the stream and the group


def _chores(bridge: Bridge, due: list[float]) -> float:
    """Run the chores that are due; returns the seconds until the next one.

    An empty ``due`` (at start, or after Redis was away) runs them all, once the consumer
    group is known to exist: a Redis that restarted empty has lost it.
    """
    now = time.monotonic()
    if not due:
        bridge.ensure_group()
        due.extend([now] * len(CHORES))
    for i, (period, chore) in enumerate(CHORES):
        if now >= due[i]:
            chore(bridge)
            due[i] = now + period
    return min(due) - now


@contextlib.contextmanager
def _stop_signals_cut_waits(bridge: Bridge, stop: threading.Event) -> Iterator[int]:
    """Yield the longest wait the loop may use, letting a stop signal end a wait at once.

    The CLI's SIGINT/SIGTERM handlers only set ``stop``, and Python resumes a socket or
    poll wait after running a handler (PEP 475): a long wait would hold the stop back
    for its whole length.  Chained here, a handler that set ``stop`` also raises
    WaitCut into the wait.  Only the main thread runs handlers: elsewhere waits stay
    short instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield THREAD_BLOCK_MS
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def cut(signum, frame) -> None:
        previous[signum](signum, frame)
        if stop.is_set() and bridge.waiting:
            raise WaitCut

    chained = [sig for sig, handler in previous.items() if callable(handler)]
    for sig in chained:
        signal.signal(sig, cut)
    try:
        yield IDLE_BLOCK_MS if chained else THREAD_BLOCK_MS
    finally:
        for sig in chained:
            signal.signal(sig, previous[sig])
