"""The open-question ledger publishes each question once and resolves it once."""

from __future__ import annotations

import json
import threading

from kloros_tasks import names
from kloros_tasks.questions import Question, loads
from kloros_tasks.state.publish import Publisher


def q(subject: str, owner: str = "docs/a.md") -> Question:
    return Question(detector=names.KNOWLEDGE, rule="unindexed_doc", subject=subject, owner=owner,
                    hypothesis=f"UNINDEXED_DOC: {subject}", question=f"Is {subject} linked?",
                    severity="low", evidence=(f"{owner}:1 no inbound link",))


def stream_envelopes(r) -> list[dict]:
    return [json.loads(f[b"envelope"]) for _id, f in r.xrange(names.STREAM)]


def test_a_new_question_goes_to_channel_and_stream_once(r):
    pubsub = r.pubsub()
    pubsub.psubscribe(names.CHANNEL_PATTERN)
    pubsub.get_message(timeout=1)
    publisher = Publisher(r, host="h1")
    first = publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    again = publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    assert first.opened == (q("a").id,) and again.opened == ()
    message = pubsub.get_message(timeout=2)
    assert message["channel"] == b"curiosity.knowledge_question"
    assert pubsub.get_message(timeout=0.2) is None
    (env,) = stream_envelopes(r)
    assert message["data"] == json.dumps(env, separators=(",", ":")).encode()
    assert env["facts"]["metadata"] == {"detector": "knowledge", "rule": "unindexed_doc",
                                        "paths": ["docs/a.md"], "root": "repo", "host": "h1"}
    assert loads(message["data"])["facts"]["question_id"].startswith("knowledge.unindexed_doc.")


def test_a_question_that_stops_holding_is_resolved_once(r):
    publisher = Publisher(r)
    opened = publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a"), q("b")])
    resolved = publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("b")])
    nothing = publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("b")])
    assert set(opened.opened) == {q("a").id, q("b").id}
    assert resolved.resolved == (q("a").id,) and nothing.resolved == ()
    notices = [e for e in stream_envelopes(r) if e["signal"] == names.CHANNEL_RESOLVED]
    assert [n["facts"]["question_id"] for n in notices] == [q("a").id]
    assert notices[0]["facts"]["metadata"]["paths"] == ["docs/a.md"]
    assert r.hexists(names.LEDGER, q("b").id) and not r.hexists(names.LEDGER, q("a").id)


def test_owners_are_independent(r):
    publisher = Publisher(r)
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    result = publisher.sync(names.KNOWLEDGE, "repo", "docs/b.md", [])
    assert result.resolved == () and r.hexists(names.LEDGER, q("a").id)


def test_racing_workers_publish_a_question_exactly_once(r, redis_url):
    from kloros_tasks.connections import redis_client

    barrier = threading.Barrier(8)
    results = []

    def work():
        client = redis_client(redis_url)
        publisher = Publisher(client)
        barrier.wait()
        results.append(publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")]))
        client.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(res.opened) for res in results) == 1
    assert len(stream_envelopes(r)) == 1


def test_the_first_seen_timestamp_survives_later_syncs(r):
    times = iter([100.0, 200.0])
    publisher = Publisher(r, clock=lambda: next(times))
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    (env,) = publisher.open_questions()
    assert env["facts"]["timestamp"] == 100.0


def test_a_reopened_question_comes_under_an_id_the_consumer_has_not_seen(r):
    publisher = Publisher(r, host="h1")
    stable = q("a").id
    for _ in range(3):  # opened, resolved, opened again, resolved, opened a third time
        publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
        publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    envelopes = stream_envelopes(r)
    assert [(e["signal"].rpartition("_")[2], e["facts"]["question_id"]) for e in envelopes] == [
        ("question", stable), ("resolved", stable),
        ("question", f"{stable}.r2"), ("resolved", f"{stable}.r2"),
        ("question", f"{stable}.r3"), ("resolved", f"{stable}.r3"),
        ("question", f"{stable}.r4")]
    first, reopened = envelopes[0], envelopes[2]
    assert "stable_id" not in first["facts"]["metadata"]
    assert reopened["facts"]["metadata"] == {**first["facts"]["metadata"], "stable_id": stable}
    assert [loads(json.dumps(e))["facts"]["question"] for e in envelopes[::2]] == [
        first["facts"]["question"]] * 4
    # The ledger keeps its stable key; the open envelope carries the re-opened id.
    assert json.loads(r.hget(names.LEDGER, stable))["facts"]["question_id"] == f"{stable}.r4"
    assert publisher.open_ids(names.KNOWLEDGE, "repo", "docs/a.md") == {stable}


def test_a_question_still_open_is_not_counted_as_reopened_by_later_syncs(r):
    publisher = Publisher(r)
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/b.md", [q("b")])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a"), q("c")])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/b.md", [])
    publisher.sync(names.KNOWLEDGE, "repo", "docs/b.md", [q("b")])
    ids = [e["facts"]["question_id"] for e in stream_envelopes(r)
           if e["signal"] != names.CHANNEL_RESOLVED]
    assert ids == [q("a").id, q("b").id, q("c").id, f"{q('b').id}.r2"]


def test_syncing_many_owners_at_once_publishes_what_syncing_each_does(r):
    publisher = Publisher(r, host="h1")
    publisher.sync_many(names.KNOWLEDGE, "repo", {"docs/a.md": [q("a"), q("b")],
                                                  "docs/c.md": [q("c", "docs/c.md")]})
    results = publisher.sync_many(names.KNOWLEDGE, "repo", {
        "docs/a.md": [q("b"), q("d")],  # resolves a, opens d
        "docs/c.md": [q("c", "docs/c.md")],  # nothing to publish
        "docs/e.md": []})  # owned nothing, owns nothing
    assert results["docs/a.md"].opened == (q("d").id,)
    assert results["docs/a.md"].resolved == (q("a").id,)
    assert results["docs/c.md"].opened == results["docs/c.md"].resolved == ()
    assert results["docs/e.md"].opened == results["docs/e.md"].resolved == ()
    signals = [(e["signal"], e["facts"]["question_id"]) for e in stream_envelopes(r)]
    asked = names.CHANNEL[names.KNOWLEDGE]
    assert sorted(signals[:3]) == sorted([(asked, q("a").id), (asked, q("b").id),
                                          (asked, q("c", "docs/c.md").id)])
    assert signals[3:] == [(asked, q("d").id), (names.CHANNEL_RESOLVED, q("a").id)]
    assert publisher.open_ids(names.KNOWLEDGE, "repo", "docs/a.md") == {q("b").id, q("d").id}


def test_a_question_resolved_by_another_worker_meanwhile_is_only_forgotten(r):
    publisher = Publisher(r)
    publisher.sync(names.KNOWLEDGE, "repo", "docs/a.md", [q("a")])
    r.hdel(names.LEDGER, q("a").id)  # resolved elsewhere: no envelope left to resolve from
    result = publisher.sync_many(names.KNOWLEDGE, "repo", {"docs/a.md": []})["docs/a.md"]
    assert result.resolved == ()
    assert publisher.open_ids(names.KNOWLEDGE, "repo", "docs/a.md") == set()
    assert [e["signal"] for e in stream_envelopes(r)] == [names.CHANNEL[names.KNOWLEDGE]]
