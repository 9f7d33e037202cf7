"""Memory of the process that writes the state snapshot, and of one that restores it.

    .venv/bin/python bench/snapshot_memory.py [--files N] [--writes K]

Facts come from the real file detectors over a generated tree of N files (default
10,000; bench/_trees.py), written into a private ``redis-server`` by
``RedisIndex.update`` as the workers write them, with a seen entry per file and an
open question per tenth file.  Then a fresh Python process (nothing else raised its
heap) imports the snapshot module, writes the snapshot K times (default 8) as the
watcher does every 5 minutes, and reports its PSS (``/proc/self/smaps_rollup``) before,
after the first write and after the last, and its peak RSS (``VmHWM``); a second
fresh process restores the snapshot into the emptied Redis and reports the same.
Run it under another checkout (``PYTHONPATH=OTHER/``) to compare two versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _measure import machine, table
from _measure import workdir as make_workdir
from _trees import generate_tree
from index_memory import extract, write_updates

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client

FILES = 10_000
WRITES = 8
ROOT = "gen"


def pss_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    """Peak RSS since exec (VmHWM; ru_maxrss would start at the parent's size at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(url: str, path: str, mode: str, writes: int) -> None:
    """In a fresh process: write ``writes`` times, or restore once; print a JSON line."""
    from kloros_tasks.state import snapshot

    client = redis_client(url)
    client.ping()
    out = {"before": pss_mib(), "peak_before": peak_mib(), "module": snapshot.__file__}
    started = time.perf_counter()
    if mode == "write":
        for n in range(writes):
            snapshot.write_snapshot(client, path)
            if n == 0:
                out["first"] = pss_mib()
        out["seconds_each"] = (time.perf_counter() - started) / writes
    else:
        client.flushall()
        out["restored"] = snapshot.restore_snapshot(client, path)
        out["seconds_each"] = time.perf_counter() - started
    out["after"], out["peak"] = pss_mib(), peak_mib()
    print(json.dumps(out))


def run_child(url: str, path: Path, mode: str, writes: int) -> dict:
    argv = [sys.executable, __file__, "--child", url, str(path), mode, str(writes)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def fill(client, tree: Path) -> int:
    routed, facts = extract(tree)
    write_updates(client, ROOT, facts)
    digests = {rel: f.data["_sha256"] for files in facts.values() for rel, f in files.items()}
    client.hset(names.seen(ROOT), mapping={rel: f"{sha} 1 2" for rel, sha in digests.items()})
    for n, rel in enumerate(sorted(digests)[::10]):
        qid = f"knowledge.bench.{n:08x}"
        client.hset(names.LEDGER, qid, json.dumps({"facts": {"question_id": qid,
                                                             "metadata": {"paths": [rel]}}}))
        client.sadd(names.owned(names.KNOWLEDGE, ROOT, rel), qid)
    return routed


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--writes", type=int, default=WRITES)
    args = parser.parse_args()
    print(f"# snapshot memory: generated {args.files} files, {args.writes} writes")
    print(f"machine: {machine()}\n")
    with make_workdir() as work:
        tree = work / ROOT
        generate_tree(tree, args.files)
        server = EmbeddedRedis(work / "redis", persist=False).start()
        try:
            client = redis_client(server.url)
            routed = fill(client, tree)
            path = work / "state" / "snapshot.json"
            wrote = run_child(server.url, path, "write", args.writes)
            restored = run_child(server.url, path, "restore", 1)
        finally:
            server.stop()
        size = path.stat().st_size / 2**20
    print(f"module: {wrote['module']}; {routed} files routed; snapshot {size:.1f} MiB; "
          f"write {wrote['seconds_each']:.2f} s each, restore {restored['seconds_each']:.2f} s")
    rows = [["write", f"{wrote['before']:.1f}", f"{wrote['first']:.1f}", f"{wrote['after']:.1f}",
             f"{wrote['peak_before']:.1f}", f"{wrote['peak']:.1f}"],
            ["restore", f"{restored['before']:.1f}", "", f"{restored['after']:.1f}",
             f"{restored['peak_before']:.1f}", f"{restored['peak']:.1f}"]]
    print(table(["process", "PSS MiB before", "after the first", "after the last",
                 "peak RSS MiB before", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
