"""ChemBus consumers for tests: one that behaves like KLoROS's CuriosityCore, and a recorder.

Both are real ZeroMQ SUB sockets connected to a proxy's XPUB endpoint, each receiving
in its own thread (the socket never leaves it), as a KLoROS process would.

``CuriosityCoreLike`` does what CuriosityCore does with a message:
- it subscribes to the four ``curiosity.*_question`` topics and to nothing else;
- it drops a message whose ``incident_id`` it saw in the last 60 s (replay filter);
- it needs ``facts.question_id`` and ``facts.question`` (else the message is rejected);
- it records every question id it processed in a file and skips a known id forever,
  across restarts (a new instance given the same file remembers).

``Recorder`` subscribes to every topic (``""``) and keeps everything, in order.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import redis
import zmq
from procs import Proc, wait_for

from kloros_tasks import names
from kloros_tasks.connections import redis_client

QUESTION_TOPICS = ("curiosity.integration_question", "curiosity.capability_question",
                   "curiosity.knowledge_question", "curiosity.exploration_question")
REPLAY_WINDOW = 60.0
POLL_MS = 50
CLI = [sys.executable, "-m", "kloros_tasks.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(env, tmp_path, procs) -> Proc:
    proc = procs.add(Proc(CLI + ["chem-proxy"], env, tmp_path / "proxy.log"))
    proc.wait_output("ChemBus proxy:", 20)
    return proc


def start_bridge(env, tmp_path, procs) -> Proc:
    proc = procs.add(Proc(CLI + ["bridge"], env, tmp_path / "bridge.log"))
    proc.wait_output("bridging", 20)
    # "bridging" is logged just before the consumer group is made: tests read the group.
    client = redis_client(env["KLOROS_REDIS_URL"])
    try:
        wait_for(lambda: has_group(client), 20, message="the bridge's consumer group")
    finally:
        client.close()
    return proc


def has_group(r) -> bool:
    try:
        return any(g["name"] in (names.BRIDGE_GROUP, names.BRIDGE_GROUP.encode())
                   for g in r.xinfo_groups(names.STREAM))
    except redis.ResponseError:
        return False  # no stream yet


def waiting_idle(r, *, just_began: bool = False) -> bool:
    """A client (the bridge) is blocked in XREADGROUP; ``just_began``: for under a second."""
    return any(c["cmd"] == "xreadgroup" and "b" in c["flags"]
               and (not just_began or int(c["idle"]) == 0) for c in r.client_list())


class _Consumer:
    """A SUB socket read by its own thread; subclasses decide what a message means."""

    topics: tuple[str, ...] = ()

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.lock = threading.Lock()
        self.wire: list[tuple[str, dict]] = []  # every message that arrived, in order
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=type(self).__name__)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        for topic in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(POLL_MS):
                    continue
                frames = sock.recv_multipart()
                topic, body = frames[0].decode(), frames[-1]
                try:
                    envelope = json.loads(body)
                except ValueError:
                    envelope = {"unparsable": body.decode(errors="replace")}
                with self.lock:
                    self.wire.append((topic, envelope))
                    self.handle(topic, envelope)
        finally:
            sock.close(0)
            ctx.term()

    def handle(self, topic: str, envelope: dict) -> None:
        """Called for each message, under the lock."""

    def wait_until(self, condition, timeout: float = 30.0, message: str = "messages"):
        def check():
            with self.lock:
                return condition(self)

        return wait_for(check, timeout, 0.02, message)

    def incidents(self) -> list[str]:
        with self.lock:
            return [e.get("incident_id") for _t, e in self.wire]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class CuriosityCoreLike(_Consumer):
    """The four question topics; replay filter; a file of processed ids, never processed twice."""

    topics = QUESTION_TOPICS

    def __init__(self, endpoint: str, processed_file: Path, clock=time.monotonic) -> None:
        self.processed_file = Path(processed_file)
        self.clock = clock
        self.known: set[str] = set()
        if self.processed_file.exists():
            self.known = set(self.processed_file.read_text().split())
        self.recent: dict[str, float] = {}  # incident_id -> when seen
        self.processed: list[dict] = []  # envelopes investigated, in order
        self.replays_dropped = 0
        self.known_skipped: list[str] = []
        self.rejected: list[dict] = []
        super().__init__(endpoint)

    def handle(self, topic: str, envelope: dict) -> None:
        now = self.clock()
        self.recent = {i: t for i, t in self.recent.items() if now - t < REPLAY_WINDOW}
        incident = envelope.get("incident_id")
        if incident in self.recent:
            self.replays_dropped += 1
            return
        self.recent[incident] = now
        facts = envelope.get("facts")
        if not isinstance(facts, dict) or not facts.get("question_id") \
                or not facts.get("question"):
            self.rejected.append(envelope)
            return
        qid = facts["question_id"]
        if qid in self.known:
            self.known_skipped.append(qid)
            return
        self.known.add(qid)
        with self.processed_file.open("a") as out:
            out.write(qid + "\n")
        self.processed.append(envelope)

    def processed_ids(self) -> list[str]:
        with self.lock:
            return [e["facts"]["question_id"] for e in self.processed]

    def wait_processed(self, count: int, timeout: float = 30.0) -> list[dict]:
        self.wait_until(lambda c: len(c.processed) >= count, timeout,
                        f"{count} questions processed by the CuriosityCore-like consumer")
        with self.lock:
            return list(self.processed)


class Recorder(_Consumer):
    """Every topic, every message, in arrival order."""

    topics = ("",)

    def wait_count(self, count: int, timeout: float = 30.0) -> list[tuple[str, dict]]:
        self.wait_until(lambda c: len(c.wire) >= count, timeout, f"{count} recorded messages")
        with self.lock:
            return list(self.wire)
