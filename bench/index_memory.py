"""Redis memory of the cross-file index, in process: the layout RedisIndex writes
against the one it replaced (one SET per value, plain JSON facts).

    .venv/bin/python bench/index_memory.py [--files N [N ...]] [--no-stdlib]
                                           [--layout old|updates|restore|all]

Facts come from the real file detectors (knowledge, integration, capability) over a
generated tree of N files (bench/_trees.py; default 1,000) and over a copy of this
Python's standard library, with the ``_sha256`` a worker records.  Each layout is
written into an emptied private ``redis-server``:

* ``old``: one SET per (detector, root, relation, value) and the facts as plain JSON,
  as the index was stored before ``kloros:ix:*`` (re-created here, for reference);
* ``updates``: ``RedisIndex.update`` once per file, as the workers write it;
* ``restore``: ``index.index_writes``, as a snapshot restore writes it.

Reported: ``used_memory`` after minus before, keys, bytes per file of the tree, the
seconds the writes took, and the share of each key family (``MEMORY USAGE`` of every
key), with the bucket hashes that left the compact listpack encoding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from _measure import machine, table
from _measure import workdir as make_workdir
from _trees import copy_stdlib, generate_tree

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.settings import from_env
from kloros_tasks.state.index import RedisIndex, index_writes
from kloros_tasks.watch import filters
from kloros_tasks.watch.tree import read_file, walk_tree
from kloros_tasks.work import engine
from kloros_tasks.work.registry import scan_detector

FILES = 1_000
DETECTORS = (names.KNOWLEDGE, names.INTEGRATION, names.CAPABILITY)
LAYOUTS = ("old", "updates", "restore")
OLD_INDEX_KEY = "kloros:idx:{}:{}:{}:{}"  # the replaced layout: detector, root, relation, value
BATCH = 1000


def extract(root: Path) -> tuple[int, dict[str, dict[str, FileFacts]]]:
    """(files routed to some detector, detector -> relpath -> facts) as workers store them."""
    settings = from_env({})
    routed = [rel for rel, _ in walk_tree(str(root)) if filters.should_enqueue(rel)]
    out: dict[str, dict[str, FileFacts]] = {}
    for name in DETECTORS:
        detector, found = scan_detector(name, settings), {}
        for rel in sorted(r for r in routed if name in filters.should_enqueue(r)):
            try:
                raw = read_file(str(root / rel), settings.max_file_bytes + 1)
                facts = detector.extract(rel, engine.decode_source(rel, raw))
            except (OSError, engine.NotText):
                continue
            if not facts.error:
                digest = hashlib.sha256(raw).hexdigest()
                found[rel] = replace(facts, data={**facts.data, "_sha256": digest})
        out[name] = found
    return len(routed), out


def write_old(client, root: str, facts: dict[str, dict[str, FileFacts]]) -> None:
    pipe = client.pipeline(transaction=False)
    for detector, files in facts.items():
        for n, (path, f) in enumerate(files.items()):
            pipe.hset(names.facts(detector, root), path,
                      json.dumps(f.to_json(), separators=(",", ":")))
            for relation, values in f.relations.items():
                for value in values:
                    pipe.sadd(OLD_INDEX_KEY.format(detector, root, relation, value), path)
            if n % 100 == 0:
                pipe.execute()
    pipe.execute()


def write_updates(client, root: str, facts: dict[str, dict[str, FileFacts]]) -> None:
    for detector, files in facts.items():
        index = RedisIndex(client, detector, root)
        for path, f in files.items():
            index.update(path, f)


def write_restore(client, root: str, facts: dict[str, dict[str, FileFacts]]) -> None:
    for detector, files in facts.items():
        texts = {p: json.dumps(f.to_json(), separators=(",", ":")) for p, f in files.items()}
        pipe = client.pipeline(transaction=False)
        for verb, key, value in index_writes(detector, root, texts):
            if verb == "hset":
                pipe.hset(key, mapping=value)
            else:
                pipe.set(key, value)
        pipe.execute()


WRITERS = {"old": write_old, "updates": write_updates, "restore": write_restore}


def family(key: str) -> str:
    if key.startswith("kloros:facts:"):
        return "facts (kloros:facts:*)"
    if key.startswith("kloros:idx:"):
        return "one SET per value (kloros:idx:*)"
    part = key.split(":")[4] if key.startswith("kloros:ix:") else ""
    return {"b": "buckets (kloros:ix:*:b:*)", "h": "spilled holder lists (kloros:ix:*:h:*)",
            "p": "id -> path (kloros:ix:*:p:*)", "meta": "addressing (kloros:ix:*:meta)",
            "o": "holders in path order (kloros:ix:*:o:*)"}.get(part, "other")


def families(client) -> tuple[dict[str, list[int]], int]:
    """family -> [keys, bytes]; and how many bucket hashes are not listpacks."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    keys = [k.decode(errors="replace") for k in client.scan_iter(count=BATCH)]
    not_listpack = 0
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        replies = pipe.execute()
        for key, used, encoding in zip(batch, replies[::2], replies[1::2], strict=True):
            found[family(key)][0] += 1
            found[family(key)][1] += used or 0
            not_listpack += family(key).startswith("buckets") and encoding != b"listpack"
    return dict(found), not_listpack


def measure(client, layout: str, root: str, facts) -> dict:
    client.flushall()
    before = client.info("memory")["used_memory"]
    started = time.perf_counter()
    WRITERS[layout](client, root, facts)
    seconds = time.perf_counter() - started
    used = client.info("memory")["used_memory"] - before
    found, not_listpack = families(client)
    return {"used": used, "keys": client.dbsize(), "seconds": seconds, "families": found,
            "not_listpack": not_listpack}


def report(label: str, files: int, results: dict[str, dict]) -> None:
    print(f"\n## {label}: {files} files\n")
    print(table(["layout", "used_memory MiB", "keys", "bytes per file", "write s",
                 "buckets not listpack"],
                [[layout, f"{r['used'] / 2**20:.2f}", r["keys"], f"{r['used'] / files:.0f}",
                  f"{r['seconds']:.1f}", r["not_listpack"]] for layout, r in results.items()]))
    rows = []
    for layout, r in results.items():
        for name, (keys, used) in sorted(r["families"].items(), key=lambda x: -x[1][1]):
            rows.append([layout, name, keys, f"{used / 2**20:.2f}", f"{used / files:.0f}"])
    print()
    print(table(["layout", "key family", "keys", "MiB (MEMORY USAGE)", "bytes per file"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[FILES],
                        help="generated tree sizes")
    parser.add_argument("--no-stdlib", action="store_true")
    parser.add_argument("--layout", choices=(*LAYOUTS, "all"), default="all")
    args = parser.parse_args()
    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    print("# Redis memory of the cross-file index (knowledge, integration, capability)")
    print(f"machine: {machine()}")
    with make_workdir() as work:
        server = EmbeddedRedis(work / "redis", persist=False).start()
        client = redis_client(server.url, socket_timeout=None)
        try:
            trees = [] if args.no_stdlib else [("stdlib copy", copy_stdlib(work))]
            for n in args.files:
                generate_tree(work / f"gen{n}", n)
                trees.append((f"generated {n}", work / f"gen{n}"))
            for label, root in trees:
                started = time.perf_counter()
                files, facts = extract(root)
                label += f" (facts extracted in {time.perf_counter() - started:.0f} s)"
                name = filters.root_name(str(root))
                report(label, files, {layout: measure(client, layout, name, facts)
                                      for layout in layouts})
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
