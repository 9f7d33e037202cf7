"""What waits in Redis between the stream and ChemBus: budgets, backlogs, and their report.

The bridge acknowledges a stream entry once it was handed to ZeroMQ or parked here,
in Redis, from where it is sent later:

- a question waits in ``kloros:bridge:backlog:<detector>`` (scored by severity, then
  age) while its detector's budget is spent or nobody subscribes to its topic;
- a resolution notice waits in ``kloros:bridge:backlog:resolved`` (oldest first) while
  nobody subscribes to ``curiosity.question_resolved``.

Both keep the envelope in ``kloros:bridge:held`` (questions under their question id,
resolutions under their incident id: the two never collide).  ``delivery_report``
reads all of it without writing, for ``status`` and ``questions --pending``.
"""

from __future__ import annotations

import json
from typing import Any

from kloros_tasks import names
from kloros_tasks.settings import Settings

SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
TRIMMED = "resolutions_trimmed"  # the BRIDGE_CANCELLED field counting dropped resolutions
UNDELIVERED_AFTER = 300.0  # seconds an entry that could go out may wait before status says so


def facts_of(envelope: dict) -> dict:
    """The envelope's ``facts``, or {} when they are missing or not an object."""
    facts = envelope.get("facts")
    return facts if isinstance(facts, dict) else {}


def backlog_score(envelope: dict) -> float:
    """Lower is sooner: severity first, then age."""
    facts = facts_of(envelope)
    rank = SEVERITY_RANK.get(facts.get("severity"), 3)
    try:
        first_seen = float(facts.get("timestamp") or envelope.get("ts") or 0)
    except (TypeError, ValueError):
        first_seen = 0.0
    return rank * 1e11 + first_seen


def detector_of(envelope: dict) -> str:
    """The detector a question envelope comes from ("" when it names none we know)."""
    meta = facts_of(envelope).get("metadata", {})
    if isinstance(meta, dict) and meta.get("detector") in names.DETECTORS:
        return meta["detector"]
    for detector, channel in names.CHANNEL.items():
        if envelope.get("signal") == channel:
            return detector
    return ""


def next_room(client, settings: Settings, detector: str, now: float) -> float:
    """When the detector's budget window has room for one more send (``now`` if it has).

    Read-only: counts the sends inside the window instead of pruning the older ones.
    """
    count, window = settings.budget(detector)
    if count == 0:
        return now
    key, since = names.bridge_sent(detector), f"({now - window}"
    over = client.zcount(key, since, "+inf") - count
    if over < 0:
        return now
    first = client.zrangebyscore(key, since, "+inf", start=over, num=1, withscores=True)
    return first[0][1] + window if first else now


class Budget:
    """Sliding-window send budget per detector, counted in Redis so restarts keep it."""

    def __init__(self, client, settings: Settings) -> None:
        self.r = client
        self.settings = settings

    def limited(self, detector: str) -> bool:
        return self.settings.budget(detector)[0] > 0

    def room(self, detector: str, now: float) -> int:
        """How many more sends the window allows now (prunes sends that left it)."""
        count, window = self.settings.budget(detector)
        if count == 0:
            return 1 << 30
        key = names.bridge_sent(detector)
        self.r.zremrangebyscore(key, "-inf", now - window)
        return max(0, count - self.r.zcard(key))

    def spend(self, detector: str, incident_id: str, now: float, pipe=None) -> None:
        count, window = self.settings.budget(detector)
        if count:
            target = pipe if pipe is not None else self.r
            target.zadd(names.bridge_sent(detector), {incident_id: now})
            target.expire(names.bridge_sent(detector), window + 60)

    def reopens(self, detector: str, now: float) -> float:
        return next_room(self.r, self.settings, detector, now)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _json(raw) -> dict:
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def pending_envelopes(client) -> list[dict]:
    """Everything parked: each detector's backlog in sending order, then the resolutions."""
    out = []
    for key in names.BRIDGE_BACKLOGS:
        ids = client.zrange(key, 0, -1)
        if ids:
            out += [json.loads(raw) for raw in client.hmget(names.BRIDGE_HELD, ids)
                    if raw is not None]
    return out


def delivery_report(client, settings: Settings, now: float) -> dict[str, Any]:
    """What waits between the stream and ChemBus, per detector, read without writing.

    ``budgets``: ``{detector: {held, next_send, cancelled, budget}}`` (``next_send`` is
    when the next held question may go by its budget, None when nothing is held);
    ``resolutions_waiting``; ``unsubscribed``: ``{topic: since}``, topics that have had
    something to send and no subscriber since then; ``undelivered``: the oldest entry
    that could have gone out and did not, ``{topic, age, why}``, or None.
    """
    cancelled = {_text(k): int(v) for k, v in client.hgetall(names.BRIDGE_CANCELLED).items()}
    budgets = {}
    for detector in names.DETECTORS:
        held = client.zcard(names.bridge_backlog(detector))
        count, window = settings.budget(detector)
        budgets[detector] = {
            "held": held, "cancelled": cancelled.get(detector, 0),
            "next_send": next_room(client, settings, detector, now) if held else None,
            "budget": f"{count}/{window}" if count else "unlimited"}
    waiting = {names.CHANNEL[d]: budgets[d]["held"] for d in names.DETECTORS}
    waiting[names.CHANNEL_RESOLVED] = client.zcard(names.BRIDGE_RESOLUTIONS)
    unsubscribed = {_text(t): float(s) for t, s in client.hgetall(names.BRIDGE_UNSUBSCRIBED).items()
                    if waiting.get(_text(t))}
    # A resolution notice with no subscriber is not late: KLoROS's CuriosityCore never
    # subscribes to resolutions, so in a deployment without a recorder they always wait.
    candidates = [(now - since, topic, "no subscriber for this topic")
                  for topic, since in unsubscribed.items() if topic != names.CHANNEL_RESOLVED]
    candidates += _stream_waits(client, now)
    age, topic, why = max(candidates, default=(0.0, "", ""))
    return {"budgets": budgets, "resolutions_waiting": waiting[names.CHANNEL_RESOLVED],
            "resolutions_trimmed": cancelled.get(TRIMMED, 0),
            "unsubscribed": unsubscribed,
            "undelivered": {"topic": topic, "age": round(age, 1), "why": why} if topic else None}


def _stream_waits(client, now: float) -> list[tuple[float, str, str]]:
    """The oldest stream entry the bridge has not read, and the oldest it read but did not
    acknowledge, as (age, topic, why); none when the group does not exist."""
    import redis  # noqa: PLC0415 - only for its error class

    try:
        groups = [g for g in client.xinfo_groups(names.STREAM)
                  if _text(g["name"]) == names.BRIDGE_GROUP]
    except redis.ResponseError:
        return []  # no stream yet
    if not groups:
        return []
    out = []
    last = _text(groups[0].get("last-delivered-id") or "0-0")
    unread = client.xrange(names.STREAM, min=f"({last}", count=1)
    if unread:
        out.append(_entry_wait(unread[0], now, "not read by the bridge (is it running?)"))
    if groups[0].get("pending"):
        oldest = _text(client.xpending(names.STREAM, names.BRIDGE_GROUP)["min"])
        entry = client.xrange(names.STREAM, min=oldest, max=oldest, count=1)
        if entry:
            out.append(_entry_wait(entry[0], now, "read by the bridge and not acknowledged"))
    return out


def _entry_wait(entry, now: float, why: str) -> tuple[float, str, str]:
    entry_id, fields = entry
    millis = int(_text(entry_id).partition("-")[0])
    topic = _json((fields or {}).get(names.STREAM_FIELD.encode())).get("signal") or "?"
    return max(0.0, now - millis / 1000), str(topic), why
