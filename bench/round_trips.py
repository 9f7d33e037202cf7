"""Redis round trips per analysed file, in process: the workers' own code path
(``analysis.handle_change`` per file or ``batch.handle_batch`` per batch, then
``analysis.settle``) against a private
``redis-server``, one detector at a time, broken down by command.

    .venv/bin/python bench/round_trips.py [--tree django|generated] [--files N]
                                          [--detectors D[,D...]] [--edits] [--batch]
                                          [--questions FILE] [--profile FILE]

Trees: ``django`` (the ``django/`` directory of the Django 5.2 sdist, from the bench
cache, else downloaded once) or ``generated`` (bench/_trees.py, ``--files`` files).
Each file routed to a detector is sent as the watcher sends it: its blob stored, its
root registered (the blob stores and the registration are not counted).  By default
the burst marker of the root is set, as while the watcher reconciles a tree, so each
change defers its evaluations and one ``settle`` at the end evaluates them: the cold
scan's path.  With ``--edits`` there is no burst and every change is evaluated at
once, as an edit at a time is.  With ``--batch`` the files go as batch tasks of
``BATCH_FILES`` (``batch.handle_batch``), as a reconciliation sends a cold scan in the
default layout.  ``--profile FILE`` writes a cProfile of the changes and the settle
(pstats; its CPU seconds are inflated by the profiler).  The Celery layer (broker,
task-level LLEN and deferred-root checks) is not part of it.

Counted on the client side: requests (each single command, pipeline or script call
sent on a connection is one round trip), labelled by what they carry (a script call
by the script's name); on the server side: commands, those run inside scripts
included (``INFO commandstats`` after ``CONFIG RESETSTAT``).  Both per file routed
to the detector.  CPU seconds of this process and of redis-server are printed beside
the wall time; on a loaded machine they compare better than wall time does.
``--questions FILE`` writes every envelope published, in order, without its
per-publication fields (JSON lines), so that two versions of the code can be shown to
publish the same questions.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import socket
import time
from collections import Counter
from pathlib import Path

import _corpora
import redis
from _measure import machine, table
from _measure import workdir as make_workdir
from _trees import generate_tree
from redis.connection import AbstractConnection

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import from_env
from kloros_tasks.state import index_order, index_scripts, publish
from kloros_tasks.state.publish import Publisher
from kloros_tasks.watch import filters
from kloros_tasks.watch.tree import read_file, walk_tree
from kloros_tasks.work import analysis, batch, blobs
from kloros_tasks.work.payload import BATCH_FILES, Change, batch_json
from kloros_tasks.work.registry import scan_detector

DETECTORS = (names.INTEGRATION, names.CAPABILITY, names.KNOWLEDGE)
FILES = 1_000
BLOB_TTL = 3600


class Counting:
    """Requests sent on any connection while ``on``, by label."""

    def __init__(self) -> None:
        self.on = False
        self.requests: Counter[str] = Counter()
        self.scripts = {hashlib.sha1(text.encode()).hexdigest(): name for name, text in (
            ("index update", index_scripts.UPDATE_SCRIPT),
            ("index batch update", index_scripts.BATCH_SCRIPT),
            ("index lookup", index_scripts.LOOKUP_SCRIPT),
            ("index first holders", index_order.FIRST_SCRIPT),
            ("ledger sync", publish._SYNC),
            ("lock acquire", redis.lock.Lock.LUA_ACQUIRE_SCRIPT if hasattr(
                redis.lock.Lock, "LUA_ACQUIRE_SCRIPT") else ""),
            ("lock release", redis.lock.Lock.LUA_RELEASE_SCRIPT),
            ("lock extend", redis.lock.Lock.LUA_EXTEND_SCRIPT),
            ("lock reacquire", redis.lock.Lock.LUA_REACQUIRE_SCRIPT),
        ) if text}
        plain = AbstractConnection.send_packed_command
        counting = self

        def send(conn, command, check_health=True):
            if counting.on:
                counting.requests[counting.label(command)] += 1
            return plain(conn, command, check_health)

        AbstractConnection.send_packed_command = send

    def label(self, packed) -> str:
        data = packed.encode() if isinstance(packed, str) else b"".join(
            p if isinstance(p, bytes) else bytes(p) for p in
            ([packed] if isinstance(packed, bytes | memoryview) else packed))
        found, at = [], 0
        while at < len(data) and data[at:at + 1] == b"*":
            end = data.index(b"\r\n", at)
            count, at = int(data[at + 1:end]), end + 2
            args = []
            for _ in range(count):
                end = data.index(b"\r\n", at)
                size = int(data[at + 1:end])
                args.append(data[end + 2:end + 2 + size])
                at = end + 2 + size + 2
            name = args[0].decode().upper()
            if name == "EVALSHA":
                name = f"EVALSHA {self.scripts.get(args[1].decode(), '?')}"
            found.append(name)
        if len(found) == 1:
            return found[0]
        # Each command once: a pipeline of 3 or 30 HEXISTS is one kind of request.
        return "pipeline " + " ".join(dict.fromkeys(n for n in found if n not in ("MULTI", "EXEC")))


def command_stats(client) -> Counter[str]:
    return Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"])
                    for k, v in client.info("commandstats").items()})


def routed(root: Path, detector: str) -> list[str]:
    return sorted(rel for rel, _ in walk_tree(str(root))
                  if detector in filters.should_enqueue(rel))


def run(client, counting: Counting, root: Path, detector_name: str, edits: bool,
        batched: bool = False, profile=None) -> dict:
    """Send every routed file of ``root`` to ``detector_name``; the counts."""
    settings = from_env({})
    detector = scan_detector(detector_name, settings, root)
    name = filters.root_name(str(root))
    host = socket.gethostname()
    client.flushall()
    client.hset(names.ROOTS, name, json.dumps({"path": str(root), "host": host}))
    files = routed(root, detector_name)
    payloads, changes_ = [], []
    for rel in files:
        raw = read_file(str(root / rel), settings.max_file_bytes + 1)
        sha = hashlib.sha256(raw).hexdigest()
        blobs.store(client, sha, raw, refs=1, ttl=BLOB_TTL)
        changes_.append(Change(name, rel, "modified", sha, ts=1.0))
        payloads.append(changes_[-1].to_json())
    if batched:  # as a reconciliation sends them: BATCH_FILES changes a task
        payloads = [batch_json(name, changes_[i:i + BATCH_FILES])
                    for i in range(0, len(changes_), BATCH_FILES)]
    handle = batch.handle_batch if batched else analysis.handle_change
    if not edits:
        client.set(names.burst(name), 1)
    ctx = analysis.Context(client, Publisher(client, host=host), settings.max_file_bytes)
    client.config_resetstat()
    counting.requests.clear()
    redis_cpu, cpu = _redis_cpu(client), time.process_time()
    counting.on = True
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    outcomes = Counter(handle(ctx, detector, p) for p in payloads)
    changes = time.perf_counter() - started
    phase = Counter(counting.requests)
    if not edits:
        client.delete(names.burst(name))
        analysis.settle(ctx, detector, name, budget=float("inf"))
    if profile is not None:
        profile.disable()
    seconds = time.perf_counter() - started
    counting.on = False
    cpu, redis_cpu = time.process_time() - cpu, _redis_cpu(client) - redis_cpu
    stats = command_stats(client)
    stats.pop("CONFIG", None)
    stats.pop("INFO", None)
    envelopes = [json.loads(fields[names.STREAM_FIELD.encode()])
                 for _id, fields in client.xrange(names.STREAM)]
    return {"files": len(files), "outcomes": outcomes, "envelopes": envelopes,
            "requests": Counter(counting.requests),
            "changes": phase, "commands": stats, "seconds": seconds, "change_s": changes,
            "cpu": cpu, "redis_cpu": redis_cpu,
            "questions": client.xlen(names.STREAM)}


def report(detector: str, r: dict) -> None:
    n = r["files"] or 1
    requests, commands = sum(r["requests"].values()), sum(r["commands"].values())
    scripts = sum(v for k, v in r["requests"].items() if k.startswith("EVALSHA"))
    print(f"\n## {detector}: {r['files']} files, {dict(r['outcomes'])}, "
          f"{r['questions']} envelopes, {r['seconds']:.1f} s "
          f"(changes {r['change_s']:.1f} s); CPU s: this process {r['cpu']:.1f}, "
          f"redis-server {r['redis_cpu']:.1f}; load {load()}\n")
    print(table(["per file", "requests", "commands", "script calls"],
                [["all", f"{requests / n:.1f}", f"{commands / n:.1f}", f"{scripts / n:.1f}"],
                 ["changes only", f"{sum(r['changes'].values()) / n:.1f}", "", ""]]))
    print()
    print(table(["request", "per file", "of which in changes"],
                [[k, f"{v / n:.2f}", f"{r['changes'][k] / n:.2f}"]
                 for k, v in r["requests"].most_common()]))
    print()
    print(table(["command (server)", "per file"],
                [[k, f"{v / n:.2f}"] for k, v in r["commands"].most_common(15)]))


def _redis_cpu(client) -> float:
    """CPU seconds redis-server has used so far (user + system, all its threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", choices=("django", "generated"), default="django")
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--edits", action="store_true",
                        help="no burst: evaluate every change at once")
    parser.add_argument("--batch", action="store_true",
                        help=f"send the files as batch tasks of {BATCH_FILES}, as a"
                             " reconciliation does (the default layout's cold scan)")
    parser.add_argument("--questions", type=Path, help="write the envelopes published here")
    parser.add_argument("--profile", type=Path,
                        help="write a cProfile of the analysis and settle here (pstats)")
    args = parser.parse_args()
    published = []
    profile = cProfile.Profile() if args.profile else None
    print(f"# Redis round trips per file, in process ({args.tree}, "
          f"{'one edit at a time' if args.edits else 'cold scan: burst, then settle'}"
          f"{', batch tasks' if args.batch else ''})")
    print(f"machine: {machine()}")
    counting = Counting()
    with make_workdir() as work:
        if args.tree == "django":
            root = _corpora.fetch(_corpora.CORPORA["django"]) / "django"
        else:
            root = work / "tree"
            generate_tree(root, args.files)
        server = EmbeddedRedis(work / "redis", persist=False).start()
        client = redis_client(server.url, socket_timeout=None)
        try:
            for detector in args.detectors.split(","):
                result = run(client, counting, root, detector, args.edits, args.batch,
                             profile)
                report(detector, result)
                published += [_comparable(e) for e in result["envelopes"]]
        finally:
            client.close()
            server.stop()
    if profile is not None:
        profile.dump_stats(args.profile)
    if args.questions:
        args.questions.write_text("".join(json.dumps(e, sort_keys=True) + "\n"
                                          for e in published))


def _comparable(envelope: dict) -> dict:
    """An envelope without what differs between two publications of the same question."""
    facts = {k: v for k, v in envelope["facts"].items()
             if k not in ("timestamp", "opened_incident_id")}
    facts["metadata"] = {k: v for k, v in facts.get("metadata", {}).items()
                         if k not in ("host", "root")}
    return {"signal": envelope["signal"], "facts": facts}


if __name__ == "__main__":
    main()
