"""``kloros-tasks up PATH...``: Redis (given or embedded), workers, beat, watcher; print questions.

Questions are read from the durable stream (from where it stood at start), so none is
missed between publication and printing.  Progress goes to stderr on a terminal only.

``kloros-tasks up`` begins in cli/upstart.py, which starts the embedded server before
this module (redis-py, the state modules) is imported.  A child that dies is
restarted with backoff (supervisor.Supervisor); its restarts are published under
``kloros:up`` for ``kloros-tasks status``.  The snapshot is restored here before the
children connect (they wait at the supervisor's gate until then); the watcher then
keeps it (and restores it again if Redis is emptied).
With the embedded server, its AOF is rewritten while nothing else runs: after a quiet
while at rest, and at the stop (``rewrite_aof_if_grown``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import redis

from kloros_tasks import names
from kloros_tasks.cli.embedded import REWRITE_WAIT, rewrite_aof_if_grown
from kloros_tasks.cli.render import render_text
from kloros_tasks.cli.supervisor import GaveUp, Supervisor, stop_all
from kloros_tasks.connections import forget_redis_url, record_redis_url, redact, redis_client
from kloros_tasks.settings import Settings, SettingsError
from kloros_tasks.state import snapshot
from kloros_tasks.watch import filters

PUBLISH_EVERY = 5.0  # seconds between refreshes of kloros:up
STATE_TTL = 30
# Compact envelopes spell the signal exactly so (questions.dumps): a cheap test.
RESOLVED_MARK = f'"signal":"{names.CHANNEL_RESOLVED}"'
# The embedded server's AOF is rewritten by ``up`` once the analysis has been idle this
# long and the file has grown past the first figure; at the stop, past the second.
REWRITE_AFTER_IDLE = 30.0
IDLE_REWRITE_GROWTH, STOP_REWRITE_GROWTH = 16 * 2**20, 2 * 2**20


def _stream_tail(client) -> str:
    last = client.xrevrange(names.STREAM, count=1)
    return last[0][0].decode() if last else "0-0"


class Progress:
    """What the analysis is doing, on stderr.

    On a terminal, one updating line while changes wait in the queues.  Everywhere
    (terminal, pipe or file), one plain line when the analysis goes idle, so a script
    can wait for it: once the watcher of this run has beaten (its initial
    reconciliation has sent everything), the queues are empty and a polling round
    brought nothing new."""

    def __init__(self, stream=sys.stderr, watcher_pid: int | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.watcher_pid = watcher_pid
        self.peak = 0
        self.busy = True  # the initial scan is ahead
        self.idle_since: float | None = None  # monotonic time the analysis went idle
        self.opened = self.resolved = 0  # publications printed during this run

    def _watcher_ready(self, client) -> bool:
        if self.watcher_pid is None:
            return True
        beat = client.get(names.WATCHER_HEARTBEAT)
        try:
            return beat is not None and json.loads(beat).get("pid") == self.watcher_pid
        except (ValueError, AttributeError):
            return False

    def update(self, client, opened: int = 0, resolved: int = 0) -> None:
        self.opened += opened
        self.resolved += resolved
        queued = sum(client.llen(q) for q in names.QUEUES)
        self.peak = max(self.peak, queued)
        if queued or opened or resolved:
            self.busy, self.idle_since = True, None
            if queued and self.tty:
                self.stream.write(f"\ranalysing: {self.peak - queued} of {self.peak} changes, "
                                  f"{self.opened} opened, {self.resolved} resolved ")
        elif self.busy and self._watcher_ready(client):
            self.stream.write(("\r" if self.tty else "")
                              + f"analysis idle: {self.counts(client)}"
                              + (" " * 10 if self.tty else "") + "\n")
            self.busy, self.peak, self.idle_since = False, 0, time.monotonic()
        self.stream.flush()

    def counts(self, client) -> str:
        """``N questions open; this run opened A and resolved B``."""
        return (f"{client.hlen(names.LEDGER)} questions open; this run opened {self.opened} "
                f"and resolved {self.resolved}")


def _print_new(client, last_id: str, fmt: str, out) -> tuple[str, int, int]:
    """Print what the stream got since ``last_id``: (new last id, opened, resolved)."""
    opened = resolved = 0
    try:
        batches = client.xread({names.STREAM: last_id}, count=500, block=1000)
    except redis.TimeoutError:
        return last_id, 0, 0
    for _stream, entries in batches or []:
        for entry_id, fields in entries:
            last_id = entry_id.decode()
            raw = fields.get(names.STREAM_FIELD.encode(), b"").decode()
            out.write((raw if fmt == "jsonl" else render_text(raw)) + "\n")
            if RESOLVED_MARK in raw:
                resolved += 1
            else:
                opened += 1
    out.flush()
    return last_id, opened, resolved


def check_reachable(url: str) -> None:
    """SettingsError naming KLOROS_REDIS_URL when the given Redis does not answer."""
    client = redis_client(url, socket_timeout=5, retries=0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise SettingsError(f"KLOROS_REDIS_URL (or --redis) {redact(url)}: redis does not "
                            f"answer ({exc})") from None
    finally:
        client.close()


def run_pipeline(settings: Settings, roots: list[Path], url: str, supervisor: Supervisor,
                 stop: threading.Event, *, embedded: bool = False, fmt: str = "text") -> int:
    """Run the pipeline on the Redis at ``url`` (it answers) until ``stop`` is set; returns
    the exit status: 0 stopped, 1 a child could not be kept running.

    ``supervisor``'s gated children were started already (cli/upstart.py) and wait for
    its gate, which opens once the snapshot is restored.  ``embedded``: ``url`` is the
    server this ``up`` started, whose AOF it may rewrite."""
    children = supervisor.children
    client = redis_client(url, socket_timeout=5)
    # Where this pipeline's Redis is, for `questions`, `status`, `env` and celery's own
    # commands started without KLOROS_REDIS_URL.
    record_redis_url(settings.state_dir, url)
    status = 0
    progress: Progress | None = None
    snapshot_path = snapshot.default_path(settings.state_dir)
    try:
        if snapshot.restore_snapshot(client, snapshot_path,
                                     [filters.root_name(str(root)) for root in roots]):
            print(f"restored open questions and the file index from {snapshot_path}",
                  file=sys.stderr)
        last_id = _stream_tail(client)
        open_count = client.hlen(names.LEDGER)
        if open_count:
            print(f"{open_count} questions already open (kloros-tasks questions --open)",
                  file=sys.stderr)
        if not stop.is_set():  # a stop during the start: the gated children never run
            supervisor.open_gate()
            print(f"started {', '.join(c.name for c in children)}; logs in "
                  f"{supervisor.log_dir}", file=sys.stderr)
        progress = Progress(watcher_pid=_watcher_pid(children))
        status = _loop(client, supervisor, stop, last_id, fmt, progress, compact=embedded)
    finally:
        stop_all(children)
        if progress is not None:
            _end_summary(client, progress)
        with contextlib.suppress(redis.RedisError):
            client.delete(names.UP_STATE)
            if embedded:  # nothing else runs now: a restart then loads a compact file
                rewrite_aof_if_grown(client, STOP_REWRITE_GROWTH, wait=REWRITE_WAIT)
        client.close()
        forget_redis_url(settings.state_dir, url)
    return status


def _end_summary(client, progress: Progress) -> None:
    """The last line of a run, plain, wherever stderr goes."""
    try:
        print(f"stopped: {progress.counts(client)}", file=sys.stderr)
    except redis.RedisError as exc:
        print(f"stopped: this run opened {progress.opened} and resolved {progress.resolved} "
              f"questions (redis unreachable: {exc})", file=sys.stderr)


def _watcher_pid(children) -> int | None:
    watcher = next((c for c in children if c.name == "watcher"), None)
    return watcher.proc.pid if watcher is not None and watcher.proc is not None else None


def publish_state(client, supervisor: Supervisor) -> None:
    """``kloros:up``: this supervisor and its children's restarts, for ``status``."""
    body = {"pid": os.getpid(), "host": socket.gethostname(), "ts": time.time(),
            "children": supervisor.state()}
    client.set(names.UP_STATE, json.dumps(body), ex=STATE_TTL)


def _compact_when_quiet(client, progress: Progress) -> None:
    """Rewrite the embedded server's AOF once per quiet spell: the analysis idle for
    REWRITE_AFTER_IDLE seconds, so that the fork does not copy the pages of a burst."""
    if (progress.idle_since is not None
            and time.monotonic() - progress.idle_since >= REWRITE_AFTER_IDLE):
        progress.idle_since = None  # until the next spell
        if rewrite_aof_if_grown(client, IDLE_REWRITE_GROWTH):
            print("kloros-tasks: compacting the embedded redis-server's append-only file",
                  file=sys.stderr)


def _loop(client, supervisor: Supervisor, stop: threading.Event, last_id: str, fmt: str,
          progress: Progress, compact: bool = False) -> int:
    next_publish = 0.0
    while not stop.is_set():
        try:
            supervisor.check()
        except GaveUp as exc:
            print(f"kloros-tasks: {exc}", file=sys.stderr)
            return 1
        try:
            if supervisor.changed or time.monotonic() >= next_publish:
                publish_state(client, supervisor)
                supervisor.changed, next_publish = False, time.monotonic() + PUBLISH_EVERY
                progress.watcher_pid = _watcher_pid(supervisor.children)  # a restart's
            last_id, opened, resolved = _print_new(client, last_id, fmt, sys.stdout)
            progress.update(client, opened, resolved)
            if compact:
                _compact_when_quiet(client, progress)
        except redis.RedisError as exc:
            # Unreachable, restarted, or BUSY with a long script: wait it out; the
            # children have their own retries.
            print(f"kloros-tasks: redis: {exc}; retrying", file=sys.stderr)
            stop.wait(1)
    return 0
