"""The Redis index answers exactly as the in-memory one: the same touched pairs for
every update, the same holders for every lookup, whatever the order of updates, the
bytes in paths and values, and however many writers share a bucket."""

from __future__ import annotations

import json
import random
import threading

import pytest

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.state import index, snapshot
from kloros_tasks.state.index import MemoryIndex, RedisIndex

DETECTOR, ROOT = names.INTEGRATION, "repo"
LOOKED_UP = ("def", "read", "ptr")  # the integration relations indexed by value
POOL = [f"s:pkg.mod_{i}.name" for i in range(300)]
COMMON = "s:json"  # held by nearly every file: its holder list spills out of the bucket
ODD_VALUES = ["", " ", "a b", "line\nbreak", "comma,colon:star*", "*", "12", "caf\udce9",
              "ünïcode", "def read"]
ODD_PATHS = [b"caf\xe9/\xff.py".decode("utf-8", "surrogateescape"), "new\nline.py",
             "comma,1,2.py", "colon:3.py", "*", "12", "space d.py", "ünï/cøde.py", "x:1:2"]


def random_facts(rng: random.Random, pool: list[str]) -> FileFacts:
    relations = {
        "def": frozenset(rng.sample(pool, rng.randrange(0, 25)) + [COMMON]),
        "read": frozenset(rng.sample(pool, rng.randrange(0, 5))),
        "ptr": frozenset(rng.sample(pool, rng.randrange(0, 3))),
        "sig": frozenset({f"{COMMON}#{rng.randrange(3)}"}),
    }
    return FileFacts(relations=relations, data={"v": 1, "n": rng.randrange(1000)})


def replay(indexes: list, steps: list[tuple[str, FileFacts | None]]) -> None:
    """Apply each step to every index; each must report the same touched pairs."""
    for path, facts in steps:
        touched = {type(i).__name__: i.update(path, facts) for i in indexes}
        assert len(set(touched.values())) == 1, (path, touched)


def assert_same(memory: MemoryIndex, redis_index: RedisIndex, values: list[str]) -> None:
    wanted = [*values, "never held"]
    for relation in LOOKED_UP:
        assert redis_index.who_many(relation, wanted) == memory.who_many(relation, wanted)
        assert redis_index.exists_many(relation, wanted) == memory.exists_many(relation, wanted)
        counts = memory.count_many(relation, wanted)
        assert redis_index.count_many(relation, wanted) == counts
        assert counts == {v: len(memory.who(relation, v)) for v in wanted}
        for value in wanted[::37]:
            assert redis_index.who(relation, value) == memory.who(relation, value)
    pairs = [(relation, v) for relation in LOOKED_UP for v in wanted[::5]]
    assert redis_index.who_pairs(pairs) == memory.who_pairs(pairs) == {
        (relation, v): memory.who(relation, v) for relation, v in pairs}
    assert redis_index.paths() == memory.paths()
    for path in memory.paths():  # through JSON, as ever: empty relations are left out
        assert redis_index.facts(path).to_json() == memory.facts(path).to_json()
    assert redis_index.facts("never indexed.py") is None
    asked = [*memory.paths()[::3], "never indexed.py"]
    assert {p: f and f.to_json() for p, f in redis_index.facts_many(asked).items()} == {
        p: f and f.to_json() for p, f in memory.facts_many(asked).items()}
    assert redis_index.present_many(asked) == memory.present_many(asked) == set(asked[:-1])


def entries(memory: MemoryIndex) -> int:
    """Distinct (relation, value) pairs the Redis index must hold for ``memory``'s facts."""
    return len({(r, v) for p in memory.paths() for r, vs in memory.facts(p).relations.items()
                for v in vs if r in LOOKED_UP})


def assert_holders_listed_once(r) -> None:
    """Long holder lists grow by appending: no id may be listed twice."""
    for key in r.scan_iter(names.index_spill(DETECTOR, ROOT, "*")):
        ids = r.get(key).split(b",")
        assert len(ids) == len(set(ids)), key


def meta(r) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(names.index_meta(DETECTOR, ROOT)).items()}


def random_steps(seed: int, count: int, paths: list[str], pool: list[str]) -> list:
    rng = random.Random(seed)
    return [(rng.choice(paths), None if rng.random() < 0.2 else random_facts(rng, pool))
            for _ in range(count)]


def test_every_lookup_agrees_with_the_memory_index_through_adds_changes_and_deletes(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    paths = [f"pkg/mod_{i}.py" for i in range(80)]
    for seed in range(3):
        replay([memory, redis_index], random_steps(seed, 250, paths, POOL))
        assert_same(memory, redis_index, [*POOL, COMMON])
        assert meta(r)["entries"] == entries(memory)
        assert_holders_listed_once(r)
    assert meta(r)["level"] >= 2  # the buckets did split along the way

    replay([memory, redis_index], [(p, None) for p in paths])
    assert_same(memory, redis_index, [*POOL, COMMON])
    # Nothing is left behind but the addressing, which keeps its level.
    assert [k.decode() for k in r.scan_iter("kloros:ix:*")] == [
        names.index_meta(DETECTOR, ROOT)]
    assert meta(r)["entries"] == 0


def test_buckets_stay_listpacks_and_a_long_holder_list_moves_out_and_back(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    rng = random.Random(7)
    paths = [f"m{i}.py" for i in range(60)]
    replay([memory, redis_index], [(p, random_facts(rng, POOL)) for p in paths])
    spill = names.index_spill(DETECTOR, ROOT, index.field("def", COMMON).hex())
    assert len(r.get(spill)) > index.INLINE_MAX
    buckets = list(r.scan_iter(names.index_bucket(DETECTOR, ROOT, "*")))
    assert len(buckets) > 1
    assert {r.object("encoding", b) for b in buckets} == {b"listpack"}

    replay([memory, redis_index], [(p, None) for p in paths[3:]])
    assert not r.exists(spill)  # three holders fit in the bucket again
    assert redis_index.who("def", COMMON) == {"m0.py", "m1.py", "m2.py"}
    assert_same(memory, redis_index, [*POOL, COMMON])


def test_paths_and_values_with_odd_bytes_round_trip(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    rng = random.Random(11)
    steps = []
    for n, path in enumerate(ODD_PATHS):
        held = frozenset(rng.sample(ODD_VALUES, 4) + [ODD_VALUES[n % len(ODD_VALUES)]])
        steps.append((path, FileFacts(relations={"def": held, "read": frozenset(ODD_PATHS)},
                                      data={"path": path})))
    replay([memory, redis_index], steps + [(ODD_PATHS[1], None), (ODD_PATHS[4], None)])
    assert_same(memory, redis_index, ODD_VALUES + ODD_PATHS)
    stored = set(r.hkeys(names.facts(DETECTOR, ROOT)))
    assert b"caf\xe9/\xff.py" in stored and b"new\nline.py" not in stored


def test_a_relation_that_is_not_indexed_is_touched_but_cannot_be_looked_up(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    facts = FileFacts(relations={"def": frozenset({"s:a"}), "sig": frozenset({"s:a#1"})})
    replay([memory, redis_index], [("a.py", facts)])
    assert redis_index.update("a.py", None) == {("def", "s:a"), ("sig", "s:a#1")}
    for view in (memory, redis_index):
        with pytest.raises(LookupError):
            view.who("sig", "s:a#1")
        with pytest.raises(LookupError):
            view.exists_many("sig", ["s:a#1"])
        with pytest.raises(LookupError):
            view.who_pairs([("def", "s:a"), ("sig", "s:a#1")])


def test_the_index_a_restore_writes_answers_as_the_one_updates_wrote(r):
    memory = MemoryIndex(DETECTOR)
    paths = [f"pkg/mod_{i}.py" for i in range(70)] + ODD_PATHS
    replay([memory], random_steps(5, 300, paths, POOL))
    texts = {p: json.dumps(memory.facts(p).to_json()) for p in memory.paths()}
    pipe = r.pipeline(transaction=True)
    for verb, key, value in index.index_writes(DETECTOR, ROOT, texts):
        pipe.hset(key, mapping=value) if verb == "hset" else pipe.set(key, value)
    pipe.execute()
    restored = RedisIndex(r, DETECTOR, ROOT)
    assert_same(memory, restored, [*POOL, COMMON])
    assert meta(r)["entries"] == entries(memory)
    # Updates carry on from what the restore wrote: new ids, the same addressing.
    replay([memory, restored], random_steps(6, 300, paths + ["late.py"], POOL))
    assert_same(memory, restored, [*POOL, COMMON])


def test_facts_stored_as_plain_json_are_read_and_a_snapshot_brings_them_into_the_index(
        r, tmp_path):
    facts = FileFacts(relations={"def": frozenset({"s:a"})}, data={"v": 1})
    r.hset(names.facts(DETECTOR, ROOT), "old.py", json.dumps(facts.to_json()))  # no id, no zlib
    assert RedisIndex(r, DETECTOR, ROOT).facts("old.py") == facts
    path = tmp_path / snapshot.SNAPSHOT_FILE
    snapshot.write_snapshot(r, path)
    r.flushall()

    assert snapshot.restore_snapshot(r, path) is True
    restored = RedisIndex(r, DETECTOR, ROOT)
    assert restored.who("def", "s:a") == {"old.py"}
    assert restored.facts("old.py") == facts


def test_a_lookup_after_another_writer_split_the_buckets_finds_every_value(r, redis_url):
    reader, memory = RedisIndex(r, DETECTOR, ROOT), MemoryIndex(DETECTOR)
    other = redis_client(redis_url)
    try:
        writer = RedisIndex(other, DETECTOR, ROOT)
        replay([memory, writer], [("first.py", FileFacts(relations={"def": frozenset(POOL[:10])}))])
        assert reader.who_many("def", POOL[:10]) == memory.who_many("def", POOL[:10])
        before = meta(r)["level"]
        replay([memory, writer], [("big.py", FileFacts(relations={"def": frozenset(POOL)}))])
        assert meta(r)["level"] > before
        assert_same(memory, reader, POOL)
    finally:
        other.close()


class Interleaved:
    """A real client that lets another writer in once, right after its first read."""

    def __init__(self, client, between) -> None:
        self._client, self._between = client, between

    def pipeline(self, *args, **kwargs):
        pipe = self._client.pipeline(*args, **kwargs)
        if self._between is not None:
            between, self._between, execute = self._between, None, pipe.execute

            def execute_then_let_the_other_in():
                replies = execute()
                between()
                return replies

            pipe.execute = execute_then_let_the_other_in
        return pipe

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_update_whose_file_changed_after_it_was_read_is_diffed_again(r):
    first = FileFacts(relations={"def": frozenset({"s:a", "s:b"})})
    meanwhile = FileFacts(relations={"def": frozenset({"s:b", "s:c"}), "read": frozenset({"x"})})
    last = FileFacts(relations={"def": frozenset({"s:c", "s:d"})})
    RedisIndex(r, DETECTOR, ROOT).update("f.py", first)
    other = RedisIndex(r, DETECTOR, ROOT)
    late = RedisIndex(Interleaved(r, lambda: other.update("f.py", meanwhile)), DETECTOR, ROOT)

    touched = late.update("f.py", last)

    assert touched == {("def", "s:b"), ("def", "s:d"), ("read", "x")}  # against `meanwhile`
    memory = MemoryIndex(DETECTOR)
    replay([memory], [("f.py", last)])
    assert_same(memory, RedisIndex(r, DETECTOR, ROOT), ["s:a", "s:b", "s:c", "s:d", "x"])


def test_a_new_file_whose_id_another_writer_took_meanwhile_takes_the_next(r):
    facts = FileFacts(relations={"def": frozenset({COMMON, "s:a"})})
    other = RedisIndex(r, DETECTOR, ROOT)
    late = RedisIndex(Interleaved(r, lambda: other.update("first.py", facts)), DETECTOR, ROOT)

    late.update("second.py", facts)

    stored = {p: index._split_stored(raw)[0]
              for p, raw in r.hgetall(names.facts(DETECTOR, ROOT)).items()}
    assert stored == {b"first.py": 1, b"second.py": 2}
    assert meta(r)["ids"] == 2
    memory = MemoryIndex(DETECTOR)
    replay([memory], [("first.py", facts), ("second.py", facts)])
    assert_same(memory, RedisIndex(r, DETECTOR, ROOT), [COMMON, "s:a"])


def test_an_update_racing_a_split_is_addressed_again(r):
    memory = MemoryIndex(DETECTOR)
    other = RedisIndex(r, DETECTOR, ROOT)
    grow = [("big.py", FileFacts(relations={"def": frozenset(POOL)}))]
    late = RedisIndex(Interleaved(r, lambda: replay([memory, other], grow)), DETECTOR, ROOT)
    small = FileFacts(relations={"def": frozenset({COMMON, POOL[0]})})

    late.update("small.py", small)

    assert meta(r)["level"] > 0
    replay([memory], [("small.py", small)])
    assert_same(memory, RedisIndex(r, DETECTOR, ROOT), [*POOL, COMMON])


def update_concurrently(redis_url: str, detector: str, root: str,
                        make_facts) -> None:
    """Two writers, each on its own connection, updating 150 times at once: every third
    update on the same file, the rest on 20 files of their own; ``make_facts(rng)``
    gives the facts (15 % of updates delete instead)."""
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(worker: int) -> None:
        client = redis_client(redis_url)
        try:
            view, rng = RedisIndex(client, detector, root), random.Random(worker)
            start.wait()
            for n in range(150):
                path = "shared.py" if n % 3 == 0 else f"w{worker}/{rng.randrange(20)}.py"
                view.update(path, None if rng.random() < 0.15 else make_facts(rng))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_concurrent_writers_sharing_buckets_and_a_file_leave_a_consistent_index(r, redis_url):
    update_concurrently(redis_url, DETECTOR, ROOT, lambda rng: random_facts(rng, POOL[:120]))
    # Whichever writer won each file, the index inverts exactly the facts stored.
    redis_index, memory = RedisIndex(r, DETECTOR, ROOT), MemoryIndex(DETECTOR)
    replay([memory], [(p, redis_index.facts(p)) for p in redis_index.paths()])
    assert_same(memory, redis_index, [*POOL[:120], COMMON])
    assert meta(r)["entries"] == entries(memory)
    assert_holders_listed_once(r)
