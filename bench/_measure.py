"""Measuring and printing: edit-to-envelope latency, percentiles, tables, the machine.

``Listener`` timestamps every envelope the moment it arrives, in its own threads: one
on the Redis channels (``PSUBSCRIBE curiosity.*``) and, when an XPUB endpoint is
given, one on a ZeroMQ SUB socket behind the chem-proxy, subscribed to
``curiosity.``, exactly as CuriosityCore would be.  ``EditTimer`` writes the toggle
file and waits for the one envelope that edit must publish.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import queue
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from _trees import TOGGLE_PATH, toggle_text

from kloros_tasks import names
from kloros_tasks.connections import redis_client

REDIS, ZMQ = "redis", "zmq"


# --- where the benchmarks run -------------------------------------------------------------

@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A short /tmp directory (unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="klb-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def machine() -> str:
    """One line: date, CPUs, RAM, CPU model, Python and Redis versions, load."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    try:
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True, timeout=10).stdout.split()[2]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        redis_version = "?"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs "
            f"({cpu}), {mem_kib / 1024 / 1024:.1f} GiB RAM, Python {platform.python_version()}"
            f", Redis {redis_version.removeprefix('v=')}, load average {' '.join(load)}")


# --- numbers and tables ---------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(values: list[float]) -> list[str]:
    """p50, p95, p99, max, mean of seconds, as milliseconds."""
    if not values:
        return ["-"] * 5
    picks = [percentile(values, p) for p in (50, 95, 99, 100)] + [statistics.fmean(values)]
    return [f"{v * 1000:.1f}" for v in picks]


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


# --- envelopes as they arrive -----------------------------------------------------------------

class Listener:
    """Timestamps (perf_counter) every envelope on the Redis channels and on ChemBus."""

    def __init__(self, redis_url: str, xpub: str | None = None) -> None:
        self.queues = {REDIS: queue.SimpleQueue(), ZMQ: queue.SimpleQueue()}
        self._stop = threading.Event()
        self._client = redis_client(redis_url, socket_timeout=None)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(names.CHANNEL_PATTERN)
        self._threads = [threading.Thread(target=self._redis_loop, daemon=True)]
        self._ctx = None
        if xpub:
            self._ctx = zmq.Context()
            self._sub = self._ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"curiosity.")
            self._sub.connect(xpub)
            self._threads.append(threading.Thread(target=self._zmq_loop, daemon=True))
        for thread in self._threads:
            thread.start()

    def _redis_loop(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                self.queues[REDIS].put((time.perf_counter(), json.loads(message["data"])))

    def _zmq_loop(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(200):
                _topic, body = self._sub.recv_multipart()
                self.queues[ZMQ].put((time.perf_counter(), json.loads(body)))

    def drain(self, source: str) -> int:
        count = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.queues[source].get_nowait()
                count += 1
        return count

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        self._pubsub.close()
        self._client.close()
        if self._ctx is not None:
            self._sub.close(0)
            self._ctx.term()


@dataclass
class EditTimes:
    """Seconds from the write to the envelope, per source; edits that lost one; extras."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {REDIS: [], ZMQ: []})
    lost: dict[str, int] = field(default_factory=lambda: {REDIS: 0, ZMQ: 0})
    extra: int = 0


class EditTimer:
    """Toggles ``TOGGLE_PATH`` under ``root`` and times the one envelope of each edit."""

    def __init__(self, root: Path, listener: Listener, sources: tuple[str, ...],
                 timeout: float = 15.0) -> None:
        self.path = root / TOGGLE_PATH
        self.listener, self.sources, self.timeout = listener, sources, timeout
        self.state = 1 if "toggled_3(value):\n    return" in self.path.read_text() else 0
        self.qid: str | None = None

    def _wanted(self, env: dict, state: int) -> bool:
        facts = env.get("facts", {})
        meta = facts.get("metadata", {})
        if state == 1:
            ok = (env.get("signal") == names.CHANNEL[names.KNOWLEDGE]
                  and meta.get("rule") == "missing_docstrings"
                  and meta.get("paths") == [TOGGLE_PATH])
            if ok:  # a re-opening comes as "<stable id>.rN": the resolution names it
                self.qid = facts.get("question_id")
            return ok
        return env.get("signal") == names.CHANNEL_RESOLVED and facts.get("question_id") == \
            self.qid

    def _await(self, source: str, state: int, started: float, times: EditTimes) -> float | None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                at, env = self.listener.queues[source].get(timeout=0.1)
            except queue.Empty:
                continue
            if self._wanted(env, state):
                return at - started
            if source == REDIS:
                times.extra += 1
        return None

    def edit(self, times: EditTimes) -> None:
        """One edit, timed on every source; a source that misses it counts as lost."""
        state = 1 - self.state
        text = toggle_text(state)
        started = time.perf_counter()
        self.path.write_text(text)
        self.state = state
        for source in self.sources:
            took = self._await(source, state, started, times)
            if took is None:
                times.lost[source] += 1
            else:
                times.seconds[source].append(took)


def wait_quiet(up, timeout: float = 30.0) -> None:
    """Until no task is queued or running (one edit at a time)."""
    deadline = time.monotonic() + timeout
    while up.queued() and time.monotonic() < deadline:
        time.sleep(0.005)


def run_edits(up, timer: EditTimer, count: int, warmup: int = 2) -> EditTimes:
    """``warmup`` untimed edits (the first subscription, caches), then ``count`` timed."""
    scratch = EditTimes()
    for _ in range(warmup):
        wait_quiet(up)
        timer.edit(scratch)
    for source in timer.sources:
        timer.listener.drain(source)
    times = EditTimes()
    for _ in range(count):
        wait_quiet(up)
        timer.edit(times)
    return times
