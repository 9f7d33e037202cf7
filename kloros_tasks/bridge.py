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
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import redis

from . import names
from .chemlink import ChemLink
from .connections import redis_client
from .settings import Settings

log = logging.getLogger(__name__)
BATCH = 100
BLOCK_MS = 200
CLAIM_IDLE_MS = 30_000
HEARTBEAT_TTL = 30
SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
SEND, HOLD, CANCEL, WAIT, DROP = "send", "hold", "cancel", "wait", "drop"


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

    # -- stream side -------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(names.STREAM, names.BRIDGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> list:
        if self._own_pending:
            batch = self.r.xreadgroup(names.BRIDGE_GROUP, self.consumer, {names.STREAM: "0"},
                                      count=BATCH)
            entries = batch[0][1] if batch else []
            if entries:
                return entries
            self._own_pending = False
        batch = self.r.xreadgroup(names.BRIDGE_GROUP, self.consumer, {names.STREAM: ">"},
                                  count=BATCH, block=BLOCK_MS)
        return batch[0][1] if batch else []

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
        """Send what the budgets now allow, best first."""
        sent = 0
        now = self.clock()
        for detector in names.DETECTORS:
            key = names.bridge_backlog(detector)
            while self.budget.room(detector, now) > 0:
                best = self.r.zrange(key, 0, 0)
                if not best:
                    break
                qid = best[0].decode()
                raw = self.r.hget(names.BRIDGE_HELD, qid)
                if raw is None:
                    self.r.zrem(key, qid)
                    continue
                envelope = json.loads(raw)
                if not self.link.ready(envelope["signal"]):
                    return sent
                self._apply(SEND, envelope, raw.decode(), now)
                self.r.zrem(key, qid)
                self.r.hdel(names.BRIDGE_HELD, qid)
                sent += 1
        return sent

    def heartbeat(self) -> None:
        info = {"host": socket.gethostname(), "consumer": self.consumer, "ts": self.clock(),
                "connected": bool(self.link.connected), "sent": self.sent,
                "endpoint": self.settings.chem_xsub}
        self.r.set(names.BRIDGE_HEARTBEAT, json.dumps(info), ex=HEARTBEAT_TTL)

    def step(self) -> None:
        self.link.pump(0)
        if not self.link.connected:
            self.link.pump(BLOCK_MS)  # nothing can be sent: wait for the proxy
            return
        self.drain_backlog()
        entries = self._read()
        if entries and self.process(entries) < len(entries):
            self.link.pump(BLOCK_MS)  # wait for a subscriber or a connection change

    def close(self) -> None:
        self.link.close()


def run_bridge(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until ``stop`` is set (SIGTERM/SIGINT in the CLI); survives Redis and proxy restarts."""
    stop = stop or threading.Event()
    bridge = Bridge(settings)
    log.info("bridging %s to ChemBus at %s", names.STREAM, settings.chem_xsub)
    down_since = None
    next_chores = 0.0
    try:
        while not stop.is_set():
            try:
                if time.monotonic() >= next_chores:
                    bridge.ensure_group()
                    bridge.heartbeat()
                    bridge.claim_stuck()
                    next_chores = time.monotonic() + 5
                bridge.step()
                if down_since is not None:
                    log.info("redis is back after %.0f s", time.monotonic() - down_since)
                    down_since = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if down_since is None:
                    log.warning("redis unreachable (%s); retrying", exc)
                    down_since = time.monotonic()
                next_chores = 0.0
                stop.wait(1.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                next_chores = 0.0  # a fresh Redis lost the group: recreate it
    finally:
        bridge.close()
    return 0
