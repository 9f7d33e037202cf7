"""How envelopes look to a person: one line per question (presentation only)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kloros_tasks import names
from kloros_tasks.questions import EnvelopeError, loads


def render_envelope(env: Mapping[str, Any]) -> str:
    facts = env.get("facts", {})
    meta = facts.get("metadata", {})
    where = ",".join(meta.get("paths", [])) or meta.get("host", "")
    if env.get("signal") == names.CHANNEL_RESOLVED:
        return f"resolved  {facts.get('question_id')}  {where}"
    return (f"{facts.get('severity', '?'):<8}  {facts.get('question_id')}  {where}\n"
            f"          {facts.get('question', '')}")


def render_text(raw: str | bytes) -> str:
    try:
        return render_envelope(loads(raw))
    except EnvelopeError as exc:
        return f"(unreadable envelope: {exc})"


def budget_line(budget: dict, now: float | None = None) -> str:
    """``held N  next send HH:MM:SS (in N s)  cancelled N  budget COUNT/SECONDS``."""
    now = time.time() if now is None else now
    when = budget["next_send"]
    if when is None:
        nxt = "-"
    elif when <= now:
        nxt = "now (when a subscriber is there)"
    else:
        nxt = f"{time.strftime('%H:%M:%S', time.localtime(when))} (in {when - now:.0f} s)"
    return (f"held {budget['held']}  next send {nxt}  cancelled {budget['cancelled']}  "
            f"budget {budget['budget']}")
