"""Batch payloads and how the watcher cuts a reconciliation or a storm into batches:
pure checks, and the Syncer on real files and a private Redis."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kloros_tasks import names
from kloros_tasks.settings import Settings
from kloros_tasks.watch.sync import STORM_FILES, Root, Syncer, _Task, bounded
from kloros_tasks.watch.tree import read_file
from kloros_tasks.work import blobs, claims
from kloros_tasks.work.batch import split
from kloros_tasks.work.batchindex import BatchIndex
from kloros_tasks.work.payload import (
    BATCH_BYTES,
    BATCH_FILES,
    Change,
    PayloadError,
    batch_json,
    parse_batch,
)

SHA = "a" * 64


def entry(path: str = "a.md", **over) -> dict:
    return {"path": path, "event": "modified", "sha256": SHA, "skip": None, "ts": 1.0, **over}


# --- the payload -------------------------------------------------------------------------

def test_a_batch_payload_round_trips_through_json():
    changes = [Change("proj", "a.md", "modified", SHA, ts=2.0),
               Change("proj", "b.py", "deleted"),
               Change("proj", "big.txt", "created", skip="too large (9 bytes > 1)")]
    root, parsed = parse_batch(json.loads(json.dumps(batch_json("proj", changes))))
    assert root == "proj" and parsed == changes


@pytest.mark.parametrize("payload,why", [
    ([], "not an object"),
    ({"v": 2, "root": "proj", "changes": [entry()]}, "version"),
    ({"root": "../x", "changes": [entry()]}, "watched root name"),
    ({"root": "proj", "changes": []}, "non-empty list"),
    ({"root": "proj", "changes": "a.md"}, "non-empty list"),
    ({"root": "proj", "changes": [entry()] * (BATCH_FILES + 1)}, "at most"),
    ({"root": "proj", "changes": [entry()], "extra": 1}, "unknown batch fields"),
])
def test_a_malformed_batch_is_refused_as_a_whole(payload, why):
    with pytest.raises(PayloadError, match=why):
        parse_batch(payload)


def test_a_malformed_entry_is_refused_alone_and_the_others_kept_in_order():
    _root, parsed = parse_batch({"root": "proj", "changes": [
        entry("a.md"), entry("../etc/passwd"), "not an object", entry("b.md", sha256="00"),
        entry("c.md", root="other"), entry("d.md", event="deleted", sha256=None)]})
    kinds = [type(p).__name__ for p in parsed]
    assert kinds == ["Change", "PayloadError", "PayloadError", "PayloadError",
                     "PayloadError", "Change"]
    assert [p.path for p in parsed if isinstance(p, Change)] == ["a.md", "d.md"]
    assert "outside its watched root" in str(parsed[1])
    assert "unknown entry fields ['root']" in str(parsed[4])


# --- the bounds ----------------------------------------------------------------------------

def tasks(sizes: list[int]) -> list[_Task]:
    return [_Task(f"f{i}.md", ("knowledge",), "modified", SHA, size=s)
            for i, s in enumerate(sizes)]


def test_batches_hold_at_most_batch_files_files_in_order():
    cut = list(bounded(tasks([10] * (2 * BATCH_FILES + 5))))
    assert [len(b) for b in cut] == [BATCH_FILES, BATCH_FILES, 5]
    assert [t.rel for b in cut for t in b] == [f"f{i}.md" for i in range(2 * BATCH_FILES + 5)]


def test_batches_hold_at_most_batch_bytes_of_blobs_and_a_larger_file_goes_alone():
    quarter = BATCH_BYTES // 4
    cut = list(bounded(tasks([quarter] * 5 + [BATCH_BYTES + 1, 1])))
    assert [len(b) for b in cut] == [4, 1, 1, 1]
    assert all(sum(t.size for t in b) <= BATCH_BYTES for b in cut if len(b) > 1)


# --- the watcher ---------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.singles: list[tuple[str, dict]] = []
        self.batches: list[tuple[str, dict]] = []

    def send(self, detector: str, payload: dict) -> None:
        self.singles.append((detector, payload))

    def send_batch(self, detector: str, payload: dict) -> None:
        root, entries = parse_batch(json.loads(json.dumps(payload)))
        assert all(isinstance(e, Change) for e in entries)
        self.batches.append((detector, payload))


def syncer(r, redis_url: str, tree: Path) -> tuple[Syncer, Recorder]:
    sender = Recorder()
    root = Root(tree.name, str(tree))
    return Syncer(Settings(redis_url=redis_url), r, sender, read_file, [root]), sender


def test_a_reconciliation_sends_one_batch_per_detector_per_hundred_files(r, redis_url,
                                                                         tmp_path):
    tree = tmp_path / "proj"
    tree.mkdir()
    for i in range(250):
        (tree / f"n{i:03d}.md").write_text(f"# note {i}\n")
    for i in range(30):
        (tree / f"m{i:02d}.py").write_text(f"x = {i}\n")
    sync, sent = syncer(r, redis_url, tree)
    assert sync.reconcile(threading.Event())
    per_detector: dict[str, list[int]] = {}
    for detector, payload in sent.batches:
        per_detector.setdefault(detector, []).append(len(payload["changes"]))
    # knowledge and capability (which reads documents for variables): 280 files;
    # integration: the 30 modules.
    assert sorted(per_detector["knowledge"]) == [80, 100, 100]
    assert sorted(per_detector["capability"]) == [80, 100, 100]
    assert per_detector["integration"] == [30]
    assert sent.singles == []
    # A batch holds one reference to each blob it names, as a single task does.
    note = blobs.fetch(r, parse_batch(sent.batches[0][1])[1][0].sha256)
    assert note is not None
    module_sha = next(e["sha256"] for d, p in sent.batches if d == "integration"
                      for e in p["changes"])
    assert int(r.get(names.blob_refs(module_sha))) == 3
    assert not r.exists(names.burst(tree.name))  # the burst is over


def test_each_detectors_batch_k_holds_its_share_of_the_same_files(r, redis_url, tmp_path):
    # The first of a worker's batch tasks k applies their Python files for every
    # detector it serves; the others' tasks k then find those files done.
    tree = tmp_path / "proj"
    tree.mkdir()
    for i in range(120):
        (tree / f"f{i:03d}.md").write_text(f"# note {i}\n")
        (tree / f"f{i:03d}.py").write_text(f"x = {i}\n")
    sync, sent = syncer(r, redis_url, tree)
    assert sync.reconcile(threading.Event())
    files: dict[str, list[set[str]]] = {}
    for detector, payload in sent.batches:
        files.setdefault(detector, []).append({e["path"] for e in payload["changes"]})
    assert [len(b) for b in files["knowledge"]] == [100, 100, 40]
    assert [len(b) for b in files["integration"]] == [50, 50, 20]
    for mine, theirs in zip(files["integration"], files["knowledge"], strict=True):
        assert mine == {p for p in theirs if p.endswith(".py")}
    # Their Python files are the same changes, stamps included: one claim names them
    # in every detector's share (work/claims.py).
    digests: dict[str, list[str]] = {}
    for detector, payload in sent.batches:
        root, changes = parse_batch(payload)
        digests.setdefault(detector, []).append(claims.digest(root, claims.common(changes)))
    assert digests["knowledge"] == digests["integration"] == digests["capability"]
    assert len(set(digests["knowledge"])) == 3


@pytest.mark.parametrize("how", ["reconciliation", "storm"])
def test_a_bulk_change_sends_the_package_markers_first(r, redis_url, tmp_path, how):
    tree = tmp_path / "proj"
    rels = [f"{d}/{name}" for d in ("a", "a/b", "c", "z") for name in
            ("__init__.py", *(f"m{i:02d}.py" for i in range(40)))]
    for rel in rels:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(f"# {rel}\n")
    sync, sent = syncer(r, redis_url, tree)
    if how == "reconciliation":
        assert sync.reconcile(threading.Event())
    else:
        sync.process(((tree.name, rel), "file") for rel in reversed(rels))
    order = [e["path"] for d, p in sent.batches if d == "integration" for e in p["changes"]]
    markers = sorted(rel for rel in rels if rel.endswith("/__init__.py"))
    assert order[:4] == markers and sorted(order) == sorted(rels)
    assert order[4:] == sorted(order[4:])


def test_a_storm_is_sent_in_batches_and_a_few_changes_one_task_per_file(r, redis_url,
                                                                        tmp_path):
    tree = tmp_path / "proj"
    tree.mkdir()
    sync, sent = syncer(r, redis_url, tree)
    few = [f"a{i}.md" for i in range(STORM_FILES - 1)]
    for rel in few:
        (tree / rel).write_text("# a\n")
    sync.process(((tree.name, rel), "file") for rel in few)
    # Documents go to knowledge and to capability: two tasks per file.
    assert len(sent.singles) == 2 * len(few) and sent.batches == []
    storm = [f"b{i}.md" for i in range(STORM_FILES)]
    for rel in storm:
        (tree / rel).write_text("# b\n")
    sync.process(((tree.name, rel), "file") for rel in storm)
    assert [(d, len(p["changes"])) for d, p in sent.batches] == [
        ("capability", STORM_FILES), ("knowledge", STORM_FILES)]
    assert len(sent.singles) == 2 * len(few)


# --- the worker's side, without a worker -------------------------------------------------

def test_a_split_batch_hands_each_blob_a_reference_of_its_own_before_dropping_its_own(r):
    blobs.store(r, SHA, b"# a\n", refs=1, ttl=600)
    payload = {"root": "proj", "changes": [entry("a.md"), entry("../bad"),
                                           entry("gone.md", event="deleted", sha256=None)]}
    resent: list[dict] = []
    assert split(r, payload, resent.append) == 2
    assert [p["path"] for p in resent] == ["a.md", "gone.md"]
    assert int(r.get(names.blob_refs(SHA))) == 1 and r.get(names.blob(SHA)) == b"# a\n"
    assert split(r, {"root": "proj", "changes": []}, resent.append) is None


def test_release_many_drops_one_reference_per_digest_given(r):
    other = "b" * 64
    blobs.store_many(r, [(SHA, b"a", 2), (other, b"b", 1)], ttl=600)
    blobs.release_many(r, [SHA, other])
    assert int(r.get(names.blob_refs(SHA))) == 1 and not r.exists(names.blob(other))
    blobs.release_many(r, [SHA])
    assert not r.exists(names.blob(SHA), names.blob_refs(SHA))
    blobs.take_many(r, [SHA])  # gone stays gone: no counter without a TTL is left
    assert not r.exists(names.blob_refs(SHA))


def test_fetch_many_gives_bytes_sizes_or_none_in_one_call(r):
    blobs.store_many(r, [(SHA, b"small", 1), ("b" * 64, b"x" * 50, 1)], ttl=600)
    assert blobs.fetch_many(r, [SHA, "b" * 64, "c" * 64], 10) == {
        SHA: b"small", "b" * 64: 50, "c" * 64: None}


class CountingIndex:
    def __init__(self) -> None:
        self.reads: list[str] = []
        self.stored: dict = {"pkg/__init__.py": "init"}

    def facts(self, path):
        self.reads.append(path)
        return self.stored.get(path)

    def facts_many(self, paths):
        paths = list(paths)
        self.reads += paths
        return {p: self.stored.get(p) for p in paths}

    def present_many(self, paths):
        paths = list(paths)
        self.reads += paths
        return {p for p in paths if self.stored.get(p) is not None}

    def update(self, path, new):
        self.stored[path] = new
        return frozenset()


def test_a_batch_reads_each_package_marker_once_until_it_updates_it():
    index = CountingIndex()
    cached = BatchIndex(index)
    cached.prefetch(["pkg/a.py", "pkg/sub/b.py"])
    assert sorted(index.reads) == ["__init__.py", "pkg/__init__.py", "pkg/sub/__init__.py"]
    index.reads.clear()
    assert cached.facts("pkg/__init__.py") == "init" and cached.facts("__init__.py") is None
    assert index.reads == []
    cached.update("pkg/sub/__init__.py", "new")
    assert cached.facts("pkg/sub/__init__.py") == "new" and index.reads == ["pkg/sub/__init__.py"]
    cached.facts("pkg/a.py")  # any other file is read as it is
    assert index.reads[-1] == "pkg/a.py"


def test_a_batch_names_modules_by_the_package_markers_it_read_or_assumed():
    index = CountingIndex()
    cached = BatchIndex(index)
    cached.prefetch(["pkg/sub/b.py"])
    cached.assume({"pkg/sub/__init__.py": True})  # the batch adds it
    index.reads.clear()
    assert cached.present_many(["__init__.py", "pkg/__init__.py", "pkg/sub/__init__.py"]) \
        == {"pkg/__init__.py", "pkg/sub/__init__.py"}
    assert index.reads == []  # every answer came from what the batch had read
    assert cached.present_many(["pkg/a.py", "other/__init__.py"]) == set()
    assert index.reads == ["pkg/a.py", "other/__init__.py"]  # the rest is asked
    cached.update("pkg/__init__.py", None)
    reads = len(index.reads)
    assert cached.present_many(["pkg/__init__.py"]) == set()
    cached.update("other/__init__.py", "facts")  # the batch's later modules are named by it
    assert cached.present_many(["other/__init__.py"]) == {"other/__init__.py"}
    assert len(index.reads) == reads  # a marker the batch updated is not asked again
    assert cached.facts("other/__init__.py") == "facts"  # its facts are read again


def test_under_the_lock_a_batch_reads_each_file_once_until_it_updates_it():
    index = CountingIndex()
    index.stored["pkg/a.py"] = "a"
    cached = BatchIndex(index, remember=True)
    assert cached.facts_many(["pkg/a.py", "pkg/b.py"]) == {"pkg/a.py": "a", "pkg/b.py": None}
    assert cached.facts("pkg/a.py") == "a" and cached.facts_many(["pkg/b.py"]) == {"pkg/b.py": None}
    assert index.reads == ["pkg/a.py", "pkg/b.py"]
    cached.update("pkg/a.py", "a2")
    assert cached.facts("pkg/a.py") == "a2" and index.reads[-1] == "pkg/a.py"


def test_outside_the_lock_a_batch_keeps_only_the_package_markers():
    index = CountingIndex()
    index.stored["pkg/a.py"] = "a"
    cached = BatchIndex(index)
    cached.facts("pkg/a.py")
    cached.facts("pkg/a.py")
    assert index.reads == ["pkg/a.py", "pkg/a.py"]
