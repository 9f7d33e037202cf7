"""Faults inside the workers, with real processes (a private redis-server, real prefork
workers, a real watcher): a document of 90,000 links, pool children killed again and
again during a burst, a task that raises, a task past the hard memory limit, and a
cold scan sent slower than the workers drain it.

The world (tree, persistent Redis, processes) is test_faults.py's, made by the
make_world fixture of conftest.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from procs import service_env, wait_for
from test_faults import (
    KNOWLEDGE,
    ROOT,
    World,
    children_of,
    good_files_go_on,
    parked,
    put,
    settle,
    write_docs,
)

from kloros_tasks import names
from kloros_tasks.celery_app import HARD_MEMORY_FACTOR
from kloros_tasks.settings import from_env
from kloros_tasks.watch.producer import Watcher
from kloros_tasks.watch.tree import read_file

pytestmark = [pytest.mark.fault, pytest.mark.integration]


def scan_ids(world: World, *detectors: str) -> set[str]:
    """The question ids ``kloros-tasks scan`` asks about the same tree (the knowledge
    detector's, unless ``detectors`` are named)."""
    chosen = [arg for d in detectors or (KNOWLEDGE,) for arg in ("--detector", d)]
    out = subprocess.run(
        [sys.executable, "-m", "kloros_tasks.cli", "scan", str(world.tree), *chosen,
         "--format", "jsonl"], env=service_env(world.url, world.state),
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return {json.loads(line)["facts"]["question_id"] for line in out.stdout.splitlines()}


def open_ids(world: World) -> set[str]:
    return {k.decode() for k in world.r.hkeys(names.LEDGER)}


def status_json(world: World) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "kloros_tasks.cli", "status", "--json"],
                         env=service_env(world.url, world.state), capture_output=True,
                         text=True, timeout=60, check=False)
    return out.returncode, json.loads(out.stdout)


# --- 1. a document of 90,000 distinct links -----------------------------------------------

def test_a_document_of_ninety_thousand_links_is_skipped_and_redis_never_blocks(make_world):
    # Extracting the page takes seconds on a loaded machine: the time limit is not what
    # is tested here, so it is far from the soft limit of the other fault tests.
    world = make_world(KLOROS_MAX_FILE_BYTES="2000000", KLOROS_TASK_TIME_LIMIT="60",
                       KLOROS_VISIBILITY_TIMEOUT="120")
    # Any command (a script above all) running this long would make Redis answer BUSY.
    world.r.config_set("slowlog-log-slower-than", 2_000_000)
    world.r.slowlog_reset()
    worker, _ = world.start()
    put(world.tree / "links.md", "".join(f"[](d/{i}.md)\n" for i in range(90_000)))
    key = f"{KNOWLEDGE}:{ROOT}:links.md"
    reason = wait_for(lambda: world.r.hget(names.SKIPPED, key), 120, message="the skip line")
    assert b"too many facts" in reason
    good_files_go_on(world, worker, "links.md")
    assert world.r.slowlog_get() == []
    assert "BUSY" not in worker.output() and "Traceback" not in worker.output()


# --- 2. pool children killed again and again during a burst --------------------------------

BURST_FILES = 500
KILLS = 4


def linked_notes(tree: Path, count: int) -> None:
    """Notes of which every third links to the next: two thirds own a question."""
    directory = tree / "docs"
    directory.mkdir()
    for i in range(count):
        link = f"\n[next](n{i + 1:05d}.md)\n" if i % 3 == 0 and i + 1 < count else ""
        (directory / f"n{i:05d}.md").write_text(f"# Note {i}\n{link}")


def test_children_killed_again_and_again_in_a_burst_lose_no_question(make_world):
    # Many deliveries allowed: a task may be hit more than once, never parked for it.
    world = make_world(KLOROS_MAX_DELIVERIES="20")
    worker, _ = world.start(concurrency=2)
    linked_notes(world.tree, BURST_FILES)
    rng, kills = random.Random(13), 0
    wait_for(lambda: world.r.llen(KNOWLEDGE) or world.analysed(), 30,
             message="the burst under way")
    while kills < KILLS and not world.all_analysed():
        children = children_of(worker.popen.pid)
        if children:
            os.kill(rng.choice(children), signal.SIGKILL)
            kills += 1
        time.sleep(rng.uniform(0.2, 1.0))
    try:
        settle(world, [worker], 180, quiet=15)
    except AssertionError:
        print("DIAG llen", world.r.llen(KNOWLEDGE), "unacked", world.r.hlen("unacked"),
              "deferred", world.r.scard(names.deferred(KNOWLEDGE, ROOT)),
              "burst", world.r.get(names.burst(ROOT)), "analysed", len(world.analysed()),
              "kills", kills, "dead", world.r.llen(names.DEADLETTER))
        print(worker.output()[-8000:])
        raise
    wait_for(world.all_analysed, 60, message="every note analysed and judged")
    assert kills >= 1
    assert world.r.llen(names.DEADLETTER) == 0
    assert open_ids(world) == scan_ids(world)
    assert set(world.opened().values()) == {1}


# --- 3. a task that raises --------------------------------------------------------------------

def test_a_task_that_raises_is_parked_with_its_file_and_status_says_so(make_world):
    world = make_world()
    worker, _ = world.start()
    # Stored facts that do not decompress: reading them raises inside the task.
    world.r.hset(names.facts(KNOWLEDGE, ROOT), "broken.md", b"7:not zlib at all")
    (world.tree / "broken.md").write_text("# Broken\n")
    wait_for(lambda: parked(world), 30, message="the task parked")
    (entry,) = parked(world)
    assert entry["file"] == f"{ROOT}:broken.md" and entry["detector"] == KNOWLEDGE
    assert entry["exception"].startswith("error: Error -3 while decompressing")
    assert entry["deliveries"] == 1
    assert f"parked in {names.DEADLETTER}" in worker.output()
    assert f"({ROOT}:broken.md)" in worker.output()
    code, report = status_json(world)
    assert code == 1 and report["deadletter"] == 1
    assert any(names.DEADLETTER in p and f"{ROOT}:broken.md" in p for p in report["problems"])
    world.r.hdel(names.facts(KNOWLEDGE, ROOT), "broken.md")
    good_files_go_on(world, worker, "broken.md")


# --- 8. the hard memory limit ------------------------------------------------------------------

def test_a_task_past_the_hard_memory_limit_is_parked_naming_its_file(make_world):
    soft_mb = 32
    world = make_world(KLOROS_WORKER_MAX_MEMORY_MB=str(soft_mb), KLOROS_TASK_TIME_LIMIT="60",
                       KLOROS_VISIBILITY_TIMEOUT="120",
                       KLOROS_MAX_FILE_BYTES="8000000")
    worker = world.worker()
    (child,) = children_of(worker.popen.pid)
    limits = Path(f"/proc/{child}/limits").read_text().splitlines()
    (line,) = [lim for lim in limits if lim.startswith("Max data size")]
    assert int(line.split()[3]) >= HARD_MEMORY_FACTOR * soft_mb * 1024 * 1024
    world.watcher()
    # 300,000 links: extracting them needs hundreds of MB, past 4 x 32 MB.
    put(world.tree / "heavy.md", "".join(f"[s](m/{i}.md)\n" for i in range(300_000)))
    wait_for(lambda: parked(world), 60, message="the task parked")
    (entry,) = parked(world)
    assert entry["file"] == f"{ROOT}:heavy.md"
    assert entry["exception"].startswith("MemoryError"), entry
    assert entry["deliveries"] == 1  # parked at once: no crash loop
    good_files_go_on(world, worker, "heavy.md")


# --- 7. a cold scan sent slower than the workers drain it --------------------------------------

NOTES = 60


def test_a_cold_scan_sent_slowly_publishes_no_question_it_resolves(make_world):
    world = make_world()
    write_docs(world.tree, NOTES)
    # Sent last (the scan goes in path order), the index links every note: a note judged
    # before it arrives would be "unindexed" until it does.
    (world.tree / "zindex.md").write_text("# Index\n\n" + "".join(
        f"- [n{i}](docs/n{i:05d}.md)\n" for i in range(NOTES)))
    worker = world.worker()
    settings = from_env(service_env(world.url, world.state))

    def slow_reader(path: str, limit: int) -> bytes:
        time.sleep(0.05)  # a producer slower than the worker: the queue runs dry
        return read_file(path, limit)

    watcher = Watcher(settings, [world.tree], reader=slow_reader)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        settle(world, [worker], 90)
    finally:
        stop.set()
        thread.join(30)
    assert world.analysed() == world.on_disk()
    resolved = [e for e in world.envelopes() if e["signal"] == names.CHANNEL_RESOLVED]
    assert resolved == []
    assert open_ids(world) == scan_ids(world) == set(world.opened())
    assert not world.r.exists(names.burst(ROOT))
