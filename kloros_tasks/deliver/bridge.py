"""``kloros-tasks bridge``: the durable stream to ChemBus, exactly once in normal operation.

It reads ``kloros:questions`` through the consumer group ``chembus-bridge``: first its
own pending entries (left by a crash), then new ones; entries idle with a dead
consumer are claimed back with XAUTOCLAIM.  An entry is acknowledged only after it
was handed to ZeroMQ, or parked in the budget backlog (itself in Redis).  While the
proxy is away nothing is sent and nothing is acknowledged, so the backlog goes out in
order when it returns.  A resend after a crash carries the same ``incident_id``.

Budgets: per detector at most N questions per window reach ChemBus; the excess
waits in ``kloros:bridge:backlog:<detector>`` ordered by severity then age, and a
resolution of a question still waiting cancels it instead of being sent.

Idle, it costs a few Redis commands every few seconds: it blocks on XREADGROUP (which
returns the moment an entry arrives), drains a backlog only when one exists and its
budget window has room again, and runs its chores (heartbeat, backlog check, claiming
stuck entries) each on its own period.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator

import redis

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.deliver.chemlink import ChemLink
from kloros_tasks.settings import Settings

log = logging.getLogger(__name__)
BATCH = 100
BLOCK_MS = 200  # a step's longest wait when its caller names none
IDLE_BLOCK_MS = 5_000  # run_bridge's idle wait; below the client's 10 s socket timeout
THREAD_BLOCK_MS = 1_000  # where no signal can cut a wait, a stop is seen within this
CLAIM_IDLE_MS = 30_000
HEARTBEAT_TTL = 30
HEARTBEAT_EVERY = 5.0  # status reports the bridge down once the key's TTL runs out
BACKLOG_CHECK_EVERY = 5.0  # bounds how long a backlog parked by another bridge waits
CLAIM_EVERY = 15.0  # an entry only counts as stuck after CLAIM_IDLE_MS anyway
DRAIN_RECHECK = 60.0  # a waiting backlog is looked at again at least this often
LINK_RETRY = 1.0  # a backlog whose topic has no subscriber yet is retried after this
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG_KEYS = tuple(names.bridge_backlog(d) for d in names.DETECTORS)
SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
SEND, HOLD, CANCEL, WAIT, DROP = "send", "hold", "cancel", "wait", "drop"


class WaitCut(Exception):
    """Raised by a stop signal into the bridge's idle wait, to end it at once."""


def backlog_score(envelope: dict) -> float:
    """Lower is sooner: severity first, then age."""
    facts = envelope.get("facts", {})
    rank = SEVERITY_RANK.get(facts.get("severity"), 3)
    return rank * 1e11 + float(facts.get("timestamp") or envelope.get("ts") or 0)


def detector_of(envelope: dict) -> str:
    meta = envelope.get("facts", {}).get("metadata", {})
    if isinstance(meta, dict) and meta.get("detector") in names.DETECTORS:
        return meta["detector"]
    for detector, channel in names.CHANNEL.items():
        if envelope.get("signal") == channel:
            return detector
    return ""


class Budget:
    """Sliding-window send budget per detector, counted in Redis so restarts keep it."""

    def __init__(self, client, settings: Settings) -> None:
        self.r = client
        self.settings = settings

    def room(self, detector: str, now: float) -> int:
        count, window = self.settings.budget(detector)
        if count == 0:
            return 1 << 30
        key = names.bridge_sent(detector)
        self.r.zremrangebyscore(key, "-inf", now - window)
        return max(0, count - self.r.zcard(key))

    def spend(self, detector: str, incident_id: str, now: float) -> None:
        count, window = self.settings.budget(detector)
        if count:
            self.r.zadd(names.bridge_sent(detector), {incident_id: now})
            self.r.expire(names.bridge_sent(detector), window + 60)

    def reopens(self, detector: str, now: float) -> float:
        """When the window has room again (counts what ``room`` left: call it right after)."""
        count, window = self.settings.budget(detector)
        key = names.bridge_sent(detector)
        over = self.r.zcard(key) - count
        if count == 0 or over < 0:
            return now
        first = self.r.zrange(key, over, over, withscores=True)
        return first[0][1] + window if first else now


class Bridge:
    def __init__(self, settings: Settings, client=None, link: ChemLink | None = None,
                 consumer: str | None = None, clock=time.time) -> None:
        self.settings = settings
        self.r = client or redis_client(settings.redis_url)
        self.link = link or ChemLink(settings.chem_xsub)
        self.consumer = consumer or f"bridge@{socket.gethostname()}"
        self.budget = Budget(self.r, settings)
        self.clock = clock
        self.sent = 0
        self._own_pending = True  # finish our own pending entries before new ones
        self.drain_at = 0.0  # clock time at which the backlog may next have something to send
        self._backlog_keys = -1  # backlog keys that existed at the last look (-1: not looked)
        self.waiting = False  # inside a wait that a stop signal may cut short

    # -- stream side -------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(names.STREAM, names.BRIDGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, block_ms: int) -> list:
        if self._own_pending:
            batch = self.r.xreadgroup(names.BRIDGE_GROUP, self.consumer, {names.STREAM: "0"},
                                      count=BATCH)
            entries = batch[0][1] if batch else []
            if entries:
                return entries
            self._own_pending = False
        batch = self._wait(self.r.xreadgroup, names.BRIDGE_GROUP, self.consumer,
                           {names.STREAM: ">"}, count=BATCH, block=block_ms)
        return batch[0][1] if batch else []

    def _wait(self, call, *args, **kwargs):
        """Run a blocking call that a stop signal may cut short (see run_bridge)."""
        try:
            self.waiting = True
            return call(*args, **kwargs)
        except WaitCut:
            self._own_pending = True  # entries delivered just before the cut stay ours
            raise
        finally:
            self.waiting = False

    def claim_stuck(self) -> int:
        """Take over entries another (dead) consumer left pending too long."""
        _next, claimed, *_ = self.r.xautoclaim(names.STREAM, names.BRIDGE_GROUP, self.consumer,
                                               CLAIM_IDLE_MS, start_id="0-0", count=BATCH)
        if claimed:
            self._own_pending = True
            log.info("claimed %d entries left pending by another consumer", len(claimed))
        return len(claimed)

    # -- decisions ---------------------------------------------------------------------
    def decide(self, envelope: dict, now: float) -> str:
        facts = envelope.get("facts", {})
        qid = facts.get("question_id")
        if envelope.get("signal") == names.CHANNEL_RESOLVED:
            if qid and self.r.hexists(names.BRIDGE_HELD, qid):
                return CANCEL
            return SEND if self.link.ready(envelope["signal"]) else WAIT
        detector = detector_of(envelope)
        if not detector or not qid:
            return DROP
        if self.r.zcard(names.bridge_backlog(detector)) or not self.budget.room(detector, now):
            return HOLD
        return SEND if self.link.ready(envelope["signal"]) else WAIT

    def _apply(self, action: str, envelope: dict, raw: str, now: float) -> None:
        facts = envelope.get("facts", {})
        qid = facts.get("question_id")
        if action == SEND:
            self.link.send(envelope["signal"], raw)
            self.sent += 1
            if envelope["signal"] != names.CHANNEL_RESOLVED:
                self.budget.spend(detector_of(envelope), envelope.get("incident_id", ""), now)
        elif action == HOLD:
            pipe = self.r.pipeline()
            pipe.hset(names.BRIDGE_HELD, qid, raw)
            pipe.zadd(names.bridge_backlog(detector_of(envelope)), {qid: backlog_score(envelope)})
            pipe.execute()
            self.drain_at = min(self.drain_at, now)  # the next step works out when it can go
        elif action == CANCEL:
            held = self.r.hget(names.BRIDGE_HELD, qid)
            detector = detector_of(json.loads(held)) if held else detector_of(envelope)
            pipe = self.r.pipeline()
            pipe.hdel(names.BRIDGE_HELD, qid)
            pipe.zrem(names.bridge_backlog(detector), qid)
            pipe.execute()
            log.info("%s resolved while waiting for budget; not sent", qid)
        elif action == DROP:
            log.warning("dropping a stream entry that is not a question envelope: %.200s", raw)

    def process(self, entries) -> int:
        """Handle entries in order; stop at the first that must wait.  Returns acked count."""
        acked = 0
        for entry_id, fields in entries:
            raw = (fields.get(names.STREAM_FIELD.encode()) or b"").decode(errors="replace")
            try:
                envelope = json.loads(raw)
                if not isinstance(envelope, dict):
                    raise ValueError("not an object")
            except ValueError:
                envelope = {}
            now = self.clock()
            action = self.decide(envelope, now) if envelope else DROP
            if action == WAIT:
                self._own_pending = True  # re-read from our pending list, in order
                break
            self._apply(action, envelope, raw, now)
            self.r.xack(names.STREAM, names.BRIDGE_GROUP, entry_id)
            acked += 1
        return acked

    def drain_backlog(self) -> int:
        """Send what the budgets now allow, best first, and note when the rest can go."""
        now = self.clock()
        sent, waiting, due = 0, 0, now + DRAIN_RECHECK
        for detector in names.DETECTORS:
            count, next_at = self._drain_one(detector, now)
            sent += count
            if next_at is not None:
                waiting += 1
                due = min(due, next_at)
        self._backlog_keys = waiting
        self.drain_at = due if waiting else math.inf
        return sent

    def _drain_one(self, detector: str, now: float) -> tuple[int, float | None]:
        """Send one detector's backlog while its budget has room.

        Returns how many went out and when the rest may go (None: nothing waits).
        """
        key = names.bridge_backlog(detector)
        sent = 0
        while True:
            best = self.r.zrange(key, 0, 0)
            if not best:
                return sent, None
            if self.budget.room(detector, now) <= 0:
                return sent, self.budget.reopens(detector, now)
            qid = best[0].decode()
            raw = self.r.hget(names.BRIDGE_HELD, qid)
            if raw is None:
                self.r.zrem(key, qid)
                continue
            envelope = json.loads(raw)
            if not self.link.ready(envelope["signal"]):
                return sent, now + LINK_RETRY
            self._apply(SEND, envelope, raw.decode(), now)
            self.r.zrem(key, qid)
            self.r.hdel(names.BRIDGE_HELD, qid)
            sent += 1

    def check_backlog(self) -> None:
        """One EXISTS over the backlog keys; drain at once when their number changed.

        This bridge's own holds schedule a drain themselves; this catches a backlog that
        another bridge of the group parked, or that an earlier run left.
        """
        count = self.r.exists(*BACKLOG_KEYS)
        if count != self._backlog_keys:
            self._backlog_keys = count
            self.drain_at = self.clock() if count else math.inf

    def heartbeat(self) -> None:
        info = {"host": socket.gethostname(), "consumer": self.consumer, "ts": self.clock(),
                "connected": bool(self.link.connected), "sent": self.sent,
                "endpoint": self.settings.chem_xsub}
        self.r.set(names.BRIDGE_HEARTBEAT, json.dumps(info), ex=HEARTBEAT_TTL)

    def step(self, block_ms: int = BLOCK_MS) -> None:
        """Drain the backlog when due, then forward new entries, waiting up to ``block_ms``.

        Every wait ends early on what it waits for: a stream entry, a connection or
        subscription change, and the backlog's next chance to send.
        """
        self.link.pump(0)
        if not self.link.connected:
            self._wait(self.link.pump, block_ms)  # nothing can be sent: wait for the proxy
            return
        if self.clock() >= self.drain_at:
            self.drain_backlog()
        entries = self._read(self._until_drain(block_ms))
        if entries and self.process(entries) < len(entries):
            # wait for a subscriber or a connection change: both wake the poll
            self._wait(self.link.pump, self._until_drain(block_ms))

    def _until_drain(self, block_ms: int) -> int:
        """``block_ms``, cut to when the backlog is due; at least 1 (BLOCK 0 is forever)."""
        return max(1, math.ceil(min(block_ms, (self.drain_at - self.clock()) * 1000)))

    def close(self) -> None:
        self.link.close()


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
            due.clear()
            stop.wait(1.0)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            due.clear()  # a fresh Redis lost the group: recreate it


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
