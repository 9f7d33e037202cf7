"""``kloros-tasks bridge``: the durable stream to ChemBus, exactly once in normal operation.

It reads ``kloros:questions`` through the consumer group ``chembus-bridge``: first its
own pending entries (left by a crash), then new ones; entries idle with a dead
consumer are claimed back with XAUTOCLAIM.  An entry is acknowledged only after it
was handed to ZeroMQ, or parked in a backlog in Redis (see backlog.py) from which it
is sent later.  While the proxy is away nothing is read, so entries wait in the stream.

Only what must be ordered is: a question's opening goes before its resolution (a
resolution whose opening still waits cancels both instead).  Otherwise each topic
goes at its own pace: an entry whose topic has no subscriber waits in its backlog
without holding back the others, and goes out when a subscriber arrives.

Budgets: per detector at most N questions per window reach ChemBus.  Questions of a
budgeted detector all pass through its backlog, drained GATHER_S after the first of a
burst arrives, so the most severe of a burst go first.

Idle, it costs a few Redis commands every few seconds: it blocks on XREADGROUP (which
returns the moment an entry arrives), drains a backlog only when one exists and it can
send (budget room, a new subscriber), and runs its chores (heartbeat, backlog check,
claiming stuck entries) each on its own period.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import uuid

import redis

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.deliver.backlog import TRIMMED, Budget, backlog_score, detector_of, facts_of
from kloros_tasks.deliver.chemlink import ChemLink
from kloros_tasks.settings import Settings

__all__ = ["Bridge", "WaitCut", "backlog_score", "detector_of"]
log = logging.getLogger(__name__)
BATCH = 100
BLOCK_MS = 200  # a step's longest wait when its caller names none
CLAIM_IDLE_MS = 30_000
HEARTBEAT_TTL = 30
DRAIN_RECHECK = 60.0  # a waiting backlog is looked at again at least this often
LINK_RETRY = 1.0  # while something waits for a subscriber, the link is looked at this often
GATHER_S = 0.5  # a backlog drains this long after its first new entry: a burst goes best first
SEND, HOLD, PARK, CANCEL, DROP = "send", "hold", "park", "cancel", "drop"


class WaitCut(Exception):
    """Raised by a stop signal into the bridge's idle wait, to end it at once."""


class Bridge:
    """One consumer of the group: ``step`` is one turn of its loop (see run.py)."""

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
        self.drain_at = 0.0  # clock time at which a backlog may next have something to send
        self._backlog_keys = -1  # backlog keys that existed at the last look (-1: not looked)
        self._link_changes = -1  # the link's change count when the backlogs were last drained
        self._link_blocked = False  # something waits for a subscriber (or for the link to settle)
        # topic -> whether it is marked in BRIDGE_UNSUBSCRIBED (absent: not known, so the
        # first look writes either way and clears a mark an earlier run left)
        self._unsubscribed: dict[str, bool] = {}
        self.waiting = False  # inside a wait that a stop signal may cut short

    # -- stream side -------------------------------------------------------------------
    def ensure_group(self) -> None:
        """Make the stream and the consumer group unless they exist (they may have been
        lost with an emptied Redis); a recreated group reads the stream from its start."""
        try:
            self.r.xgroup_create(names.STREAM, names.BRIDGE_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def lost_stream(self) -> None:
        """Forget what Redis forgot: our pending entries and the topics marked waiting."""
        self._own_pending = True
        self._unsubscribed.clear()
        self._backlog_keys = -1

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
        """Run a blocking call that a stop signal may cut short (see run.py)."""
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
    def decide(self, envelope: dict) -> str:
        """What to do with one stream entry; nothing here waits."""
        qid = facts_of(envelope).get("question_id")
        signal = envelope.get("signal")
        if not isinstance(qid, str) or not qid:
            return DROP  # CuriosityCore cannot use an envelope without one
        if signal == names.CHANNEL_RESOLVED:
            if self.r.hexists(names.BRIDGE_HELD, qid):
                return CANCEL  # its opening was never sent: neither is sent
            if self.r.zcard(names.BRIDGE_RESOLUTIONS) or not self.link.ready(signal):
                return PARK
            return SEND
        detector = detector_of(envelope)
        if not detector or signal != names.CHANNEL[detector]:
            return DROP
        if self.budget.limited(detector) or self.r.zcard(names.bridge_backlog(detector)) \
                or not self.link.ready(signal):
            return HOLD  # sent from the backlog: by severity, when budget and subscriber allow
        return SEND

    def _apply(self, action: str, envelope: dict, raw: str, now: float) -> None:
        qid = facts_of(envelope).get("question_id")
        if action == SEND:
            self.link.send(envelope["signal"], raw)
            self.sent += 1
        elif action == HOLD:
            pipe = self.r.pipeline()
            pipe.hset(names.BRIDGE_HELD, qid, raw)
            pipe.zadd(names.bridge_backlog(detector_of(envelope)), {qid: backlog_score(envelope)})
            pipe.execute()
        elif action == PARK:
            self._park_resolution(envelope, raw)
        elif action == CANCEL:
            detector = detector_of(json.loads(self.r.hget(names.BRIDGE_HELD, qid) or raw))
            pipe = self.r.pipeline()
            pipe.hdel(names.BRIDGE_HELD, qid)
            pipe.zrem(names.bridge_backlog(detector), qid)
            pipe.hincrby(names.BRIDGE_CANCELLED, detector or "?", 1)
            pipe.execute()
            log.info("%s resolved while waiting to be sent; neither is sent", qid)
        elif action == DROP:
            log.warning("dropping a stream entry that is not a question envelope: %.200s", raw)

    def _park_resolution(self, envelope: dict, raw: str) -> None:
        """Keep a resolution notice until a subscriber of its topic is there, oldest first.

        Bounded by the stream's length: past it the oldest notices are dropped and counted
        (the stream still holds them), so a topic nobody ever subscribes to cannot grow
        Redis without end.
        """
        incident = str(envelope.get("incident_id") or f"resolved:{uuid.uuid4().hex}")
        pipe = self.r.pipeline()
        pipe.hset(names.BRIDGE_HELD, incident, raw)
        pipe.zadd(names.BRIDGE_RESOLUTIONS, {incident: float(envelope.get("ts") or self.clock())})
        pipe.zcard(names.BRIDGE_RESOLUTIONS)
        over = pipe.execute()[-1] - self.settings.stream_maxlen
        if over > 0:
            dropped = [m for m, _ in self.r.zpopmin(names.BRIDGE_RESOLUTIONS, over)]
            self.r.hdel(names.BRIDGE_HELD, *dropped)
            self.r.hincrby(names.BRIDGE_CANCELLED, TRIMMED, len(dropped))
            log.warning("%d resolution notices dropped: nobody subscribes to %s", len(dropped),
                        names.CHANNEL_RESOLVED)

    def process(self, entries) -> int:
        """Handle entries in stream order; none waits for another.  Returns the acked count."""
        acked = parked = 0
        for entry_id, fields in entries:
            raw = ((fields or {}).get(names.STREAM_FIELD.encode()) or b"").decode(errors="replace")
            try:
                envelope = json.loads(raw)
                if not isinstance(envelope, dict):
                    raise ValueError("not an object")
            except ValueError:
                envelope = {}
            action = self.decide(envelope) if envelope else DROP
            self._apply(action, envelope, raw, self.clock())
            self.r.xack(names.STREAM, names.BRIDGE_GROUP, entry_id)
            acked += 1
            parked += action in (HOLD, PARK)
        if parked:
            # Not at once: the rest of a burst (a scan settling) arrives over the next
            # moments, and the most severe of it should take the budget.
            self.drain_at = min(self.drain_at, self.clock() + GATHER_S)
        return acked

    # -- backlogs ----------------------------------------------------------------------
    def drain_backlog(self) -> int:
        """Send what budgets and subscribers now allow, best first; note when the rest can go."""
        now = self.clock()
        self._link_changes, self._link_blocked = self.link.changes, False
        sent, waiting, due = 0, 0, now + DRAIN_RECHECK
        for detector in names.DETECTORS:
            count, next_at = self._drain_one(detector, now)
            sent, waiting = sent + count, waiting + (next_at is not None)
            due = min(due, next_at if next_at is not None else due)
        count, next_at = self._drain_resolutions(now)
        sent, waiting = sent + count, waiting + (next_at is not None)
        due = min(due, next_at if next_at is not None else due)
        self._backlog_keys = waiting
        self.drain_at = due if waiting else math.inf
        return sent

    def _drain_one(self, detector: str, now: float) -> tuple[int, float | None]:
        """Send one detector's backlog while its budget has room and its topic a subscriber.

        Returns how many went out and when the rest may go (None: nothing waits).
        """
        key, topic = names.bridge_backlog(detector), names.CHANNEL[detector]
        sent = 0
        while True:
            best = self.r.zrange(key, 0, 0)
            if not best:
                self._mark_unsubscribed(topic, False, now)
                return sent, None
            if self.budget.room(detector, now) <= 0:
                return sent, self.budget.reopens(detector, now)
            if not self.link.ready(topic):
                return sent, self._blocked_on_link(topic, now)
            qid = best[0].decode()
            raw = self.r.hget(names.BRIDGE_HELD, qid)
            if raw is not None:
                envelope = json.loads(raw)
                self.link.send(topic, raw.decode())
                self.sent += 1
                sent += 1
            pipe = self.r.pipeline()
            pipe.zrem(key, qid)
            pipe.hdel(names.BRIDGE_HELD, qid)
            if raw is not None:
                self.budget.spend(detector, envelope.get("incident_id", ""), now, pipe)
            pipe.execute()
            self._mark_unsubscribed(topic, False, now)

    def _drain_resolutions(self, now: float) -> tuple[int, float | None]:
        """Send waiting resolution notices, oldest first, while their topic has a subscriber."""
        topic, sent = names.CHANNEL_RESOLVED, 0
        while True:
            first = self.r.zrange(names.BRIDGE_RESOLUTIONS, 0, 0)
            if not first:
                self._mark_unsubscribed(topic, False, now)
                return sent, None
            if not self.link.ready(topic):
                return sent, self._blocked_on_link(topic, now)
            raw = self.r.hget(names.BRIDGE_HELD, first[0])
            if raw is not None:
                self.link.send(topic, raw.decode())
                self.sent += 1
                sent += 1
            pipe = self.r.pipeline()
            pipe.zrem(names.BRIDGE_RESOLUTIONS, first[0])
            pipe.hdel(names.BRIDGE_HELD, first[0])
            pipe.execute()

    def _blocked_on_link(self, topic: str, now: float) -> float:
        """Note that ``topic`` cannot go for want of a subscriber; returns when to look again.

        A subscriber's arrival is a link change, which ``step`` sees within LINK_RETRY and
        which brings the drain forward; only while the link is settling, when readiness
        changes with no event, is the drain itself repeated that often.
        """
        self._link_blocked = True
        self._mark_unsubscribed(topic, True, now)
        return now + (LINK_RETRY if self.link.settling() else DRAIN_RECHECK)

    def _mark_unsubscribed(self, topic: str, waiting: bool, now: float) -> None:
        """Record since when ``topic`` has had something to send and no subscriber (for
        ``status``); written only when that changes."""
        if self._unsubscribed.get(topic) is waiting:
            return
        if waiting:
            self.r.hsetnx(names.BRIDGE_UNSUBSCRIBED, topic, now)
            log.info("nobody subscribes to %s; its entries wait without holding back others",
                     topic)
        else:
            self.r.hdel(names.BRIDGE_UNSUBSCRIBED, topic)
        self._unsubscribed[topic] = waiting

    def check_backlog(self) -> None:
        """One EXISTS over the backlog keys; drain at once when their number changed.

        This bridge's own holds drain themselves; this catches a backlog that another
        bridge of the group parked, or that an earlier run left.
        """
        count = self.r.exists(*names.BRIDGE_BACKLOGS)
        if count != self._backlog_keys:
            self._backlog_keys = count
            self.drain_at = self.clock() if count else math.inf

    def heartbeat(self) -> None:
        info = {"host": socket.gethostname(), "consumer": self.consumer, "ts": self.clock(),
                "connected": bool(self.link.connected), "sent": self.sent,
                "endpoint": self.settings.chem_xsub}
        self.r.set(names.BRIDGE_HEARTBEAT, json.dumps(info), ex=HEARTBEAT_TTL)

    def step(self, block_ms: int = BLOCK_MS) -> None:
        """Drain the backlogs when due, then forward new entries, waiting up to ``block_ms``.

        Every wait ends early on what it waits for: a stream entry, a backlog's next
        chance to send, and a subscription change (seen within LINK_RETRY while
        something waits for a subscriber).
        """
        self.link.pump(0)
        if not self.link.connected:
            self._wait(self.link.pump, block_ms)  # nothing can be sent: wait for the proxy
            return
        if self._link_blocked and self.link.changes != self._link_changes:
            self.drain_at = min(self.drain_at, self.clock())  # a new subscriber may unblock
        if self.clock() >= self.drain_at:
            self.drain_backlog()
        entries = self._read(self._until_drain(block_ms))
        if entries:
            self.process(entries)

    def _until_drain(self, block_ms: int) -> int:
        """``block_ms``, cut to when the backlog is due, and to LINK_RETRY while something
        waits for a subscriber; at least 1 (BLOCK 0 is forever)."""
        if self._link_blocked:
            block_ms = min(block_ms, int(LINK_RETRY * 1000))
        return max(1, math.ceil(min(block_ms, (self.drain_at - self.clock()) * 1000)))

    def close(self) -> None:
        self.link.close()
