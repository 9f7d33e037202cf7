"""The stream-to-ChemBus bridge, through a real proxy process and a plain pyzmq subscriber."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading

import pytest
import zmq
from procs import Proc, service_env, wait_for

from kloros_tasks import names
from kloros_tasks.bridge import Bridge, backlog_score
from kloros_tasks.publish import Publisher
from kloros_tasks.questions import Question
from kloros_tasks.settings import from_env

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "kloros_tasks.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoints():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def chem_env(redis_url, tmp_path, endpoints):
    xsub, xpub = endpoints
    return service_env(redis_url, tmp_path, KLOROS_CHEM_XSUB=xsub, KLOROS_CHEM_XPUB=xpub,
                       KLOROS_BUDGET_KNOWLEDGE="0", KLOROS_BUDGET_INTEGRATION="0")


def start_proxy(env, tmp_path, procs) -> Proc:
    proc = procs.add(Proc(CLI + ["chem-proxy"], env, tmp_path / "proxy.log"))
    proc.wait_output("ChemBus proxy:", 20)
    return proc


def start_bridge(env, tmp_path, procs) -> Proc:
    proc = procs.add(Proc(CLI + ["bridge"], env, tmp_path / "bridge.log"))
    proc.wait_output("bridging", 20)
    return proc


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
        wait_for(lambda: "went away" in bridge.output(), 10, message="the bridge noticing")
        proxy = start_proxy(chem_env, tmp_path, procs)
        got = sub.collect(8, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
    finally:
        bridge.stop(), proxy.stop(), sub.close()


def test_a_killed_bridge_loses_nothing_and_resends_with_the_same_incident_ids(
        r, chem_env, endpoints, tmp_path, procs):
    proxy = start_proxy(chem_env, tmp_path, procs)
    bridge = start_bridge(chem_env, tmp_path, procs)  # no subscriber yet: everything stays pending
    publish(r, range(12))
    # The bridge reads, cannot send (no subscriber), and keeps what it read pending.
    wait_for(lambda: r.xpending(names.STREAM, names.BRIDGE_GROUP)["pending"] >= 1, 10,
             message="entries read but unacknowledged")
    bridge.popen.send_signal(signal.SIGKILL)
    bridge.stop()
    sub = Subscriber(endpoints[1])
    bridge = start_bridge(chem_env, tmp_path, procs)
    try:
        got = sub.collect(12, timeout=30)
        sub.quiet_for(0.5)
        assert [e["incident_id"] for _, e in got] == stream_incidents(r)
        wait_for(lambda: r.xpending(names.STREAM, names.BRIDGE_GROUP)["pending"] == 0, 10,
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
        assert [e["facts"]["metadata"]["paths"][0] for _, e in got] == [
            "docs/0.md", "docs/3.md", "docs/2.md", "docs/1.md"]
        assert r.hlen(names.BRIDGE_HELD) == 0
    finally:
        stop.set()
        thread.join(5)
        bridge.close(), proxy.stop(), sub.close()
