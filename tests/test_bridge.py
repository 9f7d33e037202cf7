"""The stream-to-ChemBus bridge, through a real proxy process and a plain pyzmq subscriber."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pytest
import zmq
from chembus_consumers import free_port, start_bridge, start_proxy, waiting_idle
from procs import service_env, wait_for

from kloros_tasks import names
from kloros_tasks.deliver.backlog import backlog_score
from kloros_tasks.deliver.bridge import Bridge
from kloros_tasks.deliver.run import IDLE_BLOCK_MS, run_bridge
from kloros_tasks.questions import Question, dumps, open_envelope
from kloros_tasks.settings import from_env
from kloros_tasks.state.publish import Publisher

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "kloros_tasks.cli"]


@pytest.fixture
def endpoints():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def chem_env(redis_url, tmp_path, endpoints):
    xsub, xpub = endpoints
    return service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub, KLOROS_CHEM_XPUB=xpub,
                       KLOROS_BUDGET_KNOWLEDGE="0", KLOROS_BUDGET_INTEGRATION="0")


class Subscriber:
    """CuriosityCore's side: a SUB socket on the proxy's XPUB endpoint."""

    def __init__(self, endpoint: str, prefix: bytes = b"curiosity.") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sock.connect(endpoint)
        self.received: list[tuple[str, dict]] = []

    def collect(self, count: int, timeout: float = 15.0) -> list[tuple[str, dict]]:
        def enough():
            while self.sock.poll(50):
                topic, body = self.sock.recv_multipart()
                self.received.append((topic.decode(), json.loads(body)))
            return len(self.received) >= count

        wait_for(enough, timeout, 0.01, f"{count} ChemBus messages")
        return self.received

    def quiet_for(self, seconds: float) -> None:
        if self.sock.poll(int(seconds * 1000)):
            topic, body = self.sock.recv_multipart()
            raise AssertionError(f"unexpected extra message {topic!r} {body[:200]!r}")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def question(n: int, severity: str = "low", detector: str = names.KNOWLEDGE) -> Question:
    return Question(detector=detector, rule="unindexed_doc", subject=f"doc{n}",
                    owner=f"docs/{n}.md", hypothesis=f"UNINDEXED_DOC: docs/{n}.md",
                    question=f"Should docs/{n}.md be linked?", severity=severity)


def publish(r, numbers, severity="low"):
    publisher = Publisher(r)
    for n in numbers:
        publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [question(n, severity)])


def stream_incidents(r) -> list[str]:
    return [json.loads(f[b"envelope"])["incident_id"] for _i, f in r.xrange(names.STREAM)]


def test_every_envelope_reaches_a_plain_subscriber_exactly_once(r, chem_env, endpoints,
                                                                 tmp_path, procs):
    proxy = start_proxy(chem_env, tmp_path, procs)
    sub = Subscriber(endpoints[1])
    bridge = start_bridge(chem_env, tmp_path, procs)
    try:
        publish(r, range(10))
        got = sub.collect(10)
        sub.quiet_for(0.5)
        assert [t for t, _ in got] == ["curiosity.knowledge_question"] * 10
        assert all(e["facts"]["question_id"] and e["facts"]["question"] for _, e in got)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_questions_wait_while_the_proxy_is_down_and_arrive_in_order(r, chem_env, endpoints,
                                                                     tmp_path, procs):
    proxy = start_proxy(chem_env, tmp_path, procs)
    sub = Subscriber(endpoints[1])
    bridge = start_bridge(chem_env, tmp_path, procs)
    try:
        publish(r, range(3))
        sub.collect(3)
        proxy.stop()
        publish(r, range(3, 8))
        wait_for(lambda: "went away" in bridge.output(), 30, message="the bridge noticing")
        proxy = start_proxy(chem_env, tmp_path, procs)
        got = sub.collect(8, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_a_killed_bridge_loses_nothing_and_resends_with_the_same_incident_ids(
        r, chem_env, endpoints, tmp_path, procs):
    proxy = start_proxy(chem_env, tmp_path, procs)
    bridge = start_bridge(chem_env, tmp_path, procs)  # no subscriber yet: nothing can go
    publish(r, range(12))
    # The bridge reads, cannot send (no subscriber), and parks what it read in Redis.
    wait_for(lambda: r.zcard(names.bridge_backlog(names.KNOWLEDGE)) >= 1, 30,
             message="entries parked for a subscriber")
    bridge.popen.send_signal(signal.SIGKILL)
    bridge.stop()
    sub = Subscriber(endpoints[1])
    bridge = start_bridge(chem_env, tmp_path, procs)
    try:
        got = sub.collect(12, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
        wait_for(lambda: r.xpending(names.STREAM, names.BRIDGE_GROUP)["pending"] == 0, 30,
                 message="everything acknowledged")
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_backlog_order_is_severity_then_age():
    def env(sev, ts):
        return {"facts": {"severity": sev, "timestamp": ts}}

    ordered = sorted([env("low", 1), env("high", 5), env("medium", 2), env("high", 3)],
                     key=backlog_score)
    assert [(e["facts"]["severity"], e["facts"]["timestamp"]) for e in ordered] == [
        ("high", 3), ("high", 5), ("medium", 2), ("low", 1)]


def test_over_budget_questions_wait_and_go_out_by_severity_and_resolutions_cancel_them(
        r, redis_url, endpoints, tmp_path, procs):
    xsub, xpub = endpoints
    env = {"KLOROS_REDIS_URL": redis_url, "KLOROS_CHEM_XSUB": xsub, "KLOROS_CHEM_XPUB": xpub,
           "KLOROS_BUDGET_KNOWLEDGE": "1/1"}
    settings = from_env(env)
    proxy = start_proxy(service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub,
                                    KLOROS_CHEM_XPUB=xpub), tmp_path, procs)
    sub = Subscriber(xpub)
    bridge = Bridge(settings)
    bridge.ensure_group()
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [bridge.step() for _ in iter(stop.is_set, True)])
    try:
        publisher = Publisher(r)
        for n, sev in enumerate(["low", "low", "medium", "high", "low"]):
            publisher.sync(names.KNOWLEDGE, "repo", f"docs/{n}.md", [question(n, sev)])
        publisher.sync(names.KNOWLEDGE, "repo", "docs/4.md", [])  # resolves a held one
        thread.start()
        got = sub.collect(4, timeout=20)
        sub.quiet_for(1.5)
        # Read in one batch, the burst goes out most severe first, one a second.
        assert [e["facts"]["metadata"]["paths"][0] for _, e in got] == [
            "docs/3.md", "docs/2.md", "docs/0.md", "docs/1.md"]
        assert r.hlen(names.BRIDGE_HELD) == 0
        assert r.hget(names.BRIDGE_CANCELLED, names.KNOWLEDGE) == b"1"
    finally:
        stop.set()
        thread.join(5)
        bridge.close(), proxy.stop(), sub.close()


def test_a_held_question_goes_out_when_its_budget_window_reopens(r, redis_url, endpoints,
                                                                   tmp_path, procs):
    xsub, xpub = endpoints
    env = service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub, KLOROS_CHEM_XPUB=xpub,
                      KLOROS_BUDGET_KNOWLEDGE="1/3")
    proxy = start_proxy(env, tmp_path, procs)
    sub = Subscriber(xpub)
    bridge = start_bridge(env, tmp_path, procs)
    try:
        publish(r, [0])
        sub.collect(1)
        publish(r, [1])  # over budget: held until the first send leaves the 3 s window
        got = sub.collect(2, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
        first, second = (e for _, e in got)
        sent_at = r.zscore(names.bridge_sent(names.KNOWLEDGE), second["incident_id"])
        assert sent_at >= first["ts"] + 3  # not before the first send left the window
        assert r.hlen(names.BRIDGE_HELD) == 0
        assert not r.exists(names.bridge_backlog(names.KNOWLEDGE))
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_a_backlog_parked_by_another_bridge_is_drained(r, redis_url, endpoints, tmp_path,
                                                       procs):
    xsub, xpub = endpoints
    env = service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub, KLOROS_CHEM_XPUB=xpub)
    proxy = start_proxy(env, tmp_path, procs)
    sub = Subscriber(xpub)
    bridge = start_bridge(env, tmp_path, procs)
    try:
        wait_for(lambda: waiting_idle(r), 20, message="the bridge waiting idle")
        # What a bridge on another host leaves when it holds a question and dies.
        envelope = open_envelope(question(7, "high"), root="repo", host="elsewhere",
                                 now=time.time())
        pipe = r.pipeline()
        pipe.hset(names.BRIDGE_HELD, envelope["facts"]["question_id"], dumps(envelope))
        pipe.zadd(names.bridge_backlog(names.KNOWLEDGE),
                  {envelope["facts"]["question_id"]: backlog_score(envelope)})
        pipe.execute()
        got = sub.collect(1, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == [envelope["incident_id"]]
        assert r.hlen(names.BRIDGE_HELD) == 0
        assert not r.exists(names.bridge_backlog(names.KNOWLEDGE))
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_an_idle_bridge_stops_at_once_on_sigterm(r, chem_env, tmp_path, procs):
    proxy = start_proxy(chem_env, tmp_path, procs)
    bridge = start_bridge(chem_env, tmp_path, procs)
    try:
        wait_for(lambda: waiting_idle(r, just_began=True), 30, message="a fresh idle wait")
        bridge.popen.send_signal(signal.SIGTERM)
        # Well before the idle wait it is in would have ended by itself.
        assert bridge.popen.wait(timeout=IDLE_BLOCK_MS / 1000 - 2) == 0
        assert "Traceback" not in bridge.output()
    finally:
        bridge.stop(), proxy.stop()


def test_run_bridge_in_a_thread_stops_on_its_stop_event_while_idle(r, redis_url, endpoints,
                                                                     tmp_path, procs):
    xsub, xpub = endpoints
    proxy = start_proxy(service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub,
                                    KLOROS_CHEM_XPUB=xpub), tmp_path, procs)
    settings = from_env({"KLOROS_REDIS_URL": redis_url, "KLOROS_CHEM_XSUB": xsub})
    stop = threading.Event()
    thread = threading.Thread(target=run_bridge, args=(settings, stop))
    thread.start()
    try:
        wait_for(lambda: waiting_idle(r, just_began=True), 30, message="a fresh idle wait")
        stop.set()
        thread.join(IDLE_BLOCK_MS / 1000 - 2)
        assert not thread.is_alive()
    finally:
        stop.set()
        thread.join()
        proxy.stop()
