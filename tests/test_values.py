"""Question ids, envelopes, payloads and decoding: the values everything else passes around."""

from __future__ import annotations

import json

import pytest

from kloros_tasks import names
from kloros_tasks.questions import EnvelopeError, Question, dumps, loads, open_envelope
from kloros_tasks.work.engine import NotText, decode_source
from kloros_tasks.work.payload import Change, PayloadError, parse


def make(subject="pkg/a.py", severity="low", detector=names.KNOWLEDGE) -> Question:
    return Question(detector=detector, rule="missing_docstrings", subject=subject,
                    owner="pkg/a.py", hypothesis="MISSING_DOCSTRINGS: pkg/a.py",
                    question="Document pkg/a.py?", severity=severity)


def test_question_ids_are_stable_and_name_detector_and_rule():
    assert make().id == make().id
    assert make().id.startswith("knowledge.missing_docstrings.")
    assert make("pkg/b.py").id != make().id


def test_the_envelope_carries_every_contract_field():
    env = open_envelope(make(), root="repo", host="h", now=12.5)
    assert list(env) == ["signal", "ecosystem", "intensity", "facts", "incident_id", "trace",
                         "ts", "schema_version", "channel"]
    assert env["signal"] == "curiosity.knowledge_question" and env["intensity"] == 0.85
    assert env["schema_version"] == 1 and env["channel"] == "legacy" and env["trace"] is None
    facts = env["facts"]
    for key in ("question_id", "hypothesis", "question", "evidence", "severity", "category",
                "source", "confidence", "suggestion", "timestamp", "metadata"):
        assert key in facts
    assert facts["category"] == "knowledge_discovery" and facts["source"] == "knowledge_discovery"
    assert loads(dumps(env)) == env


def test_incident_ids_are_unique_per_publication():
    a = open_envelope(make(), root="r", host="h", now=1)
    b = open_envelope(make(), root="r", host="h", now=1)
    assert a["incident_id"] != b["incident_id"]


@pytest.mark.parametrize(("severity", "intensity"), [("low", 0.6), ("medium", 0.75),
                                                     ("high", 0.9)])
def test_exploration_intensity_follows_severity(severity, intensity):
    assert make(severity=severity, detector=names.EXPLORATION).intensity == intensity


def test_a_question_must_end_with_a_question_mark():
    with pytest.raises(ValueError):
        Question(detector="knowledge", rule="r", subject="s", owner="o", hypothesis="h",
                 question="Not a question.")


@pytest.mark.parametrize("text", ["", "{", "[]", '{"schema_version":2}',
                                  '{"schema_version":1,"facts":{},"signal":"curiosity.x"}'])
def test_malformed_envelopes_are_refused_with_a_reason(text):
    with pytest.raises(EnvelopeError):
        loads(text)


def good_payload(**over):
    return {**Change("repo", "pkg/a.py", "modified", "a" * 64, ts=1.0).to_json(), **over}


def test_a_well_formed_payload_parses():
    assert parse(good_payload()).path == "pkg/a.py"
    assert parse(good_payload(event="deleted", sha256=None)).sha256 is None


@pytest.mark.parametrize("bad", [
    None, [], "x", {"root": "repo"},
    good_payload(path="/etc/passwd"), good_payload(path="../outside.py"),
    good_payload(path="a/../../b.py"), good_payload(path="a//b.py"), good_payload(path=""),
    good_payload(path="a\x00b"), good_payload(root="../x"), good_payload(root=""),
    good_payload(event="exploded"), good_payload(sha256="nothex"),
    good_payload(event="deleted"), good_payload(ts="yesterday"), good_payload(v=9),
])
def test_malformed_payloads_are_refused(bad):
    with pytest.raises(PayloadError):
        parse(bad)


def test_decoding_refuses_binary_and_undecodable_bytes_but_honours_cookies():
    with pytest.raises(NotText, match="NUL"):
        decode_source("a.py", b"x = 1\x00")
    with pytest.raises(NotText, match="undecodable"):
        decode_source("a.md", b"caf\xe9")
    latin = "# -*- coding: latin-1 -*-\ns = 'caf\xe9'\n".encode("latin-1")
    assert "café" in decode_source("a.py", latin)
    assert decode_source("a.md", "\ufeffhello".encode()) == "hello"
    with pytest.raises(NotText):
        decode_source("a.py", b"# coding: no-such-codec\n")


def test_payload_json_round_trips():
    change = Change("repo", "a.py", "created", "b" * 64, ts=2.0)
    assert parse(json.loads(json.dumps(change.to_json()))) == change
