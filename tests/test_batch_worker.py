"""Batch tasks through a real prefork ``celery worker`` on a private Redis: a
reconciliation sent as batches asks what single-file tasks ask, a malformed entry is
refused alone, and a poison file is split out of its batch and parked alone."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from procs import wait_for
from test_worker import DOC_POLICY, DOCUMENTED, UNDOCUMENTED, module_pipeline

from kloros_tasks import names
from kloros_tasks.settings import Settings
from kloros_tasks.state.index import facts_json
from kloros_tasks.watch.send import CelerySender
from kloros_tasks.watch.sync import STORM_FILES, Root, Syncer
from kloros_tasks.watch.tree import read_file
from kloros_tasks.work import blobs
from kloros_tasks.work.payload import Change, batch_json

pytestmark = pytest.mark.integration
KNOWLEDGE = names.KNOWLEDGE


@pytest.fixture(scope="module")
def pipe():
    yield from module_pipeline(KNOWLEDGE)


def write_tree(tree: Path) -> int:
    """A tree of modules (half undocumented) and notes (a third with a broken link);
    returns how many files the knowledge detector reads."""
    tree.mkdir()
    (tree / "pyproject.toml").write_text(DOC_POLICY)
    (tree / "pkg").mkdir()
    (tree / "pkg" / "__init__.py").write_text('"""The package."""\n')
    for i in range(90):
        (tree / "pkg" / f"m{i:02d}.py").write_text(UNDOCUMENTED if i % 2 else DOCUMENTED)
    (tree / "docs").mkdir()
    for i in range(60):
        link = f"[gone](missing{i}.md)" if i % 3 == 0 else f"[next](n{(i + 1) % 60:02d}.md)"
        (tree / "docs" / f"n{i:02d}.md").write_text(f"# Note {i}\n\n{link}\n")
    return 2 + 90 + 60


def register(pipe, tree: Path) -> Root:
    pipe.r.hset(names.ROOTS, tree.name, json.dumps({"path": str(tree), "host": "elsewhere"}))
    return Root(tree.name, str(tree))


def open_questions(pipe, root: str) -> set[tuple[str, tuple[str, ...]]]:
    out = set()
    for raw in pipe.r.hvals(names.LEDGER):
        meta = json.loads(raw)["facts"]["metadata"]
        if meta["root"] == root:
            out.add((meta["rule"], tuple(meta["paths"])))
    return out


def settled(pipe, *roots: str) -> bool:
    return pipe.drained() and not any(
        pipe.r.exists(names.deferred(KNOWLEDGE, root)) for root in roots)


def received(pipe, task: str) -> int:
    return sum(1 for line in pipe.worker.output().splitlines()
               if f"Task {task}[" in line and line.endswith("] received"))


def test_a_reconciliation_sent_in_batches_asks_what_single_file_tasks_ask(pipe, tmp_path):
    files = write_tree(tmp_path / "bulk")
    write_tree(tmp_path / "single")
    settings = Settings(redis_url=pipe.server.url)
    bulk, single = register(pipe, tmp_path / "bulk"), register(pipe, tmp_path / "single")
    batches_before = received(pipe, names.TASK_ANALYZE_BATCH[KNOWLEDGE])
    singles_before = received(pipe, names.TASK_ANALYZE[KNOWLEDGE])
    sync = Syncer(settings, pipe.r, CelerySender(settings), read_file, [bulk, single])
    # The bulk tree by a reconciliation; the other as live changes, a few at a time.
    # One after the other: two roots deferring at once keep each other's settle task
    # waiting (each sees the other's in the queue) until SETTLE_MAX_WAIT.
    sync.roots = [bulk]
    assert sync.reconcile(threading.Event())
    wait_for(lambda: settled(pipe, bulk.name), 120, message="the reconciled tree settled")
    rels = sorted(str(p.relative_to(single.path)) for p in Path(single.path).rglob("*")
                  if p.is_file())
    for start in range(0, len(rels), STORM_FILES - 1):
        sync.process(((single.name, rel), "file") for rel in rels[start:start + STORM_FILES - 1])
    wait_for(lambda: settled(pipe, bulk.name, single.name), 120, message="both trees settled")
    assert received(pipe, names.TASK_ANALYZE_BATCH[KNOWLEDGE]) - batches_before == \
        -(-files // 100)
    assert received(pipe, names.TASK_ANALYZE[KNOWLEDGE]) - singles_before == files
    asked = open_questions(pipe, bulk.name)
    assert asked == open_questions(pipe, single.name)
    rules = {rule for rule, _ in asked}
    assert len(asked) >= 45 + 20 and {"missing_docstrings"} <= rules
    assert pipe.r.hlen(names.facts(KNOWLEDGE, bulk.name)) == files


def send_batch(pipe, root: str, items: list[tuple[str, bytes | None]]) -> list[Change]:
    changes = []
    for path, content in items:
        if content is None:
            changes.append(Change(root, path, "deleted", ts=1.0))
            continue
        sha = hashlib.sha256(content).hexdigest()
        blobs.store(pipe.r, sha, content, refs=1, ttl=600)
        changes.append(Change(root, path, "modified", sha, ts=1.0))
    payload = batch_json(root, changes)
    pipe.app.send_task(names.TASK_ANALYZE_BATCH[KNOWLEDGE], args=[payload], queue=KNOWLEDGE)
    return changes


def test_a_malformed_entry_is_refused_alone_and_the_rest_analysed(pipe):
    root = pipe.new_root()
    mark = f"# {root}\n".encode()  # blobs of their own: no other test shares them
    changes = send_batch(pipe, root, [("pyproject.toml", DOC_POLICY.encode() + mark),
                                      ("a.py", UNDOCUMENTED.encode() + mark),
                                      ("b.py", UNDOCUMENTED.encode() + b"# b\n" + mark)])
    bad = batch_json(root, changes)
    bad["changes"].insert(1, {**bad["changes"][1], "path": "../../etc/passwd"})
    before = pipe.worker.output().count("refused entry 1 of a batch")
    pipe.app.send_task(names.TASK_ANALYZE_BATCH[KNOWLEDGE], args=[bad], queue=KNOWLEDGE)
    wait_for(lambda: pipe.worker.output().count("refused entry 1 of a batch") > before, 30,
             message="the refusal")
    wait_for(lambda: settled(pipe, root), 30, message="the batches done")
    assert {paths for _, paths in open_questions(pipe, root)} == {("a.py",), ("b.py",)}
    # Both deliveries of the same blobs released what they held: nothing is left.
    for change in changes:
        assert not pipe.r.exists(names.blob(change.sha256), names.blob_refs(change.sha256))


def test_a_malformed_batch_is_refused_and_acknowledged(pipe):
    before = pipe.worker.output().count("refused malformed batch payload")
    pipe.app.send_task(names.TASK_ANALYZE_BATCH[KNOWLEDGE], args=[{"root": "x", "changes": 3}],
                       queue=KNOWLEDGE)
    wait_for(lambda: pipe.worker.output().count("refused malformed batch payload") > before,
             30, message="the refusal")
    wait_for(pipe.drained, 30, message="the queue drained")


def test_a_poison_file_is_split_out_of_its_batch_and_parked_alone(pipe):
    root = pipe.new_root()
    # Stored facts that do not decompress: reading them raises inside the task.
    pipe.r.hset(names.facts(KNOWLEDGE, root), "broken.py", b"7:not zlib at all")
    dead_before = pipe.r.llen(names.DEADLETTER)
    items = [("pyproject.toml", DOC_POLICY.encode()), ("broken.py", b"x = 1\n")]
    items += [(f"m{i}.py", UNDOCUMENTED.encode() + b"# %d\n" % i) for i in range(5)]
    send_batch(pipe, root, items)
    wait_for(lambda: pipe.r.llen(names.DEADLETTER) > dead_before, 30, message="the parking")
    wait_for(lambda: settled(pipe, root), 30, message="the split tasks done")
    entries = [json.loads(e) for e in pipe.r.lrange(names.DEADLETTER, dead_before, -1)]
    assert [(e["task"], e["file"]) for e in entries] == [
        (names.TASK_ANALYZE[KNOWLEDGE], f"{root}:broken.py")]
    assert {paths for _, paths in open_questions(pipe, root)} == {
        (f"m{i}.py",) for i in range(5)}
    assert "sent its 7 changes again one by one" in pipe.worker.output()
    pipe.r.hdel(names.facts(KNOWLEDGE, root), "broken.py")


def test_a_batch_delivered_after_a_newer_change_of_its_file_does_not_undo_it(pipe):
    root = pipe.new_root()
    old, new = UNDOCUMENTED.encode() + b"# old\n", DOCUMENTED.encode()
    old_sha = hashlib.sha256(old).hexdigest()
    blobs.store(pipe.r, old_sha, old, refs=1, ttl=600)
    newer = Change(root, "m.py", "modified", hashlib.sha256(new).hexdigest(), ts=2.0)
    blobs.store(pipe.r, newer.sha256, new, refs=1, ttl=600)
    pipe.send_raw(newer.to_json())
    wait_for(lambda: settled(pipe, root) and pipe.r.hexists(names.facts(KNOWLEDGE, root),
                                                            "m.py"), 30, message="m.py")
    # The batch of an older change, sent before it and delivered only now.
    late = batch_json(root, [Change(root, "m.py", "modified", old_sha, ts=1.0),
                             Change(root, "n.py", "modified", old_sha, ts=1.0)])
    pipe.app.send_task(names.TASK_ANALYZE_BATCH[KNOWLEDGE], args=[late], queue=KNOWLEDGE)
    wait_for(lambda: "1 analysed, 1 superseded" in pipe.worker.output(), 30,
             message="the late batch done")
    stored = json.loads(facts_json(pipe.r.hget(names.facts(KNOWLEDGE, root), "m.py")))
    assert stored["data"]["_sha256"] == newer.sha256
