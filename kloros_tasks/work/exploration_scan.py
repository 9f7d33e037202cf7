"""What ``kloros.exploration.scan`` does, minus Celery: lock, probe, evaluate, publish.

* A per-host Redis lock, kept for half an interval after the scan, makes overlapping
  or duplicated runs (two beats, a slow scan, the start-up scan racing beat) do nothing.
* The previous inventory and readings live in ``kloros:exploration:state:<host>``.
* At most N questions per window reach the channel (2 per 5 minutes by default); the
  excess is not opened yet and is offered again, most severe first, by later scans.
* Rules a failed probe left undecided keep their open questions (a hung nvidia-smi
  must not resolve and reopen GPU questions).
"""

from __future__ import annotations

import json
import logging
import uuid

from kloros_tasks import names
from kloros_tasks.detectors.exploration import probes
from kloros_tasks.detectors.exploration import rules as exploration
from kloros_tasks.settings import Settings
from kloros_tasks.state.publish import Publisher, SyncResult

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 5.0


def _load_state(client, host: str) -> dict:
    raw = client.get(names.exploration_state(host))
    if raw is None:
        return {}
    try:
        state = json.loads(raw)
    except ValueError:
        log.error("exploration state of %s is corrupt; starting afresh", host)
        return {}
    return state if isinstance(state, dict) else {}


def _room(client, host: str, rate: tuple[int, int], now: float) -> int | None:
    count, window = rate
    if count == 0:
        return None
    key = names.exploration_opened(host)
    client.zremrangebyscore(key, "-inf", now - window)
    return max(0, count - client.zcard(key))


def _record_opened(client, host: str, opened, rate: tuple[int, int], now: float) -> None:
    if opened and rate[0]:
        client.zadd(names.exploration_opened(host), {qid: now for qid in opened})
        client.expire(names.exploration_opened(host), rate[1] + 60)


NODE_STALE_INTERVALS = 3  # a node unseen for this many intervals is forgotten


def register_node(client, node: str, host: str, now: float) -> None:
    """Remember that exploration worker ``node`` runs on ``host`` (for the fan-out)."""
    client.hset(names.EXPLORATION_NODES, node, json.dumps({"host": host, "seen": now}))


def other_hosts_nodes(client, host: str, interval: int, now: float) -> list[str]:
    """One live exploration node per other host; stale nodes are forgotten."""
    chosen: dict[str, str] = {}
    for raw_node, raw in client.hgetall(names.EXPLORATION_NODES).items():
        node = raw_node.decode() if isinstance(raw_node, bytes) else raw_node
        try:
            info = json.loads(raw)
            other, seen = str(info["host"]), float(info["seen"])
        except (ValueError, KeyError, TypeError):
            other, seen = "", 0.0
        if now - seen > NODE_STALE_INTERVALS * interval:
            client.hdel(names.EXPLORATION_NODES, node)
        elif other != host:
            chosen.setdefault(other, node)
    return [chosen[h] for h in sorted(chosen)]


def run_scan(client, publisher: Publisher, settings: Settings, *, host: str | None = None,
             collect=probes.collect) -> SyncResult | None:
    """Scan this host once; None when another run holds the lock."""
    host = host or settings.host
    token = uuid.uuid4().hex
    hold = max(1, settings.exploration_interval // 2)
    if not client.set(names.exploration_lock(host), token, nx=True, ex=hold):
        log.info("exploration scan of %s skipped: another run is recent or in progress", host)
        return None
    inventory = collect(timeout=PROBE_TIMEOUT)
    for probe, reason in sorted(getattr(inventory, "errors", {}).items()):
        log.warning("exploration probe %s on %s: %s", probe, host, reason)
    questions, state = exploration.evaluate(inventory, _load_state(client, host), host=host)
    client.set(names.exploration_state(host), json.dumps(state))
    client.hset(names.EXPLORATION_LAST_SCAN, host, publisher.clock())
    undecided = exploration.undetermined_rules(inventory)
    keep = [qid for qid in publisher.open_ids(names.EXPLORATION, "", host)
            if qid.split(".")[1] in undecided]
    now = publisher.clock()
    room = _room(client, host, settings.exploration_rate, now)
    result = publisher.sync(names.EXPLORATION, "", host, questions, max_open=room, keep=keep)
    _record_opened(client, host, result.opened, settings.exploration_rate, now)
    waiting = len({q.id for q in questions} - publisher.open_ids(names.EXPLORATION, "", host))
    log.info("exploration scan of %s: %d hold, %d opened, %d resolved, %d waiting for the rate",
             host, len(questions), len(result.opened), len(result.resolved), waiting)
    return result
