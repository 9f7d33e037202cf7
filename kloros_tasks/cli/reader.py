"""``kloros-tasks questions``: read published questions back from the stream or the ledger."""

from __future__ import annotations

import json
import sys
import time

import redis

from kloros_tasks import names
from kloros_tasks.cli.render import budget_line, render_envelope, render_text
from kloros_tasks.connections import redact, redis_client
from kloros_tasks.deliver.backlog import delivery_report, pending_envelopes
from kloros_tasks.questions import dumps
from kloros_tasks.settings import Settings
from kloros_tasks.state.publish import Publisher

FOLLOW_BLOCK_MS = 1000


def _emit(raw: str, fmt: str, out) -> None:
    out.write((raw if fmt == "jsonl" else render_text(raw)) + "\n")


def _wanted(raw: str, signal: str | None) -> bool:
    if signal is None:
        return True
    try:
        return json.loads(raw).get("signal") == signal
    except ValueError:
        return False


def _field(fields) -> str:
    return fields.get(names.STREAM_FIELD.encode(), b"").decode(errors="replace")


def pending(client) -> list[dict]:
    """What the bridge holds: each detector's backlog in sending order, then the
    resolution notices waiting for a subscriber, oldest first."""
    return pending_envelopes(client)


def _pending_summary(client, settings: Settings, out) -> None:
    """One line per detector: held count, next send time, cancellations, budget."""
    report = delivery_report(client, settings, time.time())
    for detector, budget in report["budgets"].items():
        out.write(f"{detector:<12} {budget_line(budget)}\n")
    out.write(f"{'resolved':<12} waiting {report['resolutions_waiting']} "
              f"(for a subscriber of {names.CHANNEL_RESOLVED})\n")
    for topic, since in sorted(report["unsubscribed"].items()):
        out.write(f"no subscriber for {topic} since "
                  f"{time.strftime('%H:%M:%S', time.localtime(since))}\n")


def run_questions(settings: Settings, *, follow: bool = False, signal: str | None = None,
                  open_only: bool = False, pending_only: bool = False, fmt: str = "text",
                  count: int = 100, out=sys.stdout) -> int:
    """Print the questions asked for; 0, or 2 when Redis cannot be reached."""
    client = redis_client(settings.redis_url, socket_timeout=None)
    try:
        if pending_only:
            held = pending(client)
            if client.get(names.BRIDGE_HEARTBEAT) is None:
                # Say why the list is what it is: whatever is held waits for the bridge.
                print("kloros-tasks: no ChemBus bridge is running (no heartbeat)"
                      + (f"; {len(held)} questions wait for it" if held else
                         "; nothing waits for it"), file=sys.stderr)
            if fmt != "jsonl":
                _pending_summary(client, settings, out)
            for env in held:
                if signal is None or env.get("signal") == signal:
                    out.write((dumps(env) if fmt == "jsonl" else render_envelope(env)) + "\n")
            return 0
        if open_only:
            for env in Publisher(client).open_questions():
                if signal is None or env.get("signal") == signal:
                    out.write((dumps(env) if fmt == "jsonl" else render_envelope(env)) + "\n")
            return 0
        entries = list(reversed(client.xrevrange(names.STREAM, count=count)))
        last_id = entries[-1][0] if entries else b"0-0"
        for _id, fields in entries:
            if _wanted(_field(fields), signal):
                _emit(_field(fields), fmt, out)
        out.flush()
        while follow:
            for _stream, batch in client.xread({names.STREAM: last_id},
                                               block=FOLLOW_BLOCK_MS) or []:
                for entry_id, fields in batch:
                    last_id = entry_id
                    if _wanted(_field(fields), signal):
                        _emit(_field(fields), fmt, out)
                out.flush()
        return 0
    except redis.ConnectionError as exc:
        print(f"kloros-tasks: redis unreachable at {redact(settings.redis_url)}: {exc}",
              file=sys.stderr)
        return 2
    finally:
        client.close()
