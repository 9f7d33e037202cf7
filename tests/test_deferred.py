"""Deferred evaluation: a burst of changes is judged once, against the whole burst.

The first tests call ``handle_change`` and ``settle`` directly against the private
Redis (a waiting task is simulated by an entry in the detector's queue list); the last
one runs a real worker.
"""

from __future__ import annotations

import hashlib
import json
import time
import types

import pytest
from procs import wait_for

from kloros_tasks import names
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work import analysis, blobs, deferral, engine, settling
from kloros_tasks.work.analysis import Context, handle_change, settle
from kloros_tasks.work.batch import handle_batch
from kloros_tasks.work.payload import Change, batch_json

ROOT = "proj"
DETECTOR = KnowledgeDetector()
# Sent in this order, the guide arrives before the code it names and the README that
# links it: judged one change at a time, it is stale and unindexed until they come.
BURST = {
    "docs/guide.md": "# Guide\n\nCall `pkg.publish.publish` from `pkg/publish.py`.\n",
    "README.md": "# Project\n\nRead the [guide](docs/guide.md).\n",
    "pkg/__init__.py": '"""The package."""\n',
    "pkg/publish.py": '"""Publishing."""\n\n\ndef publish(x):\n    """Publish x."""\n'
                      "    return x\n",
    "pkg/helpers.py": "".join(f"def helper_{n}():\n    return {n}\n\n" for n in range(5)),
}


def context(r) -> Context:
    return Context(r, Publisher(r, host="test"), max_file_bytes=1 << 20)


def send(r, path: str, text: str, ctx: Context | None = None) -> str:
    raw = text.encode()
    sha = hashlib.sha256(raw).hexdigest()
    blobs.store(r, sha, raw, refs=1, ttl=600)
    payload = Change(ROOT, path, "modified", sha, ts=1.0).to_json()
    return handle_change(ctx or context(r), DETECTOR, payload)


def envelopes(r) -> list[dict]:
    return [json.loads(fields[b"envelope"]) for _id, fields in r.xrange(names.STREAM)]


def opened_ids(r) -> list[str]:
    return [e["facts"]["question_id"] for e in envelopes(r)
            if e["signal"] != "curiosity.question_resolved"]


def resolved_ids(r) -> list[str]:
    return [e["facts"]["question_id"] for e in envelopes(r)
            if e["signal"] == "curiosity.question_resolved"]


def questions_of_whole_tree(root: str = ROOT) -> set[str]:
    """What ``kloros-tasks scan`` asks: every file indexed before any is judged."""
    index = MemoryIndex()
    for path, text in BURST.items():
        engine.apply_change(DETECTOR, index, path, text)
    judged = engine.evaluate(DETECTOR, index, index.paths(), root)
    return {q.id for questions in judged.values() for q in questions}


@pytest.fixture
def rr(r):
    r.hset(names.ROOTS, ROOT, json.dumps({"path": "/nonexistent", "host": "elsewhere"}))
    return r


def test_one_change_at_a_time_opens_questions_that_the_rest_of_the_burst_resolves(rr):
    # The behaviour deferral exists to avoid: with nothing waiting, each change is judged
    # at once against a half-indexed tree.
    for path, text in BURST.items():
        assert send(rr, path, text) == "analysed"
    assert resolved_ids(rr), "expected transient questions without deferral"
    assert set(opened_ids(rr)) - set(resolved_ids(rr)) == questions_of_whole_tree()


def test_a_burst_is_judged_once_when_the_queue_drains(rr):
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    for path, text in BURST.items():
        assert send(rr, path, text) == "analysed"
    assert envelopes(rr) == []
    assert rr.smembers(names.deferred(names.KNOWLEDGE, ROOT)) == {p.encode() for p in BURST}
    rr.delete(names.KNOWLEDGE)
    assert settle(context(rr), DETECTOR, ROOT) == 0
    assert resolved_ids(rr) == []
    assert sorted(opened_ids(rr)) == sorted(questions_of_whole_tree())
    assert not rr.exists(names.deferred(names.KNOWLEDGE, ROOT),
                         names.deferred_since(names.KNOWLEDGE, ROOT))


def test_only_the_first_deferral_of_a_burst_schedules_a_settle_task(rr):
    scheduled: list[tuple[str, str]] = []
    ctx = Context(rr, Publisher(rr, host="test"), 1 << 20,
                  schedule_settle=lambda detector, root: scheduled.append((detector, root)))
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    for path, text in BURST.items():
        send(rr, path, text, ctx)
    assert scheduled == [(names.KNOWLEDGE, ROOT)]
    rr.delete(names.KNOWLEDGE)
    settle(ctx, DETECTOR, ROOT)
    # Settled: the next burst schedules its own.
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    send(rr, "pkg/helpers.py", BURST["pkg/helpers.py"] + "\n# edited\n", ctx)
    assert scheduled == [(names.KNOWLEDGE, ROOT)] * 2


def test_settling_in_batches_keeps_what_it_has_not_published(rr, monkeypatch):
    monkeypatch.setattr(analysis, "SETTLE_BATCH", 2)
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    for path, text in BURST.items():
        send(rr, path, text)
    rr.delete(names.KNOWLEDGE)
    assert settle(context(rr), DETECTOR, ROOT, budget=0) == len(BURST) - 2
    assert rr.exists(names.deferred_since(names.KNOWLEDGE, ROOT))
    assert settle(context(rr), DETECTOR, ROOT) == 0
    assert sorted(opened_ids(rr)) == sorted(questions_of_whole_tree())
    assert resolved_ids(rr) == []


@pytest.mark.integration
def test_a_worker_publishes_no_transient_question_for_a_burst(tmp_path):
    from test_worker import Pipeline  # noqa: PLC0415 - the module-scoped helpers

    pipe = Pipeline(tmp_path, names.KNOWLEDGE)
    try:
        root = pipe.new_root()
        # Hold the root's lock so that the whole burst is queued before the first
        # change is applied, as in a cold scan whose tasks arrive faster than analysis.
        lock = pipe.r.lock(names.lock(names.KNOWLEDGE, root), timeout=60)
        assert lock.acquire(blocking=False)
        for path, text in BURST.items():
            pipe.change(root, path, text.encode())
        wait_for(lambda: pipe.r.llen(names.KNOWLEDGE) == len(BURST) - 1, 20,
                 message="the first change to wait on the lock")
        lock.release()
        wait_for(pipe.drained, 30, message="the burst analysed")
        wait_for(lambda: not pipe.r.exists(names.deferred(names.KNOWLEDGE, root)), 20,
                 message="the deferred set settled")
        published = pipe.envelopes(root)
        assert [e for e in published if e["signal"] == "curiosity.question_resolved"] == []
        assert sorted(e["facts"]["question_id"] for e in published) == sorted(
            questions_of_whole_tree(root))
        assert "settled deferred evaluations of" in pipe.worker.output()
    finally:
        pipe.close()


@pytest.mark.integration
def test_two_roots_settling_at_once_do_not_wait_on_each_other(tmp_path):
    # Each settle task finds the other root's in the queue.  Waiting behind whatever is
    # queued, they requeued behind each other until SETTLE_MAX_WAIT (600 s); with the
    # roots' bursts over, one pass behind the queue is all either waits.
    from test_worker import Pipeline  # noqa: PLC0415 - the module-scoped helpers

    pipe = Pipeline(tmp_path, names.KNOWLEDGE)
    try:
        roots = [pipe.new_root(), pipe.new_root()]
        for root in roots:
            pipe.r.sadd(names.deferred(names.KNOWLEDGE, root), "README.md")
            pipe.r.set(names.deferred_since(names.KNOWLEDGE, root), time.time())
        for root in roots:
            pipe.app.send_task(names.TASK_SETTLE[names.KNOWLEDGE], args=[root],
                               queue=names.KNOWLEDGE)
        wait_for(lambda: not any(pipe.r.exists(names.deferred(names.KNOWLEDGE, root))
                                 for root in roots), 60,
                 message="both roots' deferred sets settled")
        assert pipe.worker.output().count("burst in progress") <= 2
    finally:
        pipe.close()


def test_deferred_roots_given_the_registered_roots_answers_as_it_reads_them(rr):
    rr.hset(names.ROOTS, "other", json.dumps({"path": "/elsewhere", "host": "elsewhere"}))
    rr.hset(names.ROOTS, "sending", json.dumps({"path": "/sending", "host": "elsewhere"}))
    for root in (ROOT, "sending"):
        rr.sadd(names.deferred(DETECTOR.name, root), "a.py")
    rr.set(names.burst("sending"), 1)
    registered = rr.hkeys(names.ROOTS)
    assert deferral.deferred_roots(rr, DETECTOR.name) == [ROOT]
    assert deferral.deferred_roots(rr, DETECTOR.name, registered) == [ROOT]
    assert deferral.deferred_roots(rr, DETECTOR.name, []) == []


def test_a_settle_task_refuses_a_second_argument_it_does_not_know():
    class Stub:
        name = "kloros.knowledge.settle"

    assert settling.settle_task(Stub(), names.KNOWLEDGE, ("proj", "later"), {}) == "refused"
    assert settling.settle_task(Stub(), names.KNOWLEDGE, ("proj", "x", "y"), {}) == "refused"


def test_a_worker_waiting_for_the_roots_lock_says_so(rr):
    ctx = context(rr)
    held = deferral.root_lock(ctx, names.KNOWLEDGE, ROOT)
    assert held.acquire(blocking=False)
    assert not deferral.someone_waits(rr, names.KNOWLEDGE, ROOT)  # the holder did not wait
    assert not deferral.root_lock(ctx, names.KNOWLEDGE, ROOT).acquire(blocking=False)
    assert deferral.someone_waits(rr, names.KNOWLEDGE, ROOT)
    assert 0 < rr.pttl(names.lock_waiting(names.KNOWLEDGE, ROOT)) <= deferral.LOCK_WAITING_MS
    held.release()


class SettleTask:
    """What ``settling.settle_task`` asks of its task: the settle tasks it would queue
    are kept as (countdown, behind)."""

    name = "kloros.knowledge.settle"

    def __init__(self, r, task_id: str = "settle-1") -> None:
        from kloros_tasks.settings import Settings  # noqa: PLC0415

        self.client, self.settings, self.scheduled = r, Settings(), []
        self.request = types.SimpleNamespace(id=task_id)

    def context(self):
        return context(self.client)

    def schedule_settle(self, detector, root, countdown=None, *, behind=False):
        self.scheduled.append((countdown, behind))


def test_a_settle_task_finding_the_root_busy_comes_back_instead_of_waiting(rr):
    send(rr, "notes.md", "# Notes\n\nSee [the guide](guide.md).\n")
    rr.sadd(names.deferred(names.KNOWLEDGE, ROOT), "notes.md")
    task = SettleTask(rr)
    busy = deferral.root_lock(context(rr), names.KNOWLEDGE, ROOT)
    assert busy.acquire(blocking=False)  # another settle, or a batch's apply
    assert settling.settle_task(task, names.KNOWLEDGE, (ROOT, "behind"), {}) == "root busy"
    assert task.scheduled == [(deferral.LOCK_POLL, True)]
    assert rr.exists(names.deferred(names.KNOWLEDGE, ROOT))
    busy.release()
    assert settling.settle_task(task, names.KNOWLEDGE, (ROOT, "behind"), {}) == "0 deferred"
    assert not rr.exists(names.deferred(names.KNOWLEDGE, ROOT))


def test_one_task_at_a_time_settles_a_root(rr):
    # Two settles of one root would take its lock in turns, each pausing for the
    # other between its holds; the second comes back later instead.
    send(rr, "notes.md", "# Notes\n\nSee [the guide](guide.md).\n")
    rr.sadd(names.deferred(names.KNOWLEDGE, ROOT), "notes.md")
    first, second = SettleTask(rr, "settle-1"), SettleTask(rr, "settle-2")
    assert deferral.take_settling(rr, names.KNOWLEDGE, ROOT, "settle-1", 60)
    assert settling.settle_task(second, names.KNOWLEDGE, (ROOT, "behind"), {}) == \
        "settled elsewhere"
    assert second.scheduled == [(analysis.SETTLE_RECHECK, True)]
    assert rr.sismember(names.deferred(names.KNOWLEDGE, ROOT), "notes.md")
    # The first task delivered again (its worker died) goes on with its own marker.
    assert settling.settle_task(first, names.KNOWLEDGE, (ROOT, "behind"), {}) == "0 deferred"
    assert not rr.exists(names.deferred(names.KNOWLEDGE, ROOT))
    assert not rr.exists(names.settling(names.KNOWLEDGE, ROOT))  # given up when done
    rr.sadd(names.deferred(names.KNOWLEDGE, ROOT), "notes.md")
    assert settling.settle_task(second, names.KNOWLEDGE, (ROOT, "behind"), {}) == "0 deferred"


def test_no_settle_judges_a_root_while_a_claimed_batch_of_it_is_applied(rr):
    # The claimant of a batch applies it for every detector of its worker: a detector
    # whose queue is empty still has files to come until the claimant is done.
    from kloros_tasks.work import claims  # noqa: PLC0415

    rr.sadd(names.deferred(names.KNOWLEDGE, ROOT), "notes.md")
    claims.begin(rr, ROOT, "claimant", "kloros:claim:x", 60)
    assert deferral.in_burst(rr, names.KNOWLEDGE, ROOT)
    task = SettleTask(rr)
    assert settling.settle_task(task, names.KNOWLEDGE, (ROOT, "behind"), {}) == \
        "burst in progress"
    assert task.scheduled == [(deferral.LOCK_POLL, True)]
    claims.end(rr, ROOT, "claimant", "kloros:claim:x")
    assert not deferral.in_burst(rr, names.KNOWLEDGE, ROOT)
    assert settling.settle_task(task, names.KNOWLEDGE, (ROOT, "behind"), {}) == "0 deferred"
    # A claimant killed half way holds the burst no longer than its claim would last.
    claims.begin(rr, ROOT, "killed", "kloros:claim:y", 0.05)
    wait_for(lambda: not deferral.in_burst(rr, names.KNOWLEDGE, ROOT), 10,
             message="the killed claimant's share of the burst over")


def test_a_lock_tried_is_taken_if_free_without_saying_that_one_waits(rr):
    ctx = context(rr)
    held = deferral.root_lock(ctx, names.KNOWLEDGE, ROOT)
    assert held.try_acquire()
    tried = deferral.root_lock(ctx, names.KNOWLEDGE, ROOT)
    assert not tried.try_acquire()
    assert not deferral.someone_waits(rr, names.KNOWLEDGE, ROOT)
    with held:  # held already: entered without taking it again, released on leaving
        assert rr.get(names.lock(names.KNOWLEDGE, ROOT)) == held.local.token
    assert not rr.exists(names.lock(names.KNOWLEDGE, ROOT))
    assert tried.try_acquire()
    tried.release()


def burst_deferred(r, waiting: bool) -> None:
    """The burst sent while a task waits (so every file is deferred), then the queue
    emptied; ``waiting``: a worker says it waits for the root's lock."""
    r.rpush(names.KNOWLEDGE, "a task still waiting")
    for path, text in BURST.items():
        send(r, path, text)
    r.delete(names.KNOWLEDGE)
    if waiting:
        r.set(names.lock_waiting(names.KNOWLEDGE, ROOT), b"1", px=60_000)


@pytest.mark.parametrize("waiting", [False, True])
def test_settling_pauses_between_batches_only_for_a_waiting_worker(rr, monkeypatch, waiting):
    monkeypatch.setattr(analysis, "SETTLE_BATCH", 2)
    pauses: list[float] = []
    monkeypatch.setattr(analysis.time, "sleep", pauses.append)
    burst_deferred(rr, waiting)
    assert settle(context(rr), DETECTOR, ROOT) == 0
    # Five files, two per batch: two full batches, each followed by a pause if awaited.
    assert pauses == ([analysis.SETTLE_YIELD] * 2 if waiting else [])
    assert sorted(opened_ids(rr)) == sorted(questions_of_whole_tree())


@pytest.mark.parametrize("waiting", [False, True])
def test_a_settle_keeps_its_lookups_across_batches_while_nobody_waits(rr, monkeypatch,
                                                                       waiting):
    monkeypatch.setattr(analysis, "SETTLE_BATCH", 2)
    monkeypatch.setattr(analysis, "SETTLE_KEPT", 5)
    monkeypatch.setattr(analysis.time, "sleep", lambda s: None)
    holds, views = [], []
    taken = analysis.root_lock

    def counted(*args):
        holds.append(args)
        return taken(*args)

    evaluate = engine.evaluate

    def seen(detector, index, owners, root, package="", view=None):
        views.append(view)
        return evaluate(detector, index, owners, root, package, view)

    monkeypatch.setattr(analysis, "root_lock", counted)
    monkeypatch.setattr(analysis.engine, "evaluate", seen)
    burst_deferred(rr, waiting)
    holds.clear()  # the changes' own
    assert settle(context(rr), DETECTOR, ROOT) == 0
    # Five files, two per batch: three batches, under one hold of the lock through one
    # view, or each under its own with a waiter let in between.
    assert len(views) == 3 and None not in views
    assert len(holds) == (3 if waiting else 1)
    assert len({id(v) for v in views}) == len(holds)
    assert sorted(opened_ids(rr)) == sorted(questions_of_whole_tree())


class CountingDetector(KnowledgeDetector):
    """The knowledge detector, counting its lookups of the files a change affects."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def affected(self, path, touched, view):
        self.lookups += 1
        return super().affected(path, touched, view)


def send_batch(r, detector, items: dict[str, str | None]) -> str:
    changes = []
    for path, text in items.items():
        if text is None:
            changes.append(Change(ROOT, path, "deleted", ts=2.0))
            continue
        sha = hashlib.sha256(text.encode()).hexdigest()
        blobs.store(r, sha, text.encode(), refs=1, ttl=600)
        changes.append(Change(ROOT, path, "modified", sha, ts=2.0))
    return handle_batch(context(r), detector, batch_json(ROOT, changes))


def test_a_burst_on_an_empty_index_defers_every_file_and_looks_no_reader_up(rr):
    detector = CountingDetector()
    paths = list(BURST)
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    send_batch(rr, detector, {p: BURST[p] for p in paths[:2]})
    deferred = names.deferred(names.KNOWLEDGE, ROOT)
    assert rr.sismember(deferred, names.WHOLE_ROOT)
    send_batch(rr, detector, {p: BURST[p] for p in paths[2:]} | {"notes.md": "# Gone\n"})
    send_batch(rr, detector, {"notes.md": None})
    assert detector.lookups == 0 and envelopes(rr) == []
    rr.delete(names.KNOWLEDGE)
    assert settle(context(rr), detector, ROOT) == 0
    assert sorted(opened_ids(rr)) == sorted(questions_of_whole_tree())
    assert resolved_ids(rr) == [] and not rr.exists(deferred)


def test_a_burst_on_an_index_holding_more_files_than_the_batch_looks_readers_up(rr):
    detector = CountingDetector()
    send_batch(rr, detector, BURST)  # no burst: judged at once
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    edited = {"pkg/publish.py": '"""Publishing."""\n'}  # the guide's function is gone
    send_batch(rr, detector, edited)
    assert detector.lookups == len(BURST) + 1
    assert rr.smembers(names.deferred(names.KNOWLEDGE, ROOT)) >= {b"pkg/publish.py",
                                                                  b"docs/guide.md"}
    assert not rr.sismember(names.deferred(names.KNOWLEDGE, ROOT), names.WHOLE_ROOT)


def test_a_burst_that_deferred_half_the_index_defers_every_file_from_then_on(rr):
    detector = CountingDetector()
    send_batch(rr, detector, BURST)  # no burst: judged at once
    rr.rpush(names.KNOWLEDGE, "a task still waiting")
    deferred = names.deferred(names.KNOWLEDGE, ROOT)
    send_batch(rr, detector, {"pkg/helpers.py": BURST["pkg/helpers.py"] + "# a\n"})
    assert rr.scard(deferred) == 1 and not rr.sismember(deferred, names.WHOLE_ROOT)
    # 5 files indexed, 1 deferred: with 3 new files, 8 files of which 4 deferred.
    lookups = detector.lookups
    send_batch(rr, detector, {"a.md": "# A\n", "b.md": "# B\n", "c.md": "# C\n"})
    assert rr.sismember(deferred, names.WHOLE_ROOT) and detector.lookups == lookups
    rr.delete(names.KNOWLEDGE)
    assert settle(context(rr), detector, ROOT) == 0
    assert not rr.exists(deferred)
