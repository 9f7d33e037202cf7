"""The Question value, its stable id, and the ChemBus/UMN envelope (schema_version 1).

A detector returns Questions; it knows nothing of envelopes, hosts or time.  The
publisher turns an open Question into an envelope once, and that exact JSON text is
what pub/sub subscribers, the stream and ChemBus all receive.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kloros_tasks import names

SCHEMA_VERSION = 1
SEVERITIES = ("low", "medium", "high", "critical")
FIXED_INTENSITY = {names.INTEGRATION: 0.95, names.CAPABILITY: 0.90, names.KNOWLEDGE: 0.85}
EXPLORATION_INTENSITY = {"low": 0.60, "medium": 0.75, "high": 0.90, "critical": 0.90}
REQUIRED_FACTS = ("question_id", "question")


class EnvelopeError(ValueError):
    """A text is not a schema_version 1 envelope."""


def subject_digest(subject: str) -> str:
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()[:16]


def question_id(detector: str, rule: str, subject: str) -> str:
    """``<detector>.<rule>.<hex digest of subject>``: same problem, same id, everywhere."""
    return f"{detector}.{rule}.{subject_digest(subject)}"


@dataclass(frozen=True)
class Question:
    """One finding.  ``subject`` identifies the problem (never a reading or a time);
    ``owner`` is the relative path of the file the question is raised about."""

    detector: str
    rule: str
    subject: str
    owner: str
    hypothesis: str
    question: str
    severity: str = "medium"
    confidence: float = 0.8
    suggestion: str = ""
    evidence: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not one of {SEVERITIES}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} outside 0..1")
        if not self.question.endswith("?"):
            raise ValueError(f"question text must end with '?': {self.question!r}")

    @property
    def id(self) -> str:
        return question_id(self.detector, self.rule, self.subject)

    @property
    def signal(self) -> str:
        return names.CHANNEL[self.detector]

    @property
    def intensity(self) -> float:
        if self.detector == names.EXPLORATION:
            return EXPLORATION_INTENSITY[self.severity]
        return FIXED_INTENSITY[self.detector]


def in_root(q: Question, root: str) -> Question:
    """The question as raised in watched root ``root``: the same relative path in two
    roots is two problems, so the root name joins the subject (and thus the id)."""
    return replace(q, subject=f"{root}:{q.subject}") if root else q


def dumps(envelope: Mapping[str, Any]) -> str:
    """Compact JSON, the one byte form used on every channel."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, sort_keys=False)


def _envelope(signal: str, intensity: float, facts: dict[str, Any], ts: float) -> dict[str, Any]:
    return {
        "signal": signal,
        "ecosystem": "curiosity",
        "intensity": intensity,
        "facts": facts,
        "incident_id": uuid.uuid4().hex,
        "trace": None,
        "ts": ts,
        "schema_version": SCHEMA_VERSION,
        "channel": "legacy",
    }


def metadata(q: Question, root: str, host: str) -> dict[str, Any]:
    # Host-level findings (exploration) concern no file: their paths are empty.
    paths = list(q.paths) if q.detector == names.EXPLORATION else list(q.paths or (q.owner,))
    meta = {
        "detector": q.detector,
        "rule": q.rule,
        "paths": paths,
        "root": root or None,  # host-level findings have no watched root
        "host": host,
    }
    meta.update(q.extra)
    return meta


def open_envelope(q: Question, *, root: str, host: str, now: float) -> dict[str, Any]:
    facts = {
        "question_id": q.id,
        "hypothesis": q.hypothesis,
        "question": q.question,
        "evidence": list(q.evidence),
        "severity": q.severity,
        "category": names.CATEGORY[q.detector],
        "source": names.SOURCE[q.detector],
        "confidence": q.confidence,
        "suggestion": q.suggestion,
        "timestamp": now,
        "metadata": metadata(q, root, host),
    }
    return _envelope(q.signal, q.intensity, facts, now)


def resolved_envelope(opened: Mapping[str, Any], *, now: float) -> dict[str, Any]:
    """The notice that an open question (given as its envelope) no longer holds."""
    old = opened["facts"]
    facts = {
        "question_id": old["question_id"],
        "hypothesis": old.get("hypothesis", ""),
        "question": old.get("question", ""),
        "severity": old.get("severity", "low"),
        "category": old.get("category", ""),
        "source": old.get("source", ""),
        "opened_incident_id": opened.get("incident_id"),
        "timestamp": now,
        "metadata": old.get("metadata", {}),
    }
    return _envelope(names.CHANNEL_RESOLVED, opened.get("intensity", 0.5), facts, now)


def loads(text: str | bytes) -> dict[str, Any]:
    """Parse and check an envelope; raise EnvelopeError with the reason."""
    try:
        env = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from exc
    if not isinstance(env, dict) or env.get("schema_version") != SCHEMA_VERSION:
        raise EnvelopeError("not a schema_version 1 envelope")
    facts = env.get("facts")
    if not isinstance(facts, dict) or any(k not in facts for k in REQUIRED_FACTS[:1]):
        raise EnvelopeError("facts.question_id missing")
    if not isinstance(env.get("signal"), str) or not env["signal"].startswith("curiosity."):
        raise EnvelopeError("signal is not a curiosity.* channel")
    return env
