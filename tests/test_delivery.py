"""Delivery to KLoROS: what a consumer that behaves like CuriosityCore gets through the bridge.

Everything runs for real: the ``chem-proxy`` and ``bridge`` commands as processes, the
ledger's Lua publishing into the stream, and consumers on real ZeroMQ sockets (see
chembus_consumers.py).  Each test runs with the CuriosityCore-like consumer alone and
again with a recorder subscribed to every topic beside it.
"""

from __future__ import annotations

import signal

import pytest
from chembus_consumers import (
    CuriosityCoreLike,
    Recorder,
    free_port,
    start_bridge,
    start_proxy,
    waiting_idle,
)
from procs import service_env, wait_for

from kloros_tasks import names
from kloros_tasks.questions import Question
from kloros_tasks.state.publish import Publisher

pytestmark = pytest.mark.integration
ARRIVAL = 10.0  # a generous bound on "arrives": the tests assert arrival, not speed


def question(n: int, severity: str = "low", detector: str = names.KNOWLEDGE) -> Question:
    return Question(detector=detector, rule="unindexed_doc", subject=f"doc{n}",
                    owner=f"docs/{n}.md", hypothesis=f"UNINDEXED_DOC: docs/{n}.md",
                    question=f"Should docs/{n}.md be linked?", severity=severity)


class World:
    """The proxy, the bridge and the consumers of one test, and a publisher into the stream."""

    def __init__(self, r, redis_url, tmp_path, procs, with_recorder: bool, **env) -> None:
        self.r, self.tmp_path, self.procs = r, tmp_path, procs
        self.xsub, self.xpub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.env = service_env(redis_url, tmp_path, **{
            "KLOROS_CHEM_XSUB": self.xsub, "KLOROS_CHEM_XPUB": self.xpub,
            **{f"KLOROS_BUDGET_{d.upper()}": "0" for d in names.DETECTORS}, **env})
        self.publisher = Publisher(r, host="h1")
        self.proxy = start_proxy(self.env, tmp_path, procs)
        self.core = CuriosityCoreLike(self.xpub, tmp_path / "processed_ids")
        self.recorder = Recorder(self.xpub) if with_recorder else None
        self.bridge = start_bridge(self.env, tmp_path, procs)

    def open(self, n: int, severity: str = "low") -> None:
        self.publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [question(n, severity)])

    def resolve(self, n: int) -> None:
        self.publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [])

    def opened_ids(self) -> list[str]:
        """Every question id the ledger opened, in stream order."""
        import json  # noqa: PLC0415

        return [json.loads(f[b"envelope"])["facts"]["question_id"]
                for _i, f in self.r.xrange(names.STREAM)
                if not f[b"envelope"].startswith(b'{"signal":"curiosity.question_resolved"')]

    def assert_nothing_duplicated(self) -> None:
        for consumer in filter(None, (self.core, self.recorder)):
            incidents = consumer.incidents()
            assert len(incidents) == len(set(incidents)), "an envelope arrived twice"
        assert self.core.replays_dropped == 0 and self.core.known_skipped == []
        assert self.core.rejected == []

    def close(self) -> None:
        self.core.close()
        if self.recorder:
            self.recorder.close()


@pytest.fixture(params=[False, True], ids=["core-only", "core+recorder"])
def world(request, r, redis_url, tmp_path, procs):
    w = World(r, redis_url, tmp_path, procs, request.param)
    yield w
    w.close()


def test_a_resolution_does_not_hold_back_the_next_question(world):
    world.open(1)
    world.core.wait_processed(1)
    world.resolve(1)  # nobody but a recorder subscribes to curiosity.question_resolved
    world.open(2)
    processed = world.core.wait_processed(2, timeout=ARRIVAL)
    assert [e["facts"]["metadata"]["paths"] for e in processed] == [["docs/1.md"], ["docs/2.md"]]
    if world.recorder:
        wire = world.recorder.wait_count(3)
        assert [t.rpartition("_")[2] for t, _e in wire] == ["question", "resolved", "question"]
        assert not world.r.exists(names.BRIDGE_RESOLUTIONS)
    else:  # the notice waits for a subscriber of its own topic, and says so
        assert world.r.zcard(names.BRIDGE_RESOLUTIONS) == 1
        wait_for(lambda: world.r.hexists(names.BRIDGE_UNSUBSCRIBED, names.CHANNEL_RESOLVED),
                 ARRIVAL, message="the topic marked as having no subscriber")
    world.assert_nothing_duplicated()


def test_a_reopened_question_arrives_under_an_id_the_consumer_has_not_seen(world):
    stable = question(1).id
    world.open(1)
    world.core.wait_processed(1)
    for times in (2, 3):
        world.resolve(1)
        world.open(1)
        world.core.wait_processed(times, timeout=ARRIVAL)
    processed = world.core.wait_processed(3)
    assert [e["facts"]["question_id"] for e in processed] == [stable, f"{stable}.r2",
                                                               f"{stable}.r3"]
    assert [e["facts"]["metadata"].get("stable_id") for e in processed] == [None, stable, stable]
    assert world.core.processed_file.read_text().split() == world.core.processed_ids()
    if world.recorder:
        wire = world.recorder.wait_count(5)
        resolved = [e["facts"]["question_id"] for t, e in wire if t == names.CHANNEL_RESOLVED]
        assert resolved == [stable, f"{stable}.r2"]  # each names the id that was opened
    world.assert_nothing_duplicated()


def test_a_proxy_restart_loses_and_duplicates_nothing(world):
    for n in range(3):
        world.open(n)
    world.core.wait_processed(3)
    world.resolve(0)
    if world.recorder:
        world.recorder.wait_count(4)
    world.proxy.stop()
    wait_for(lambda: "went away" in world.bridge.output(), 20, message="the bridge noticing")
    for n in range(3, 8):  # while the proxy is down: they wait in the stream
        world.open(n)
    world.proxy = start_proxy(world.env, world.tmp_path, world.procs)
    world.core.wait_processed(8, timeout=30)
    world.open(8)
    world.core.wait_processed(9, timeout=30)
    assert sorted(world.core.processed_ids()) == sorted(world.opened_ids())
    if world.recorder:
        assert len(world.recorder.wait_count(4 + 6)) == 10
    world.assert_nothing_duplicated()


def test_a_bridge_killed_while_idle_loses_and_duplicates_nothing(r, redis_url, tmp_path,
                                                                 procs, world_factory):
    world = world_factory(KLOROS_BUDGET_KNOWLEDGE="3/3600")
    for n, severity in enumerate(["low", "low", "high", "low", "medium", "low"]):
        world.open(n, severity)
    world.core.wait_processed(3)
    wait_for(lambda: world.r.zcard(names.bridge_backlog(names.KNOWLEDGE)) == 3, 20,
             message="three questions held by the budget")
    wait_for(lambda: waiting_idle(world.r), 20, message="the bridge waiting idle")
    world.bridge.popen.send_signal(signal.SIGKILL)
    world.bridge.popen.wait(10)
    for n in range(6, 9):  # while no bridge runs: they wait in the stream
        world.open(n)
    world.env["KLOROS_BUDGET_KNOWLEDGE"] = "0"  # the held ones may go at once now
    world.bridge = start_bridge(world.env, world.tmp_path, world.procs)
    world.core.wait_processed(9, timeout=30)
    assert sorted(world.core.processed_ids()) == sorted(world.opened_ids())
    assert not world.r.exists(names.bridge_backlog(names.KNOWLEDGE), names.BRIDGE_HELD)
    world.assert_nothing_duplicated()


@pytest.fixture(params=[False, True], ids=["core-only", "core+recorder"])
def world_factory(request, r, redis_url, tmp_path, procs):
    made = []

    def make(**env):
        made.append(World(r, redis_url, tmp_path, procs, request.param, **env))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_the_stream_deleted_under_a_running_bridge_is_survived(world):
    world.open(1)
    world.core.wait_processed(1)
    for times, how in enumerate(("delete", "flushdb"), 1):
        wait_for(lambda: waiting_idle(world.r), 20, message="the bridge blocked on the stream")
        if how == "delete":
            world.r.delete(names.STREAM)
        else:
            world.r.flushdb()
        wait_for(lambda: world.bridge.output().count("making them again") >= times, 20,  # noqa: B023
                 message="the bridge noticing the stream is gone")
        world.open(1 + times)
    world.core.wait_processed(3, timeout=ARRIVAL)
    assert world.bridge.popen.poll() is None
    assert "Traceback" not in world.bridge.output()
    world.assert_nothing_duplicated()


def test_klr_umn_xpub_is_honoured_by_chem_proxy(r, redis_url, tmp_path, procs):
    xsub, xpub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = service_env(redis_url, tmp_path, KLR_UMN_XSUB=xsub, KLR_UMN_XPUB=xpub,
                      KLOROS_BUDGET_KNOWLEDGE="0")
    proxy = start_proxy(env, tmp_path, procs)
    assert f"subscribers -> {xpub}" in proxy.output()
    core = CuriosityCoreLike(xpub, tmp_path / "processed_ids")
    start_bridge(env, tmp_path, procs)
    try:
        Publisher(r).sync(names.KNOWLEDGE, "repo", "docs/1.md", [question(1)])
        assert core.wait_processed(1)[0]["facts"]["question_id"] == question(1).id
    finally:
        core.close()
