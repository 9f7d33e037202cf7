"""The state snapshot kept by ``kloros-tasks watch`` on its own (the systemd layout).

The watcher restores ``$KLOROS_STATE_DIR/snapshot.json`` into a Redis without file state
before its first reconciliation, merging it under questions an exploration scan opened
first; it writes the snapshot every SNAPSHOT_EVERY seconds and at shutdown.  Under
``kloros-tasks up`` its watcher keeps the snapshot just the same.  A Redis emptied under
a running watcher is noticed at its next heartbeat and restored at once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from procs import Proc, service_env, wait_for

from kloros_tasks import names
from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.cli.supervisor import plan
from kloros_tasks.connections import redis_client
from kloros_tasks.questions import Question
from kloros_tasks.routing import route
from kloros_tasks.settings import Settings
from kloros_tasks.state import snapshot
from kloros_tasks.state.index import facts_json
from kloros_tasks.state.publish import Publisher
from kloros_tasks.watch.producer import Watcher

KNOWLEDGE, EXPLORATION = names.KNOWLEDGE, names.EXPLORATION
ROOT = "tree"  # the watched directory's name, hence the root name in every key
NOTES = 5
HOST = "scan-host"


def note(i: int, version: int = 0) -> str:
    return f"# Note {i}\n\nVersion {version} of a note nobody links to.\n"


def make_tree(base: Path) -> Path:
    """Notes under docs/ (knowledge's questions), each unlinked one owning one question."""
    tree = base / ROOT
    (tree / "docs").mkdir(parents=True)
    for i in range(NOTES):
        (tree / "docs" / f"n{i}.md").write_text(note(i))
    (tree / "README.md").write_text("# Index\n\n[first](docs/n0.md)\n")
    return tree


def state_of(r, path: Path) -> dict[str, dict]:
    """The ledger, owned sets, seen hashes and facts Redis holds now, as a snapshot
    (written to ``path``) reads them, whatever the index's storage layout."""
    snapshot.write_snapshot(r, path)
    document = snapshot.load_snapshot(path)
    return {part: document[part] for part in ("ledger", "owned", "seen", "facts")}


def queued_paths(r) -> list[str]:
    """The paths of the knowledge tasks waiting in their queue."""
    paths = []
    for raw in r.lrange(KNOWLEDGE, 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        if "changes" in args[0]:  # a batch task
            paths += [c["path"] for c in args[0]["changes"]]
        else:
            paths.append(args[0]["path"])
    return paths


def start(procs, argv: list[str], redis_url: str, state: Path, log: Path,
          kill_at_teardown: bool = False, **extra: str) -> Proc:
    return procs.add(Proc(argv, service_env(redis_url, state, **extra), log,
                          kill_at_teardown=kill_at_teardown))


def start_watcher(procs, r, redis_url: str, argv: list[str], state: Path, log: Path,
                  **extra: str) -> Proc:
    """A watcher process, once its first reconciliation is done (its first heartbeat
    follows it)."""
    r.delete(names.WATCHER_HEARTBEAT)
    proc = start(procs, argv, redis_url, state, log, **extra)
    wait_for(lambda: proc.popen.poll() is None and r.exists(names.WATCHER_HEARTBEAT), 30,
             message="the watcher's heartbeat")
    return proc


def start_worker(procs, redis_url: str, state: Path, log: Path) -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "kloros_tasks.celery_app", "worker",
            # capability reads documents too (the variables they name are documented)
            "-Q", f"{KNOWLEDGE},{names.CAPABILITY}", "-n", "state-test@%h", "--pool", "prefork",
            "--concurrency", "1",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    # Registered before it is waited for.
    proc = start(procs, argv, redis_url, state, log, kill_at_teardown=True)
    proc.wait_output(" ready.")
    return proc


@pytest.mark.integration
def test_the_watcher_writes_the_snapshot_at_shutdown_and_restores_it_into_a_flushed_redis(
    procs, redis_url, r, tmp_path
):
    tree, state = make_tree(tmp_path), tmp_path / "state"
    watch = [sys.executable, "-m", "kloros_tasks.cli", "watch", str(tree)]
    start_worker(procs, redis_url, state, tmp_path / "worker.log")
    watcher = start_watcher(procs, r, redis_url, watch, state, tmp_path / "watcher1.log")
    wait_for(lambda: r.hlen(names.facts(KNOWLEDGE, ROOT)) == NOTES + 1 and r.llen(KNOWLEDGE) == 0
             and r.llen(names.CAPABILITY) == 0 and not r.hlen("unacked")
             and r.hlen(names.LEDGER) == NOTES - 1, 60, message="every file analysed")
    before = state_of(r, tmp_path / "before.json")

    assert watcher.stop() == 0  # SIGTERM
    written = snapshot.load_snapshot(state / snapshot.SNAPSHOT_FILE)
    assert {part: written[part] for part in before} == before

    # One note changes while everything is down; then Redis loses all it held.
    procs.stop_all()
    (tree / "docs" / "n1.md").write_text(note(1, version=1))
    r.flushall()
    watcher = start_watcher(procs, r, redis_url, watch, state, tmp_path / "watcher2.log")

    after = state_of(r, tmp_path / "after.json")
    assert after["ledger"] == before["ledger"]
    assert after["owned"] == before["owned"]
    assert after["facts"] == before["facts"]
    seen_before, seen_after = before["seen"][names.seen(ROOT)], after["seen"][names.seen(ROOT)]
    assert seen_after.keys() == seen_before.keys()
    assert {k: v for k, v in seen_after.items() if k != "docs/n1.md"} == {
        k: v for k, v in seen_before.items() if k != "docs/n1.md"}
    assert queued_paths(r) == ["docs/n1.md"]  # only the change: nothing else is sent again
    assert "restored state snapshot" in watcher.output()


@pytest.mark.integration
@pytest.mark.fault
def test_a_redis_flushed_under_a_running_watcher_is_restored_and_reconciled_within_seconds(
    procs, redis_url, r, tmp_path
):
    tree, state = make_tree(tmp_path), tmp_path / "state"
    # Under up the watcher keeps the snapshot too: the same command as under systemd.
    (child,) = [c for c in plan(Settings(state_dir=state), [tree]) if c.name == "watcher"]
    assert "--no-snapshot" not in child.argv
    start_worker(procs, redis_url, state, tmp_path / "worker.log")
    watcher = start_watcher(procs, r, redis_url, child.argv, state, tmp_path / "watcher1.log")
    wait_for(lambda: r.hlen(names.facts(KNOWLEDGE, ROOT)) == NOTES + 1 and r.llen(KNOWLEDGE) == 0
             and not r.hlen("unacked") and r.hlen(names.LEDGER) == NOTES - 1, 60,
             message="every file analysed")
    assert watcher.stop() == 0  # writes the snapshot
    # A short heartbeat (KLOROS_WATCHER_HEARTBEAT_MS): the flush is noticed sooner.
    watcher = start_watcher(procs, r, redis_url, child.argv, state, tmp_path / "watcher2.log",
                            KLOROS_WATCHER_HEARTBEAT_MS="500")
    before = state_of(r, tmp_path / "before.json")

    r.flushall()  # kombu's queue bindings go too
    # Noticed at the next heartbeat (seconds), not at the periodic reconciliation (600 s).
    wait_for(lambda: r.hlen(names.LEDGER) == NOTES - 1 and r.exists(names.ROOTS), 30,
             message="the snapshot restored")
    assert "Redis lost the watcher's registration" in watcher.output()
    (tree / "docs" / "n1.md").write_text(note(1, version=1))
    changed = hashlib.sha256(note(1, version=1).encode()).hexdigest()

    def analysed() -> bool:
        raw = r.hget(names.facts(KNOWLEDGE, ROOT), "docs/n1.md")
        return raw is not None and changed in facts_json(raw)

    wait_for(analysed, 30, message="the change after the flush analysed")
    wait_for(lambda: r.llen(KNOWLEDGE) == 0 and not r.hlen("unacked"), 30,
             message="the queue drained")
    after = state_of(r, tmp_path / "after.json")
    assert after["ledger"] == before["ledger"]  # nothing opened or resolved
    assert after["facts"].keys() == before["facts"].keys()
    # The stream went with the flush: any question in it now was published again.
    assert r.xlen(names.STREAM) == 0
    assert watcher.stop() == 0
    assert snapshot.load_snapshot(state / snapshot.SNAPSHOT_FILE)["ledger"] == before["ledger"]


def exploration(subject: str) -> Question:
    return Question(detector=EXPLORATION, rule="new_device", subject=subject, owner=HOST,
                    hypothesis=f"NEW_DEVICE: {subject}", question=f"What is {subject} for?",
                    severity="low")


def analysed_state(r, tree: Path) -> None:
    """What a previous run left in Redis: every file seen and analysed, n1.md's question
    open, and two exploration questions of HOST open."""
    publisher = Publisher(r, host=HOST)
    for path in sorted(tree.rglob("*.md")):
        rel, data = str(path.relative_to(tree)), path.read_bytes()
        sha, st = hashlib.sha256(data).hexdigest(), os.lstat(path)
        r.hset(names.seen(ROOT), rel, f"{sha} {st.st_mtime_ns} {st.st_size}")
        facts = {"relations": {}, "data": {snapshot.DIGEST_FIELD: sha}}
        for detector in route(rel):  # every detector the file is routed to analysed it
            r.hset(names.facts(detector, ROOT), rel, json.dumps(facts))
    question = Question(detector=KNOWLEDGE, rule="unindexed_doc", subject="docs/n1.md",
                        owner="docs/n1.md", hypothesis="UNINDEXED_DOC: docs/n1.md",
                        question="Is docs/n1.md linked?", severity="low")
    publisher.sync(KNOWLEDGE, ROOT, "docs/n1.md", [question])
    publisher.sync(EXPLORATION, "", HOST, [exploration("gpu0"), exploration("gpu1")])


def test_a_restore_merges_under_questions_an_exploration_scan_published_first(
    redis_url, r, tmp_path
):
    tree, path = make_tree(tmp_path), tmp_path / "state" / snapshot.SNAPSHOT_FILE
    analysed_state(r, tree)
    snapshot.write_snapshot(r, path)
    old_ledger = r.hgetall(names.LEDGER)
    r.flushall()
    # The exploration worker scans before the watcher starts: gpu0 still holds, gpu1
    # went away unnoticed, nic0 is new.
    Publisher(r, host=HOST).sync(EXPLORATION, "", HOST, [exploration("gpu0"),
                                                        exploration("nic0")])
    live_ledger = r.hgetall(names.LEDGER)
    assert not snapshot.holds_state(r)

    sender = RecordingSender()
    settings = Settings(redis_url=redis_url, state_dir=path.parent)
    watcher = Watcher(settings, [tree], sender=sender, snapshot_path=path, snapshot_every=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: watcher.initial_done, 30, message="the first reconciliation")
        assert sender.sent == []  # restored before it: no file is sent again
        assert r.hgetall(names.LEDGER) == {**old_ledger, **live_ledger}  # live ones kept
        gpu1, nic0 = exploration("gpu1").id, exploration("nic0").id
        assert r.smembers(names.owned(EXPLORATION, "", HOST)) == {
            exploration("gpu0").id.encode(), gpu1.encode(), nic0.encode()}
        # Written every snapshot_every seconds while running, live questions included.
        wait_for(lambda: nic0 in snapshot.load_snapshot(path)["ledger"], 30,
                 message="a periodic snapshot")
    finally:
        stop.set()
        thread.join(10)
    # Owned and ledger agree: the next scan resolves the question that went away.
    result = Publisher(r, host=HOST).sync(EXPLORATION, "", HOST, [exploration("gpu0"),
                                                                 exploration("nic0")])
    assert result.resolved == (gpu1,)


def test_a_redis_restarted_empty_under_a_running_watcher_gets_the_snapshot_back(
    tmp_path, caplog
):
    directory = Path(tempfile.mkdtemp(prefix="kl-"))  # a short unix socket path
    server = EmbeddedRedis(directory, persist=False).start()
    client = redis_client(server.url)
    tree, path = make_tree(tmp_path), tmp_path / "state" / snapshot.SNAPSHOT_FILE
    analysed_state(client, tree)
    sender, stop = RecordingSender(), threading.Event()
    watcher = Watcher(Settings(redis_url=server.url, state_dir=path.parent), [tree],
                      sender=sender, snapshot_path=path, snapshot_every=0.2)
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: path.exists(), 30, message="a periodic snapshot")
        ledger, seen = client.hgetall(names.LEDGER), client.hgetall(names.seen(ROOT))
        server.stop()
        server.start()  # empty: nothing persisted, and redis-py reconnects silently
        (tree / "docs" / "n1.md").write_text(note(1, version=1))
        wait_for(lambda: sender.sent, 30, message="the change sent")
        wait_for(lambda: not watcher.reconcile_needed and not watcher.held, 30,
                 message="the reconciliation after the restore")
        assert {p["path"] for _d, p in sender.sent} == {"docs/n1.md"}  # and nothing else
        assert client.hgetall(names.LEDGER) == ledger
        changed = b"docs/n1.md"
        assert set(client.hkeys(names.seen(ROOT))) == set(seen)
        assert client.hget(names.seen(ROOT), changed) != seen[changed]
        assert client.hexists(names.ROOTS, ROOT)  # registered again
        assert any("lost the watcher's registration" in rec.getMessage()
                   for rec in caplog.records)
    finally:
        stop.set()
        thread.join(10)
        client.close()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_file_state_or_a_file_question_means_redis_holds_state(r):
    Publisher(r, host=HOST).sync(EXPLORATION, "", HOST, [exploration("gpu0")])
    assert not snapshot.holds_state(r)
    r.hset(names.LEDGER, "knowledge.unindexed_doc.0011", '{"facts": {}}')
    assert snapshot.holds_state(r)
    r.hdel(names.LEDGER, "knowledge.unindexed_doc.0011")
    r.hset(names.seen(ROOT), "a.md", "ab 1 2")
    assert snapshot.holds_state(r)


def test_a_snapshot_that_cannot_be_written_keeps_the_previous_one(r, tmp_path, caplog):
    path = tmp_path / snapshot.SNAPSHOT_FILE
    r.hset(names.seen(ROOT), "a.md", "ab 1 2")
    snapshot.write_snapshot(r, path)
    written = path.read_bytes()
    r.flushall()
    caplog.set_level(logging.INFO, logger="kloros_tasks.state.snapshot")

    assert snapshot.keep_snapshot(r, path) is None  # an emptied Redis overwrites nothing
    unreachable = redis_client(f"unix://{tmp_path}/no-such.sock", retries=0)
    assert snapshot.keep_snapshot(unreachable, path) is None
    unreachable.close()
    assert path.read_bytes() == written
    assert any(rec.levelname == "WARNING" and "previous one is kept" in rec.getMessage()
               for rec in caplog.records)


class RecordingSender:
    """Records what would have been enqueued (the boundary the watcher sends through)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, detector: str, payload: dict) -> None:
        self.sent.append((detector, payload))

    def send_batch(self, detector: str, payload: dict) -> None:
        self.sent += [(detector, {"root": payload["root"], **c}) for c in payload["changes"]]


def indexed(r, count: int) -> None:
    """``count`` analysed documents in Redis, as a snapshot reads them."""
    for i in range(count):
        facts = {"relations": {}, "data": {snapshot.DIGEST_FIELD: f"{i:064x}"}}
        r.hset(names.facts(KNOWLEDGE, ROOT), f"docs/n{i}.md", json.dumps(facts))


def test_a_snapshot_that_lost_most_of_its_content_keeps_the_previous_one(r, tmp_path):
    path = tmp_path / snapshot.SNAPSHOT_FILE
    indexed(r, 100)
    snapshot.write_snapshot(r, path)
    good = path.read_bytes()
    r.flushall()
    indexed(r, 3)  # a Redis emptied and partly refilled before anyone noticed
    snapshot.write_snapshot(r, path)
    assert snapshot.previous_path(path).read_bytes() == good
    assert snapshot.load_snapshot(path)["facts"][names.facts(KNOWLEDGE, ROOT)].keys() == {
        "docs/n0.md", "docs/n1.md", "docs/n2.md"}
    # Later small snapshots replace the small one, never the good one kept aside.
    r.flushall()
    indexed(r, 1)
    snapshot.write_snapshot(r, path)
    assert snapshot.previous_path(path).read_bytes() == good


def test_a_tree_that_shrinks_a_little_replaces_its_snapshot_alone(r, tmp_path):
    path = tmp_path / snapshot.SNAPSHOT_FILE
    indexed(r, 100)
    snapshot.write_snapshot(r, path)
    r.hdel(names.facts(KNOWLEDGE, ROOT), *[f"docs/n{i}.md" for i in range(40)])
    snapshot.write_snapshot(r, path)
    assert not snapshot.previous_path(path).exists()
    assert len(snapshot.load_snapshot(path)["facts"][names.facts(KNOWLEDGE, ROOT)]) == 60
