"""Content-addressed blobs in a real private Redis: stored in batches, released by tasks."""

from __future__ import annotations

import hashlib

from kloros_tasks import names
from kloros_tasks.work import blobs


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_many_keeps_every_blob_with_its_references_and_ttl(r):
    items = [(sha(b"a"), b"a", 2), (sha(b"b"), b"b", 3)]
    blobs.store_many(r, items, ttl=600)
    for digest, content, refs in items:
        assert blobs.fetch(r, digest) == content
        assert int(r.get(names.blob_refs(digest))) == refs
        assert 0 < r.ttl(names.blob(digest)) <= 600
        assert 0 < r.ttl(names.blob_refs(digest)) <= 600


def test_store_many_is_one_transaction_however_many_blobs(r):
    r.config_resetstat()
    blobs.store_many(r, [(sha(bytes([n])), bytes([n]), 1) for n in range(200)], ttl=600)
    stats = r.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == 1
    assert stats["cmdstat_exec"]["calls"] == 1
    assert len(r.keys(names.blob("*"))) == 200


def test_store_many_sums_the_references_of_a_digest_given_twice(r):
    digest = sha(b"same")
    blobs.store_many(r, [(digest, b"same", 2), (digest, b"same", 1)], ttl=600)
    assert int(r.get(names.blob_refs(digest))) == 3


def test_store_many_adds_to_references_already_held(r):
    digest = sha(b"held")
    blobs.store(r, digest, b"held", refs=1, ttl=600)
    blobs.store_many(r, [(digest, b"held", 2)], ttl=600)
    assert int(r.get(names.blob_refs(digest))) == 3


def test_store_many_of_nothing_sends_nothing(r):
    r.config_resetstat()
    blobs.store_many(r, [], ttl=600)
    assert "cmdstat_multi" not in r.info("commandstats")


def test_the_last_release_deletes_a_blob_stored_in_a_batch(r):
    digest = sha(b"x")
    blobs.store_many(r, [(digest, b"x", 2)], ttl=600)
    assert blobs.release(r, digest) == 1
    assert blobs.fetch(r, digest) == b"x"
    assert blobs.release(r, digest) == 0
    assert blobs.fetch(r, digest) is None
    assert not r.exists(names.blob_refs(digest))


def test_fetch_with_a_cap_is_one_command_and_measures_a_blob_over_it(r):
    blobs.store(r, sha(b"12345"), b"12345", refs=1, ttl=600)
    r.script_flush()  # a Redis that has not seen the script yet
    assert blobs.fetch(r, sha(b"12345"), 5) == b"12345"
    r.config_resetstat()
    assert blobs.fetch(r, sha(b"12345"), 4) == 5
    assert blobs.fetch(r, sha(b"12345"), 5) == b"12345"
    assert blobs.fetch(r, sha(b"gone"), 5) is None
    stats = r.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert "cmdstat_multi" not in stats and "cmdstat_getrange" not in stats
