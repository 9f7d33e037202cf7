"""``kloros-tasks status [--json]``: the health of every part, from Redis and the workers.

Exit 0 healthy, 1 degraded, 2 Redis unreachable.  ``--json`` prints one object whose
shape is documented in docs/operations.md and kept stable:
``{"status", "problems", "redis", "queues", "workers", "watcher", "up", "bridge",
"exploration", "detectors", "deadletter", "syntax_errors", "skipped"}``.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import redis

from kloros_tasks import names
from kloros_tasks.cli.render import budget_line
from kloros_tasks.connections import redact, redis_client
from kloros_tasks.deliver.backlog import UNDELIVERED_AFTER, delivery_report
from kloros_tasks.settings import Settings

HEALTHY, DEGRADED, UNREACHABLE = 0, 1, 2
WORD = {HEALTHY: "healthy", DEGRADED: "degraded", UNREACHABLE: "unreachable"}
ABSENT = "absent"  # the status word of a Redis holding nothing of kloros-tasks (exit 1)
# What any part of kloros-tasks leaves in its Redis: the watcher's roots and heartbeat,
# the ledger and stream, exploration's records, dead letters, the queues, and the
# binding tables kombu writes when a worker or producer declares a detector queue.
STATE_KEYS = (names.ROOTS, names.WATCHER_HEARTBEAT, names.LEDGER, names.STREAM,
              names.EXPLORATION_LAST_SCAN, names.EXPLORATION_NODES, names.DEADLETTER,
              names.BRIDGE_HEARTBEAT, *names.QUEUES,
              *(f"_kombu.binding.{q}" for q in names.QUEUES))
STUCK_AFTER = 120.0  # seconds a task may wait while consumers exist
INSPECT_TIMEOUT = 1.5
RECENT_ENTRIES = 2000


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _json(raw) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def redis_info(client) -> dict:
    info = client.info()
    policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "?")
    return {"version": info.get("redis_version"), "used_memory": info.get("used_memory"),
            "used_memory_human": info.get("used_memory_human"),
            "aof_enabled": bool(info.get("aof_enabled")),
            "rdb_last_save": info.get("rdb_last_save_time"), "maxmemory_policy": policy}


def oldest_waiting_age(client, queue: str, now: float) -> float | None:
    """Age of the oldest waiting task, from its payload's ``ts`` (kombu pushes left,
    workers pop right: the oldest message is the last element)."""
    raw = client.lindex(queue, -1)
    message = _json(raw)
    try:
        args = json.loads(base64.b64decode(message["body"]))[0]
        return max(0.0, now - float(args[0]["ts"]))
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def holds_kloros_state(client) -> bool:
    """Whether any part of kloros-tasks ever ran on this Redis (one read-only EXISTS)."""
    return bool(client.exists(*STATE_KEYS))


def worker_queues(app) -> dict[str, list[str]] | None:
    """Worker node -> queues it consumes, answered within a short timeout.

    Leaves nothing behind in Redis when ``app`` comes from ``inspecting_app``."""
    try:
        active = app.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
    except Exception:  # noqa: BLE001 - any broker failure here means "unknown"
        return None
    return {node: sorted(q["name"] for q in queues) for node, queues in active.items()}


def detector_summary(client) -> dict[str, dict]:
    out = {d: {"open": 0, "last_published": None} for d in names.DETECTORS}
    for qid, _envelope in client.hscan_iter(names.LEDGER, count=1000):
        detector = _text(qid).split(".", 1)[0]
        if detector in out:
            out[detector]["open"] += 1
    for _id, fields in client.xrevrange(names.STREAM, count=RECENT_ENTRIES):
        env = _json(fields.get(names.STREAM_FIELD.encode())) or {}
        meta = env.get("facts", {}).get("metadata", {})
        detector = meta.get("detector") if isinstance(meta, dict) else None
        if detector in out and out[detector]["last_published"] is None \
                and env.get("signal") != names.CHANNEL_RESOLVED:
            out[detector]["last_published"] = {"question_id": env["facts"].get("question_id"),
                                               "ts": env.get("ts")}
    return out


def bridge_summary(client, settings: Settings | None = None, now: float | None = None) -> dict:
    """The bridge's heartbeat, its group's lag and pending, and what waits in its backlogs
    (``delivery_report``: held counts, next send times, cancellations, the oldest entry
    that could have gone out and did not)."""
    heartbeat = _json(client.get(names.BRIDGE_HEARTBEAT))
    group = None
    try:
        for g in client.xinfo_groups(names.STREAM):
            if _text(g["name"]) == names.BRIDGE_GROUP:
                group = {"pending": g.get("pending"), "lag": g.get("lag")}
    except redis.ResponseError:
        group = None  # no stream yet
    backlog = {d: client.zcard(names.bridge_backlog(d)) for d in names.DETECTORS}
    delivery = delivery_report(client, settings or Settings(), time.time() if now is None else now)
    return {"heartbeat": heartbeat, "group": group, "backlog": backlog, **delivery}


def undelivered_problem(bridge: dict) -> str | None:
    """A problem line when an entry that could have gone to ChemBus waits too long."""
    late = bridge.get("undelivered")
    if not late or late["age"] <= UNDELIVERED_AFTER:
        return None
    return (f"bridge: the oldest undelivered entry ({late['topic']}) has waited "
            f"{late['age']:.0f} s: {late['why']}")


def collect(settings: Settings, client, app=None, now: float | None = None) -> dict:
    """Everything ``status`` reports, plus the list of problems found."""
    now = time.time() if now is None else now
    problems: list[str] = []
    report: dict[str, Any] = {"redis": redis_info(client)}
    if report["redis"]["maxmemory_policy"] != "noeviction":
        problems.append(f"redis maxmemory-policy is {report['redis']['maxmemory_policy']}; "
                        "queues need noeviction")
    workers = worker_queues(app) if app is not None else None
    report["workers"] = workers
    consumed = {q for qs in (workers or {}).values() for q in qs}
    queues = {}
    for queue in names.QUEUES:
        depth = client.llen(queue)
        age = oldest_waiting_age(client, queue, now) if depth else None
        queues[queue] = {"depth": depth, "oldest_age": age,
                         "consumers": sorted(n for n, qs in (workers or {}).items()
                                             if queue in qs)}
        if workers is not None and queue not in consumed:
            problems.append(f"no worker consumes the {queue} queue")
        elif age is not None and age > STUCK_AFTER:
            problems.append(f"{queue}: oldest task waiting {age:.0f} s; workers are not consuming")
    report["queues"] = queues
    report["watcher"] = _json(client.get(names.WATCHER_HEARTBEAT))
    if report["watcher"] is None:
        problems.append("no watcher heartbeat in the last 30 s")
    report["up"] = _json(client.get(names.UP_STATE))  # kloros-tasks up's children, if any
    for name, child in ((report["up"] or {}).get("children") or {}).items():
        if child.get("state") == "restarting":
            problems.append(f"up: {name} died and is being restarted")
    report["bridge"] = bridge_summary(client, settings, now)
    if settings.chem_xsub_given and report["bridge"]["heartbeat"] is None:
        problems.append("the ChemBus bridge is configured but sends no heartbeat")
    late = undelivered_problem(report["bridge"])
    if late and (settings.chem_xsub_given or report["bridge"]["heartbeat"] is not None):
        problems.append(late)
    report["exploration"] = {
        _text(h): float(t) for h, t in client.hgetall(names.EXPLORATION_LAST_SCAN).items()}
    late = [h for h, t in report["exploration"].items()
            if now - t > 2.5 * settings.exploration_interval]
    if late:
        problems.append(f"no exploration scan for {2.5 * settings.exploration_interval:.0f} s"
                        f" on {', '.join(sorted(late))}: is beat running?")
    report["detectors"] = detector_summary(client)
    report["deadletter"] = client.llen(names.DEADLETTER)
    report["syntax_errors"] = client.hlen(names.SYNTAX_ERRORS)
    report["skipped"] = client.hlen(names.SKIPPED)
    if report["deadletter"]:
        latest = _json(client.lindex(names.DEADLETTER, -1)) or {}
        what = ", ".join(str(latest[k]) for k in ("file", "exception", "reason")
                         if isinstance(latest, dict) and latest.get(k))
        problems.append(f"{report['deadletter']} tasks parked in {names.DEADLETTER}"
                        + (f" (latest: {what})" if what else ""))
    report["problems"] = problems
    report["status"] = WORD[DEGRADED if problems else HEALTHY]
    return report


def _age(ts) -> str:
    if ts is None:
        return "-"
    return f"{max(0.0, time.time() - float(ts)):.0f}s ago"


def render(report: dict) -> str:
    """The compact human table."""
    r = report["redis"]
    lines = [f"status    {report['status']}",
             f"redis     {r['version']}  memory {r['used_memory_human']}  "
             f"aof {'on' if r['aof_enabled'] else 'off'}  policy {r['maxmemory_policy']}"]
    for queue, q in report["queues"].items():
        consumers = ",".join(q["consumers"]) or ("?" if report["workers"] is None else "none")
        age = "" if q["oldest_age"] is None else f"  oldest {q['oldest_age']:.0f}s"
        lines.append(f"queue     {queue:<12} depth {q['depth']:<6} workers {consumers}{age}")
    w = report["watcher"]
    lines.append("watcher   " + ("down" if w is None else
                                 f"{w.get('host')} pid {w.get('pid')} roots "
                                 f"{','.join(w.get('roots', []))} pending {w.get('pending')} "
                                 f"beat {_age(w.get('ts'))}"))
    up = report.get("up")
    if up:
        lines.append(f"up        pid {up.get('pid')}  restarts " + (", ".join(
            f"{name} {c.get('restarts')}" for name, c in up.get("children", {}).items()
            if c.get("restarts")) or "none"))
    b = report["bridge"]
    hb, group = b["heartbeat"], b["group"] or {}
    lines.append("bridge    " + ("not running" if hb is None else
                                 f"{hb.get('endpoint')} connected {hb.get('connected')} "
                                 f"sent {hb.get('sent')}")
                 + f"  lag {group.get('lag', '-')} pending {group.get('pending', '-')}"
                 f"  backlog {sum(b['backlog'].values())}"
                 f"  resolutions waiting {b.get('resolutions_waiting', 0)}")
    for detector, budget in b.get("budgets", {}).items():
        if budget["held"] or budget["cancelled"]:
            lines.append(f"budget    {detector:<12} {budget_line(budget)}")
    for host, ts in sorted(report["exploration"].items()):
        lines.append(f"explore   {host} last scan {_age(ts)}")
    for detector, d in report["detectors"].items():
        last = d["last_published"] or {}
        lines.append(f"detector  {detector:<12} open {d['open']:<5} last "
                     f"{last.get('question_id', '-')} {_age(last.get('ts'))}")
    lines.append(f"parked    deadletter {report['deadletter']}  syntax errors "
                 f"{report['syntax_errors']}  skipped {report['skipped']}")
    lines += [f"problem   {p}" for p in report["problems"]]
    return "\n".join(lines)


def inspecting_app(settings: Settings):
    """The Celery app ``status`` asks the workers through, without writing to Redis.

    Celery declares the reply queue of an inspect broadcast with x-expires
    (``control_queue_expires``); kombu 5.7 keeps a deadline for the binding of every
    such queue in ``_kombu.binding_deadlines`` (at least an hour), which outlives the
    reply queue that is deleted when the inspect ends.  Declared without x-expires the
    binding is a plain table entry, and deleting the reply queue removes it again."""
    from kloros_tasks.celery_app import create_app  # noqa: PLC0415

    app = create_app(settings)
    app.conf.control_queue_expires = None
    return app


def absent_report(settings: Settings, client) -> dict:
    """The report of a Redis that holds nothing of kloros-tasks."""
    return {"status": ABSENT, "redis": redis_info(client), "problems": [
        f"nothing of kloros-tasks runs on {redact(settings.redis_url)}: no queues, questions, "
        "watcher or workers have ever used it (KLOROS_REDIS_URL unset? `kloros-tasks env` "
        "finds the Redis of a running `kloros-tasks up`)"]}


def run_status(settings: Settings, *, as_json: bool = False, out=None) -> int:
    """Print the report; 0 healthy, 1 degraded or nothing of kloros-tasks there,
    2 unreachable.  It never writes to the Redis it inspects."""
    import sys  # noqa: PLC0415

    out = out or sys.stdout
    client = redis_client(settings.redis_url, socket_timeout=3)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if as_json:
            out.write(json.dumps({"status": WORD[UNREACHABLE], "problems": [
                f"redis unreachable at {redact(settings.redis_url)}: {exc}"]}) + "\n")
        else:
            out.write(f"status    unreachable\nproblem   redis at "
                      f"{redact(settings.redis_url)}: {exc}\n")
        return UNREACHABLE
    try:
        if not holds_kloros_state(client):
            report = absent_report(settings, client)
            out.write((json.dumps(report, sort_keys=True) if as_json else
                       f"status    {ABSENT}\nproblem   {report['problems'][0]}") + "\n")
            return DEGRADED
        report = collect(settings, client, inspecting_app(settings))
    finally:
        client.close()
    out.write((json.dumps(report, sort_keys=True) if as_json else render(report)) + "\n")
    return DEGRADED if report["problems"] else HEALTHY
