"""What ``status`` and ``questions --pending`` say about entries waiting between the stream
and ChemBus: held counts, next send times, cancellations, and the oldest undelivered entry.

An in-process bridge and proxy on real ZeroMQ sockets, a real Redis, and the
CuriosityCore-like consumer (chembus_consumers.py).
"""

from __future__ import annotations

import io
import json
import time

import pytest
from chembus_consumers import CuriosityCoreLike, free_port
from procs import wait_for

from kloros_tasks import names
from kloros_tasks.cli.reader import run_questions
from kloros_tasks.cli.status import collect
from kloros_tasks.deliver.backlog import UNDELIVERED_AFTER, delivery_report
from kloros_tasks.deliver.bridge import Bridge
from kloros_tasks.deliver.chemproxy import ChemProxy
from kloros_tasks.questions import Question
from kloros_tasks.settings import from_env
from kloros_tasks.state.publish import Publisher

pytestmark = pytest.mark.integration
LATER = UNDELIVERED_AFTER + 60  # seconds added to "now" to look at the state later


def question(n: int, severity: str = "low") -> Question:
    return Question(detector=names.KNOWLEDGE, rule="unindexed_doc", subject=f"doc{n}",
                    owner=f"docs/{n}.md", hypothesis=f"UNINDEXED_DOC: docs/{n}.md",
                    question=f"Should docs/{n}.md be linked?", severity=severity)


@pytest.fixture
def chembus(redis_url, tmp_path):
    """(settings, bridge, consumer): a proxy, an in-process bridge, a CuriosityCore-like
    consumer; the bridge is stepped by the test."""
    xsub, xpub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_CHEM_XSUB": xsub,
                         "KLOROS_CHEM_XPUB": xpub, "KLOROS_BUDGET_KNOWLEDGE": "1/3600"})
    proxy = ChemProxy(xsub, xpub).start()
    core = CuriosityCoreLike(xpub, tmp_path / "processed_ids")
    bridge = Bridge(settings)
    bridge.ensure_group()
    yield settings, bridge, core
    bridge.close()
    core.close()
    proxy.stop()


def step_until(bridge: Bridge, condition, message: str):
    def stepped():
        bridge.step(50)
        return condition()

    return wait_for(stepped, 20, 0, message)


def test_a_resolution_nobody_subscribes_to_waits_without_degrading_status(r, chembus):
    # CuriosityCore never subscribes to resolutions: a deployment without a recorder
    # always has some waiting, and that is no fault to alert on.
    settings, bridge, core = chembus
    publisher = Publisher(r)
    publisher.sync(names.KNOWLEDGE, "repo", "docs/1.md", [question(1)])
    step_until(bridge, lambda: core.processed_ids(), "the question delivered")
    publisher.sync(names.KNOWLEDGE, "repo", "docs/1.md", [])
    step_until(bridge, lambda: r.hexists(names.BRIDGE_UNSUBSCRIBED, names.CHANNEL_RESOLVED),
               "the notice parked, its topic marked without a subscriber")
    assert r.zcard(names.BRIDGE_RESOLUTIONS) == 1
    later = collect(settings, r, now=time.time() + LATER)
    assert not [p for p in later["problems"] if "undelivered" in p]
    assert later["bridge"]["resolutions_waiting"] == 1
    assert later["bridge"]["undelivered"] is None


def test_a_question_topic_nobody_subscribes_to_is_named_once_it_waits_too_long(r, redis_url):
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_CHEM_XSUB": "tcp://h:1"})
    since = time.time()
    r.hset(names.BRIDGE_UNSUBSCRIBED, names.CHANNEL[names.KNOWLEDGE], since)
    r.zadd(names.bridge_backlog(names.KNOWLEDGE), {"q1": 1})
    assert not [p for p in collect(settings, r, now=since + 1)["problems"] if "undelivered" in p]
    later = collect(settings, r, now=since + LATER)
    (problem,) = [p for p in later["problems"] if "undelivered" in p]
    assert names.CHANNEL[names.KNOWLEDGE] in problem and "no subscriber" in problem
    assert later["status"] == "degraded"


def test_entries_no_bridge_reads_are_named_with_their_topic(r, redis_url):
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_CHEM_XSUB": "tcp://h:1"})
    r.xgroup_create(names.STREAM, names.BRIDGE_GROUP, id="0", mkstream=True)  # as a bridge does
    Publisher(r).sync(names.KNOWLEDGE, "repo", "docs/1.md", [question(1)])
    report = collect(settings, r, now=time.time() + LATER)
    (problem,) = [p for p in report["problems"] if "undelivered" in p]
    assert names.CHANNEL[names.KNOWLEDGE] in problem and "not read by the bridge" in problem


def test_held_counts_next_send_and_cancellations_in_status_and_pending(r, redis_url, chembus):
    settings, bridge, core = chembus
    publisher = Publisher(r)
    for n, severity in enumerate(["low", "high", "medium", "low"]):
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [question(n, severity)])
    step_until(bridge, lambda: core.processed_ids() and not r.xinfo_groups(names.STREAM)[0][
        "lag"], "one sent, three held by the budget of 1 an hour")
    publisher.sync(names.KNOWLEDGE, "repo", "docs/3.md", [])  # held, then resolved
    step_until(bridge, lambda: r.hget(names.BRIDGE_CANCELLED, names.KNOWLEDGE), "a cancel")

    budget = delivery_report(r, settings, time.time())["budgets"][names.KNOWLEDGE]
    assert (budget["held"], budget["cancelled"], budget["budget"]) == (2, 1, "1/3600")
    assert budget["next_send"] == pytest.approx(time.time() + 3600, abs=60)
    assert collect(settings, r)["bridge"]["budgets"][names.KNOWLEDGE] == budget

    text = io.StringIO()
    run_questions(settings, pending_only=True, out=text)
    assert "knowledge    held 2  next send" in text.getvalue()
    assert "cancelled 1  budget 1/3600" in text.getvalue()
    lines = io.StringIO()
    run_questions(settings, pending_only=True, fmt="jsonl", out=lines)
    held = [json.loads(x)["facts"] for x in lines.getvalue().splitlines()]
    sent = core.processed[0]["facts"]["severity"]
    assert sent == "high"  # the burst was read at once: the most severe went first
    assert [f["severity"] for f in held] == ["medium", "low"]



def test_malformed_entries_are_dropped_and_the_next_question_still_arrives(r, chembus, caplog):
    settings, bridge, core = chembus
    junk = ['[1, 2]', '{"signal": "curiosity.knowledge_question", "facts": [1]}',
            '{"signal": "curiosity.question_resolved"}',
            '{"signal": "curiosity.weather", "facts": {"question_id": "x", "question": "y?"}}',
            '{"signal": "curiosity.knowledge_question", "facts": {"question_id": ["x"]}}',
            'not json']
    for raw in junk:
        r.xadd(names.STREAM, {names.STREAM_FIELD: raw})
    Publisher(r).sync(names.KNOWLEDGE, "repo", "docs/1.md", [question(1)])
    step_until(bridge, lambda: core.processed_ids(), "the question after the junk")
    assert core.processed_ids() == [question(1).id]
    assert r.xpending(names.STREAM, names.BRIDGE_GROUP)["pending"] == 0
    assert caplog.text.count("dropping a stream entry") == len(junk)
