"""``kloros-tasks questions``: the stream, the open ledger and the bridge backlog read back."""

from __future__ import annotations

import io
import json

from kloros_tasks import names
from kloros_tasks.cli.reader import run_questions
from kloros_tasks.deliver.bridge import backlog_score
from kloros_tasks.questions import Question
from kloros_tasks.settings import from_env
from kloros_tasks.state.publish import Publisher


def q(n: int, severity: str = "low") -> Question:
    return Question(detector=names.KNOWLEDGE, rule="unindexed_doc", subject=f"d{n}",
                    owner=f"docs/{n}.md", hypothesis=f"UNINDEXED_DOC: docs/{n}.md",
                    question=f"Link docs/{n}.md?", severity=severity)


def read(redis_url, **options) -> str:
    out = io.StringIO()
    assert run_questions(from_env({"KLOROS_REDIS_URL": redis_url}), out=out, **options) == 0
    return out.getvalue()


def test_jsonl_lines_are_exactly_the_stream_envelopes(r, redis_url):
    publisher = Publisher(r)
    for n in range(3):
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [q(n)])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/0.md", [])
    lines = read(redis_url, fmt="jsonl").splitlines()
    stream = [f[b"envelope"].decode() for _i, f in r.xrange(names.STREAM)]
    assert lines == stream and len(lines) == 4
    resolved = read(redis_url, fmt="jsonl", signal=names.CHANNEL_RESOLVED).splitlines()
    assert [json.loads(x)["facts"]["question_id"] for x in resolved] == [q(0).id]


def test_open_lists_only_what_still_holds(r, redis_url):
    publisher = Publisher(r)
    for n in range(3):
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [q(n)])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/1.md", [])
    text = read(redis_url, open_only=True)
    assert q(0).id in text and q(2).id in text and q(1).id not in text


def test_pending_lists_the_bridge_backlog_in_sending_order(r, redis_url):
    publisher = Publisher(r)
    for n, severity in enumerate(["low", "high", "medium"]):
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [q(n, severity)])
    for env in publisher.open_questions():  # park them as an over-budget bridge would
        qid = env["facts"]["question_id"]
        r.hset(names.BRIDGE_HELD, qid, json.dumps(env))
        r.zadd(names.bridge_backlog(names.KNOWLEDGE), {qid: backlog_score(env)})
    lines = read(redis_url, pending_only=True, fmt="jsonl").splitlines()
    assert [json.loads(x)["facts"]["severity"] for x in lines] == ["high", "medium", "low"]
