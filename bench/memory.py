"""Memory: PSS of every process of ``kloros-tasks up``, idle and at the peak of a burst;
Redis ``used_memory`` once the tree is indexed.

    .venv/bin/python bench/memory.py [--quick] [--burst N] [--redis-files N]
                                     [--layout per-detector|single-worker|both]

Per layout: ``up`` (with the bridge, a chem-proxy and a ZeroMQ subscriber, so the
bridge really forwards) indexes a 100-file tree; the idle PSS of each process is
read from /proc/PID/smaps_rollup.  Then ``--burst`` new files (5,000; quick 1,000)
are written into the tree as fast as Python can (quick 500), while a thread samples every
process every 0.25 s; the peak is the largest sample until the pipeline is idle
again (a unit's peak is the largest sum of its parent and pool in one sample; since
2026-12-07 the single-worker layout runs the bridge and the watcher as threads of
``up``, so they have no row of their own there).  In
the per-detector layout more files are then added until ``--redis-files`` (10,000;
quick 500) are indexed, and Redis ``used_memory`` is reported with the share of
each key family (``MEMORY USAGE`` of every key).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict

from _measure import Listener, machine, mib, table
from _measure import workdir as make_workdir
from _pipeline import Up, pss_kib
from _trees import generate_tree

BASE = 100
FULL_BURST, QUICK_BURST = 5_000, 500
FULL_REDIS, QUICK_REDIS = 10_000, 500
SAMPLE_EVERY = 0.25
INDEX_ROWS = 12  # largest detector/part rows of the inverted index shown
FAMILIES = (  # key prefix -> family, first match wins
    ("kloros:facts:", "per-file facts (kloros:facts:*)"),
    ("kloros:ix:", "inverted indexes (kloros:ix:*)"),
    ("kloros:seen:", "watcher's seen hashes (kloros:seen:*)"),
    ("kloros:owned:", "open questions per file (kloros:owned:*)"),
    ("kloros:ledger", "ledger of open questions (kloros:ledger)"),
    ("kloros:questions", "question stream (kloros:questions)"),
    ("kloros:blob", "content blobs (kloros:blob*)"),
    ("kloros:bridge:", "bridge state (kloros:bridge:*)"),
    ("kloros:", "other kloros:* keys"),
)


def sample(up: Up) -> dict[str, int]:
    """PSS KiB per role (pool processes summed into their role) right now."""
    out: dict[str, int] = defaultdict(int)
    for proc in up.processes():
        out[proc.role] += pss_kib(proc.pid) or 0
    return dict(out)


def with_units(snapshot: dict[str, int]) -> dict[str, int]:
    """Add "<worker> unit" (parent + pool) and totals to one sample."""
    out = dict(snapshot)
    for role in list(snapshot):
        if role.startswith("worker") and not role.endswith(" pool"):
            out[f"{role} unit"] = snapshot[role] + snapshot.get(f"{role} pool", 0)
    python = [r for r in snapshot if r not in ("redis-server", "chem-proxy")]
    out["total of up's Python processes"] = sum(snapshot[r] for r in python)
    out["total with redis-server"] = out["total of up's Python processes"] + snapshot.get(
        "redis-server", 0)
    return out


class PeakSampler(threading.Thread):
    def __init__(self, up: Up) -> None:
        super().__init__(daemon=True)
        self.up, self.peak = up, {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_EVERY):
            for role, kib in with_units(sample(self.up)).items():
                self.peak[role] = max(self.peak.get(role, 0), kib)


INDEX_PARTS = {"b": "buckets", "h": "spilled holder lists", "p": "id -> path",
               "meta": "addressing"}


def _index_part(name: str) -> str | None:
    """"<detector> <part>" of an inverted-index key (kloros:ix:DET:ROOT:PART[:N]): the
    relations share their buckets, so the parts are what can be told apart."""
    parts = name.split(":")
    if not name.startswith("kloros:ix:") or len(parts) < 5:
        return None
    return f"{parts[2]} {INDEX_PARTS.get(parts[4], parts[4])}"


def key_families(client) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(family, keys, bytes) from MEMORY USAGE of every key; the same for the inverted
    index keys by detector and part."""
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    relations: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    batch: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(batch, pipe.execute(), strict=True):
            name = key.decode(errors="replace")
            family = next((f for p, f in FAMILIES if name.startswith(p)),
                          "Celery/kombu (queues, bindings, unacked)")
            sizes[family][0] += 1
            sizes[family][1] += used or 0
            part = _index_part(name)
            if part:
                relations[part][0] += 1
                relations[part][1] += used or 0
        batch.clear()

    for key in client.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush()
    flush()

    def ranked(found: dict[str, list[int]]) -> list[tuple[str, int, int]]:
        return sorted(((f, n, b) for f, (n, b) in found.items()), key=lambda x: -x[2])

    return ranked(sizes), ranked(relations)


def run_layout(single_worker: bool, burst: int, redis_files: int,
               concurrency: str | None = None) -> dict:
    with make_workdir() as work:
        root = work / "tree"
        generate_tree(root, BASE)
        up = Up(work, [root], single_worker=single_worker, chembus=True,
                concurrency=concurrency)
        listener = None
        try:
            up.start()
            listener = Listener(up.url, up.xpub)
            up.wait_idle(expect_seen=BASE)
            time.sleep(2)
            idle = with_units(sample(up))
            sampler = PeakSampler(up)
            sampler.start()
            started = time.perf_counter()
            generate_tree(root, burst, seed=2, prefix="burst")
            burst_idle = up.wait_idle(expect_seen=BASE + burst) - started
            sampler.done.set()
            sampler.join()
            result = {"idle": idle, "peak": sampler.peak, "burst_s": burst_idle}
            if redis_files:
                result["redis"] = redis_usage(up, root, BASE + burst, redis_files)
        finally:
            if listener is not None:
                listener.close()
            up.stop()
    return result


def redis_usage(up: Up, root, indexed: int, wanted: int) -> dict:
    if wanted > indexed:
        generate_tree(root, wanted - indexed, seed=3, prefix="more")
        indexed = wanted
        up.wait_idle(expect_seen=indexed)
    info = up.client.info("memory")
    families, relations = key_families(up.client)
    return {"files": indexed, "used": info["used_memory"], "families": families,
            "dataset": info.get("used_memory_dataset", 0), "relations": relations}


def print_results(results: dict[str, dict], burst: int) -> None:
    roles = sorted({r for res in results.values() for r in res["peak"]},
                   key=lambda r: (r.startswith("total"), r))
    headers, rows = ["process (PSS MiB)"], []
    for layout in results:
        headers += [f"{layout} idle", f"{layout} peak"]
    for role in roles:
        row = [role]
        for res in results.values():
            row += [mib(res["idle"].get(role)), mib(res["peak"].get(role))]
        rows.append(row)
    print(table(headers, rows))
    for layout, res in results.items():
        print(f"\n{layout}: the {burst}-file burst was indexed (idle) {res['burst_s']:.1f} s "
              "after its first write")
    for layout, res in results.items():
        if "redis" in res:
            r = res["redis"]
            print(f"\nRedis after indexing {r['files']} files ({layout}): used_memory "
                  f"{r['used'] / 2**20:.1f} MiB, dataset {r['dataset'] / 2**20:.1f} MiB\n")
            print(table(["key family", "keys", "MiB"],
                        [[f, n, f"{b / 2**20:.1f}"] for f, n, b in r["families"]]))
            print()
            print(table(["inverted index: detector part", "keys", "MiB", "bytes/key"],
                        [[f, n, f"{b / 2**20:.2f}", f"{b / max(n, 1):.0f}"]
                         for f, n, b in r["relations"][:INDEX_ROWS]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--burst", type=int)
    parser.add_argument("--redis-files", type=int)
    parser.add_argument("--layout", choices=("per-detector", "single-worker", "both"),
                        default="both")
    parser.add_argument("--concurrency", metavar="N|MAX,MIN",
                        help="up --concurrency (default: up's own)")
    args = parser.parse_args()
    burst = args.burst or (QUICK_BURST if args.quick else FULL_BURST)
    redis_files = args.redis_files or (QUICK_REDIS if args.quick else FULL_REDIS)
    print(f"# memory: {BASE}-file tree, then a {burst}-file burst"
          + (f", --concurrency {args.concurrency}" if args.concurrency else ""))
    print(f"machine: {machine()}\n")
    results = {}
    if args.layout in ("per-detector", "both"):
        results["per-detector"] = run_layout(False, burst, redis_files, args.concurrency)
    if args.layout in ("single-worker", "both"):
        results["single-worker"] = run_layout(True, burst, 0, args.concurrency)
    print_results(results, burst)
    print("\ntargets: each worker unit < 150 MB at peak; the whole single-worker layout "
          "< 200 MB; Redis < 50 MB for 10,000 files; original daemons: 50-80 MB each")


if __name__ == "__main__":
    main()
