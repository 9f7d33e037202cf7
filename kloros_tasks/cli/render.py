"""How envelopes look to a person: one line per question (presentation only)."""

from __future__ import annotations

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
