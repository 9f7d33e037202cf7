"""What one live edit costs each detector's file task, in process: CPU, Redis round
trips and commands, Python function calls.

    .venv/bin/python bench/edit_cost.py [--edits N] [--files N] [--calls]

A generated tree (100 files) is indexed through ``analysis.handle_change`` against a
private ``redis-server``; then the toggle edit of latency.py is made ``--edits`` times
and each detector's task runs it as a worker would, through the Celery task itself
(``Task.apply``: the delivery counter, the detector lookup, the change, the check for
deferred roots), one detector after the other in the order the watcher sends them.
Per task: median wall and CPU milliseconds, requests (round trips: a pipeline or a
script call is one) and commands sent (a pipeline's each).  With ``--calls``, the
Python function calls per task as well (counted by cProfile in a second pass): unlike
time, they do not depend on the machine's load, so two versions of the code compare
on a busy machine.  Runs against checkouts from before the sub-package layout too.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import socket
import statistics
import time

from _measure import machine, table
from _measure import workdir as make_workdir
from _trees import TOGGLE_PATH, generate_tree, toggle_text
from redis.connection import AbstractConnection

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import from_env

try:
    from kloros_tasks.cli.embedded import EmbeddedRedis
    from kloros_tasks.watch import filters
    from kloros_tasks.watch.tree import read_file, walk_tree
    from kloros_tasks.work import blobs
    from kloros_tasks.work.payload import Change
except ImportError:  # a checkout from before the sub-package layout
    from kloros_tasks.embedded import EmbeddedRedis
    from kloros_tasks.payload import Change
    from kloros_tasks.tree import read_file, walk_tree

    from kloros_tasks import blobs, filters

DETECTORS = (names.CAPABILITY, names.INTEGRATION, names.KNOWLEDGE)  # the watcher's order


class Counting:
    """Requests and commands sent on any connection while ``on``."""

    def __init__(self) -> None:
        self.on, self.requests, self.commands = False, 0, 0
        plain, counting = AbstractConnection.send_packed_command, self

        def send(conn, command, check_health=True):
            if counting.on:
                counting.requests += 1
                data = command if isinstance(command, bytes | str) else b"".join(
                    bytes(p) for p in command)
                data = data.encode() if isinstance(data, str) else data
                # Each command starts a RESP array; MULTI and EXEC are not work.
                counting.commands += data.count(b"\r\n*") + data.startswith(b"*") \
                    - data.count(b"MULTI\r\n") - data.count(b"EXEC\r\n")
            return plain(conn, command, check_health)

        AbstractConnection.send_packed_command = send


def run(edits: int, files: int, calls: bool) -> dict:
    counting = Counting()
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, files)
        server = EmbeddedRedis(work / "redis", persist=False).start()
        os.environ["KLOROS_REDIS_URL"] = server.url
        try:
            from kloros_tasks.work import tasks  # noqa: PLC0415 - configured by the URL
        except ImportError:
            from kloros_tasks import tasks  # noqa: PLC0415
        client = redis_client(server.url, socket_timeout=None)
        try:
            return _measure(client, counting, tasks, root, edits, calls)
        finally:
            client.close()
            server.stop()


def _measure(client, counting: Counting, tasks, root, edits: int, calls: bool) -> dict:
    settings, host = from_env({}), socket.gethostname()
    name = filters.root_name(str(root))
    client.hset(names.ROOTS, name, json.dumps({"path": str(root), "host": host}))
    task = {d: tasks.app.tasks[names.TASK_ANALYZE[d]] for d in DETECTORS}
    stamp = [1.0]

    def change(rel: str, refs: int) -> dict:
        raw = read_file(str(root / rel), settings.max_file_bytes + 1)
        sha = hashlib.sha256(raw).hexdigest()
        blobs.store(client, sha, raw, refs=refs, ttl=3600)
        stamp[0] += 1
        return Change(name, rel, "modified", sha, ts=stamp[0]).to_json()

    for rel in sorted(rel for rel, _ in walk_tree(str(root))):  # index the tree
        routed = sorted(filters.should_enqueue(rel))
        payload = change(rel, len(routed))
        for detector in routed:
            task[detector].apply(args=[payload]).get()
    state = 1 if "toggled_3(value):\n    return" in (root / TOGGLE_PATH).read_text() else 0
    out = {d: {"wall": [], "cpu": [], "requests": [], "commands": [], "calls": []}
           for d in DETECTORS}
    for profiled in ((False, True) if calls else (False,)):
        for i in range(edits + 2):  # two untimed: the first connections, caches
            state = 1 - state
            (root / TOGGLE_PATH).write_text(toggle_text(state))
            payload = change(TOGGLE_PATH, len(DETECTORS))
            for detector in DETECTORS:
                profile = cProfile.Profile() if profiled else None
                counting.requests = counting.commands = 0
                counting.on = i >= 2
                wall, cpu = time.perf_counter(), time.process_time()
                if profile:
                    profile.enable()
                task[detector].apply(args=[payload]).get()
                if profile:
                    profile.disable()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                counting.on = False
                if i < 2:
                    continue
                row = out[detector]
                if profile:
                    row["calls"].append(pstats.Stats(profile).total_calls)
                else:
                    row["wall"].append(wall * 1000)
                    row["cpu"].append(cpu * 1000)
                    row["requests"].append(counting.requests)
                    row["commands"].append(counting.commands)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=60)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--calls", action="store_true",
                        help="count Python function calls per task too (a second pass)")
    args = parser.parse_args()
    print(f"# one edit's file tasks, in process: {args.edits} edits, {args.files}-file tree")
    print(f"machine: {machine()}\n")
    out = run(args.edits, args.files, args.calls)
    med = statistics.median
    rows = [[d, f"{med(r['wall']):.2f}", f"{med(r['cpu']):.2f}", f"{med(r['requests']):.1f}",
             f"{med(r['commands']):.1f}", f"{med(r['calls']):.0f}" if r["calls"] else ""]
            for d, r in out.items()]
    rows.append(["all three", *(f"{sum(med(r[k]) for r in out.values()):.{p}f}"
                                if all(r[k] for r in out.values()) else ""
                                for k, p in (("wall", 2), ("cpu", 2), ("requests", 1),
                                             ("commands", 1), ("calls", 0)))])
    print(table(["task", "wall ms", "CPU ms", "requests", "commands", "function calls"], rows))


if __name__ == "__main__":
    main()
