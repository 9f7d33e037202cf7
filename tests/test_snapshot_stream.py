"""The snapshot is written as it is read from Redis, chunk by chunk, into a file that
replaces the old one only when it is whole.

What these tests hold: a large index round-trips exactly (every field once, whatever
chunks SCAN and HSCAN return), the summary at the end of the file is what the file
holds, a snapshot written before the summary existed is still read and counted, and a
write cut short leaves the previous snapshot as it was.  How much memory the writer
keeps is measured in bench/memory.py, not asserted here.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import redis

from kloros_tasks import names
from kloros_tasks.state import snapshot
from kloros_tasks.state.index import RedisIndex

KNOWLEDGE, INTEGRATION, CAPABILITY = names.KNOWLEDGE, names.INTEGRATION, names.CAPABILITY
ROOT = "tree"
FILES = 20_000


def facts(i: int) -> str:
    return json.dumps({"relations": {"links": [f"docs/n{i + 1}.md"]},
                       "data": {snapshot.DIGEST_FIELD: f"{i:064x}"}})


def seen(i: int) -> str:
    return f"{i:064x} {i} {i * 10}"


def capability_facts(i: int) -> str:
    return json.dumps({"relations": {}, "data": {snapshot.DIGEST_FIELD: f"{i:064x}"}})


def fill(r, files: int, capability: bool = False) -> None:
    """``files`` analysed documents, their seen entries, and an open question per
    hundredth file, as the watcher and the workers leave them; with ``capability``,
    that detector's facts of each document too (a restore keeps a seen entry only when
    every detector the file is routed to holds its facts)."""
    for start in range(0, files, 5000):
        batch = range(start, min(files, start + 5000))
        r.hset(names.facts(KNOWLEDGE, ROOT), mapping={f"docs/n{i}.md": facts(i) for i in batch})
        if capability:
            r.hset(names.facts(CAPABILITY, ROOT),
                   mapping={f"docs/n{i}.md": capability_facts(i) for i in batch})
        r.hset(names.seen(ROOT), mapping={f"docs/n{i}.md": seen(i) for i in batch})
    for i in range(0, files, 100):
        qid = f"knowledge.unindexed_doc.{i:04x}"
        r.hset(names.LEDGER, qid, json.dumps({"facts": {"question_id": qid}}))
        r.sadd(names.owned(KNOWLEDGE, ROOT, f"docs/n{i}.md"), qid)


def written_twice(path) -> list[str]:
    """The member names that some object in the file holds more than once (json.loads
    would keep the last silently)."""
    twice: list[str] = []

    def check(pairs):
        twice.extend(k for k, n in Counter(k for k, _v in pairs).items() if n > 1)
        return dict(pairs)

    json.loads(path.read_bytes(), object_pairs_hook=check)
    return twice


def test_a_large_index_round_trips_with_every_field_written_once(r, tmp_path):
    fill(r, FILES, capability=True)
    path = tmp_path / snapshot.SNAPSHOT_FILE
    summary = snapshot.write_snapshot(r, path)

    assert (summary.questions, summary.files) == (FILES // 100, 2 * FILES)
    document = snapshot.load_snapshot(path)
    assert document["facts"] == {
        names.facts(KNOWLEDGE, ROOT): {f"docs/n{i}.md": facts(i) for i in range(FILES)},
        names.facts(CAPABILITY, ROOT): {f"docs/n{i}.md": capability_facts(i)
                                        for i in range(FILES)}}
    assert document["seen"] == {names.seen(ROOT): {f"docs/n{i}.md": seen(i)
                                                   for i in range(FILES)}}
    assert len(document["owned"]) == len(document["ledger"]) == FILES // 100
    assert written_twice(path) == []
    assert snapshot.read_summary(path) == snapshot.summarise(document) == summary

    r.flushall()
    assert snapshot.restore_snapshot(r, path) is True
    assert r.hlen(names.facts(KNOWLEDGE, ROOT)) == r.hlen(names.seen(ROOT)) == FILES
    assert r.hlen(names.LEDGER) == FILES // 100
    index = RedisIndex(r, KNOWLEDGE, ROOT)
    assert index.who("links", "docs/n1234.md") == {"docs/n1233.md"}


class GrowingWhileScanned:
    """A real client whose facts hash grows by ``extra`` fields after the first HSCAN
    step, as when files are analysed while the snapshot is written: Redis then rehashes
    the hash under the cursor and may return a field twice."""

    def __init__(self, client, extra: int) -> None:
        self.client, self.extra, self.grown = client, extra, False

    def hscan(self, key, cursor=0, **kwargs):
        reply = self.client.hscan(key, cursor, **kwargs)
        if not self.grown and key == names.facts(KNOWLEDGE, ROOT).encode():
            self.grown = True
            self.client.hset(key, mapping={f"late/{i}.md": facts(i) for i in range(self.extra)})
        return reply

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_hash_that_grows_while_scanned_keeps_every_field_it_held_once(r, tmp_path):
    fill(r, 2000)
    path = tmp_path / snapshot.SNAPSHOT_FILE
    summary = snapshot.write_snapshot(GrowingWhileScanned(r, 20_000), path)

    written = snapshot.load_snapshot(path)["facts"][names.facts(KNOWLEDGE, ROOT)]
    assert {f"docs/n{i}.md" for i in range(2000)} <= written.keys()
    assert written_twice(path) == []
    assert summary.files == len(written) == snapshot.read_summary(path).files


class FailingAfter:
    """A real client that loses its connection after ``steps`` HSCAN steps."""

    def __init__(self, client, steps: int) -> None:
        self.client, self.steps = client, steps

    def hscan(self, *args, **kwargs):
        self.steps -= 1
        if self.steps < 0:
            raise redis.ConnectionError("connection lost while the snapshot was written")
        return self.client.hscan(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_write_cut_short_leaves_the_previous_snapshot_and_no_temporary_file(r, tmp_path):
    fill(r, 3000)
    path = tmp_path / snapshot.SNAPSHOT_FILE
    snapshot.write_snapshot(r, path)
    before = path.read_bytes()
    r.hset(names.facts(INTEGRATION, ROOT), "app.py", facts(0))

    with pytest.raises(redis.ConnectionError):
        snapshot.write_snapshot(FailingAfter(r, 2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [snapshot.SNAPSHOT_FILE]
    assert snapshot.keep_snapshot(FailingAfter(r, 2), path) is None  # logged, not raised
    assert path.read_bytes() == before


def test_a_snapshot_written_before_the_summary_existed_is_read_and_counted(r, tmp_path):
    path = tmp_path / snapshot.SNAPSHOT_FILE
    old = {"format": snapshot.FORMAT, "version": 1, "written_at": 1.0,
           "ledger": {f"knowledge.rule.{i:04x}": "{}" for i in range(30)},
           "owned": {}, "seen": {},
           "facts": {names.facts(KNOWLEDGE, ROOT): {f"docs/n{i}.md": facts(i)
                                                    for i in range(40)}}}
    path.write_text(json.dumps(old))
    assert snapshot.read_summary(path) == snapshot.Summary(questions=30, files=40)

    fill(r, 10)  # a Redis that lost most of it: the old file is kept aside
    snapshot.write_snapshot(r, path)
    assert json.loads(snapshot.previous_path(path).read_text()) == old
    assert snapshot.restore_snapshot(r, snapshot.previous_path(path)) is False  # state held
    r.flushall()
    assert snapshot.restore_snapshot(r, snapshot.previous_path(path)) is True
    assert r.hlen(names.LEDGER) == 30 and r.hlen(names.facts(KNOWLEDGE, ROOT)) == 40


@pytest.mark.parametrize("summary", ['"x"', '{"questions":1}', '{"questions":"1","files":2}'])
def test_a_malformed_summary_makes_the_snapshot_unreadable(tmp_path, summary):
    path = tmp_path / snapshot.SNAPSHOT_FILE
    path.write_text(f'{{"format":"{snapshot.FORMAT}","version":1,"written_at":1.0,"seen":{{}},'
                    f'"facts":{{}},"owned":{{}},"ledger":{{}},"summary":{summary}}}')
    with pytest.raises(snapshot.SnapshotError, match="summary"):
        snapshot.load_snapshot(path)


def scan_calls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_state_of_a_known_root_is_found_without_walking_the_keyspace(r):
    assert not snapshot.holds_state(r, [ROOT])
    pipe = r.pipeline(transaction=False)
    for i in range(5_000):  # what fills a real keyspace: index buckets, owned sets
        pipe.set(f"kloros:ix:{KNOWLEDGE}:{ROOT}:b:{i}", "x")
    pipe.execute()
    r.hset(names.facts(KNOWLEDGE, ROOT), "a.py", "1:")
    before = scan_calls(r)
    assert snapshot.holds_state(r, [ROOT])
    assert scan_calls(r) == before  # one EXISTS answered it
    # A root it was not told about is still found, by scanning.
    assert snapshot.holds_state(r, ["elsewhere"])
    assert scan_calls(r) > before
