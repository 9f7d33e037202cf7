"""What one file task does when it is cut short, delivered again, or handed a crafted
payload: called in-process (``handle_change``) against the private Redis.

- "Already analysed" means its questions were published or deferred too: a task that
  failed between the index update and the publication finishes the job when it runs
  again (its own retry, or a redelivery after its worker died).
- The facts one file may put in the index are capped.
- A worker reads a file from its own disk only inside the root's real path, and
  measures it (or its blob) before reading a byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import redis

from kloros_tasks import names
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work import blobs, engine
from kloros_tasks.work.analysis import Context, handle_change
from kloros_tasks.work.payload import Change

ROOT = "tree"
HOST = "test-host"  # the host the root is registered on, and the one the worker is
DETECTOR = KnowledgeDetector()
NOTE = b"# A note\n\nNobody links to this note.\n"


class FlakyPublisher(Publisher):
    """A publisher whose connection drops on its first ``failures`` syncs."""

    failures = 1

    def sync_many(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("connection lost while publishing")
        return super().sync_many(*args, **kwargs)


def context(r, publisher: Publisher | None = None, max_bytes: int = 1 << 20) -> Context:
    return Context(r, publisher or Publisher(r, host=HOST), max_file_bytes=max_bytes)


def payload(path: str, raw: bytes, *, sha: str | None = None) -> dict:
    return Change(ROOT, path, "modified", sha or hashlib.sha256(raw).hexdigest(),
                  ts=1.0).to_json()


def send(r, ctx: Context, path: str, raw: bytes) -> str:
    blobs.store(r, hashlib.sha256(raw).hexdigest(), raw, refs=1, ttl=600)
    return handle_change(ctx, DETECTOR, payload(path, raw))


def opened(r) -> list[str]:
    return [json.loads(f[b"envelope"])["facts"]["question_id"]
            for _id, f in r.xrange(names.STREAM)
            if json.loads(f[b"envelope"])["signal"] != names.CHANNEL_RESOLVED]


@pytest.fixture
def rr(r, tmp_path):
    tree = tmp_path / ROOT
    tree.mkdir()
    r.hset(names.ROOTS, ROOT, json.dumps({"path": str(tree), "host": HOST}))
    return r


# --- completion is idempotent ------------------------------------------------------------

def test_a_task_retried_after_publishing_failed_publishes_what_its_first_run_indexed(rr):
    ctx = context(rr, FlakyPublisher(rr, host=HOST))
    with pytest.raises(redis.ConnectionError):
        send(rr, ctx, "note.md", NOTE)
    assert opened(rr) == []
    # The task's retry: the blob is gone (released), the index already has the digest.
    assert handle_change(ctx, DETECTOR, payload("note.md", NOTE)) == "analysed"
    assert len(opened(rr)) == 1
    # A third delivery finds everything done.
    assert handle_change(ctx, DETECTOR, payload("note.md", NOTE)) == "duplicate"
    assert len(opened(rr)) == 1


def test_a_retry_also_publishes_what_the_change_did_to_other_files(rr):
    ctx = context(rr)
    assert send(rr, ctx, "a.md", NOTE) == "analysed"
    assert len(opened(rr)) == 1  # a.md is linked from nowhere
    flaky = context(rr, FlakyPublisher(rr, host=HOST))
    index_md = b"# Index\n\n[a](a.md)\n"
    with pytest.raises(redis.ConnectionError):
        send(rr, flaky, "README.md", index_md)
    assert handle_change(flaky, DETECTOR, payload("README.md", index_md)) == "analysed"
    # a.md is now linked: its question is resolved, though the first run that changed
    # the links died before publishing anything.
    assert rr.hkeys(names.LEDGER) == []


# --- the cap on facts per file -------------------------------------------------------------

def test_a_file_with_more_facts_than_the_cap_is_skipped_with_its_reason(rr, monkeypatch):
    monkeypatch.setattr(engine, "MAX_FACTS", 50)
    ctx = context(rr)
    links = b"".join(b"[x](d/%d.md)\n" % i for i in range(60))
    assert send(rr, ctx, "many.md", b"# Links\n\n[a](a.md)\n") == "analysed"
    assert send(rr, ctx, "many.md", links) == "skipped"
    assert "too many facts" in rr.hget(names.SKIPPED, f"knowledge:{ROOT}:many.md").decode()
    assert rr.hkeys(names.facts(names.KNOWLEDGE, ROOT)) == []  # its old facts retracted
    assert send(rr, ctx, "many.md", NOTE) == "analysed"
    assert not rr.hexists(names.SKIPPED, f"knowledge:{ROOT}:many.md")


# --- reading from the worker's own disk ----------------------------------------------------

def tree_of(r) -> Path:
    return Path(json.loads(r.hget(names.ROOTS, ROOT))["path"])


def test_a_file_reached_through_a_symlinked_directory_is_never_read(rr, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"# Secret\n\nSECRET=1\n"
    (outside / "secret.md").write_bytes(secret)
    (tree_of(rr) / "outlink").symlink_to(outside, target_is_directory=True)
    (tree_of(rr) / "inlink").symlink_to(tree_of(rr), target_is_directory=True)
    (tree_of(rr) / "real.md").write_bytes(NOTE)
    ctx = context(rr)
    # No blob: only the disk could supply the content.
    assert handle_change(ctx, DETECTOR, payload("outlink/secret.md", secret)) == "superseded"
    assert handle_change(ctx, DETECTOR, payload("inlink/real.md", NOTE)) == "superseded"
    assert rr.hkeys(names.facts(names.KNOWLEDGE, ROOT)) == []
    assert handle_change(ctx, DETECTOR, payload("real.md", NOTE)) == "analysed"


def test_a_root_registered_by_a_relative_path_is_never_read(rr, tmp_path, monkeypatch):
    (tmp_path / "note.md").write_bytes(NOTE)
    monkeypatch.chdir(tmp_path)
    rr.hset(names.ROOTS, ROOT, json.dumps({"path": ".", "host": HOST}))
    assert handle_change(context(rr), DETECTOR, payload("note.md", NOTE)) == "superseded"


def test_a_large_file_on_disk_is_measured_before_it_is_read(rr):
    big = tree_of(rr) / "big.md"
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost no disk
    bogus = "0" * 64
    outcome = handle_change(context(rr), DETECTOR, payload("big.md", b"", sha=bogus))
    assert outcome == "skipped"
    reason = rr.hget(names.SKIPPED, f"knowledge:{ROOT}:big.md").decode()
    assert reason.startswith(f"too large ({50 * 1024 * 1024} bytes")


def test_a_blob_larger_than_the_cap_is_measured_in_redis_not_loaded(rr):
    raw = b"# big\n" + b"x" * 4096
    assert send(rr, context(rr, max_bytes=1024), "big.md", raw) == "skipped"
    assert rr.hget(names.SKIPPED, f"knowledge:{ROOT}:big.md").decode().startswith(
        f"too large ({len(raw)} bytes")


def test_an_empty_blob_is_content_and_a_missing_one_is_not(rr):
    assert blobs.fetch(rr, "e" * 64, 10) is None
    rr.set(names.blob("e" * 64), b"")
    assert blobs.fetch(rr, "e" * 64, 10) == b""
    assert os.path.exists(tree_of(rr))
