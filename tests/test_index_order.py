"""``first_many``: the first holders of a value in path order, and how many there are,
answered by the Redis index from its sorted sets exactly as the in-memory index
answers, through adds, removals and owner changes, concurrent writers, a restore,
and an index stored before the sets existed."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from test_index import update_concurrently

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts, Holders, path_order
from kloros_tasks.state import index, snapshot
from kloros_tasks.state.index import MemoryIndex, RedisIndex
from kloros_tasks.state.index_order import ORDER_SCRIPT

DETECTOR, ROOT = names.CAPABILITY, "repo"
NAMES = [f"top{i}" for i in range(40)]
COMMON = "asgiref"  # needed by nearly every file: its holder list spills
ODD_PATHS = [b"caf\xe9/\xff.py".decode("utf-8", "surrogateescape"), "new\nline.py",
             "comma,1,2.py", "colon:3.py", "*", "12", "space d.py", "ünï/cøde.py", "Z.py",
             "a/b.py", "a.py", "a/__init__.py", "\udcff.py"]


def needs(*tops: str) -> FileFacts:
    return FileFacts(relations={"needs": frozenset(tops), "py": frozenset({"1"})})


def random_facts(rng: random.Random) -> FileFacts:
    tops = rng.sample(NAMES, rng.randrange(0, 6)) + ([COMMON] if rng.random() < 0.9 else [])
    return needs(*tops)


def replay(indexes: list, steps: list[tuple[str, FileFacts | None]]) -> None:
    for path, facts in steps:
        touched = {type(i).__name__: i.update(path, facts) for i in indexes}
        assert len(set(touched.values())) == 1, (path, touched)


def expected(memory: MemoryIndex, value: str, n: int) -> Holders:
    """What ``first_many`` must answer, from the complete holder set."""
    held = sorted(memory.who("needs", value), key=path_order)
    return Holders(tuple(held[:n]), len(held))


def assert_same_order(memory: MemoryIndex, redis_index: RedisIndex, values: list[str]) -> None:
    wanted = [*values, "never needed"]
    for n in (0, 1, 2, 11):
        answer = redis_index.first_many("needs", wanted, n)
        assert answer == memory.first_many("needs", wanted, n)
        assert answer == {v: expected(memory, v, n) for v in wanted}


def steps(seed: int, count: int, paths: list[str]) -> list:
    rng = random.Random(seed)
    return [(rng.choice(paths), None if rng.random() < 0.2 else random_facts(rng))
            for _ in range(count)]


def order_keys(r) -> list[bytes]:
    return list(r.scan_iter(names.index_order(DETECTOR, ROOT, "*")))


def test_first_holders_agree_with_the_memory_index_through_adds_changes_and_deletes(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    paths = [f"pkg{i % 4}/mod_{i}.py" for i in range(90)] + ODD_PATHS
    for seed in range(3):
        replay([memory, redis_index], steps(seed, 300, paths))
        assert_same_order(memory, redis_index, [*NAMES, COMMON])
    assert redis_index.first_many("needs", [COMMON], 1)[COMMON].count > 40

    replay([memory, redis_index], [(p, None) for p in paths])
    assert_same_order(memory, redis_index, [*NAMES, COMMON])
    assert order_keys(r) == []  # nothing left behind


def test_the_first_holder_moves_when_it_goes_and_when_a_smaller_path_comes(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    both = [memory, redis_index]
    replay(both, [(f"m/{c}.py", needs(COMMON)) for c in "fdbhc"])
    for i in both:
        assert i.first_many("needs", [COMMON], 2)[COMMON] == Holders(("m/b.py", "m/c.py"), 5)

    replay(both, [("m/b.py", None)])  # the owner's file is deleted
    for i in both:
        assert i.first_many("needs", [COMMON], 1)[COMMON] == Holders(("m/c.py",), 4)
    replay(both, [("m/c.py", needs("other"))])  # the next one stops needing it
    for i in both:
        assert i.first_many("needs", [COMMON], 1)[COMMON] == Holders(("m/d.py",), 3)
    replay(both, [("a/z.py", needs(COMMON, "other"))])  # a smaller path appears
    for i in both:
        assert i.first_many("needs", [COMMON, "other"], 1) == {
            COMMON: Holders(("a/z.py",), 4), "other": Holders(("a/z.py",), 2)}


def test_path_order_is_byte_order_for_odd_paths(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    replay([memory, redis_index], [(p, needs(COMMON)) for p in ODD_PATHS])
    first = redis_index.first_many("needs", [COMMON], len(ODD_PATHS))[COMMON].first
    assert list(first) == sorted(ODD_PATHS, key=path_order)
    assert first[:3] == ("*", "12", "Z.py")
    assert memory.first_many("needs", [COMMON], len(ODD_PATHS))[COMMON].first == first


def test_only_relations_kept_in_order_can_be_asked(r):
    for view in (MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)):
        with pytest.raises(LookupError):
            view.first_many("py", ["1"], 1)
    # The scan's index (no detector named) answers for any relation.
    memory = MemoryIndex()
    memory.update("b.py", needs(COMMON))
    memory.update("a.py", needs(COMMON))
    assert memory.first_many("py", ["1"], 1) == {"1": Holders(("a.py",), 2)}


def test_the_index_a_restore_writes_answers_in_order_and_updates_carry_on(r, tmp_path):
    memory = MemoryIndex(DETECTOR)
    paths = [f"pkg/mod_{i}.py" for i in range(60)] + ODD_PATHS
    replay([memory], steps(5, 250, paths))
    texts = {p: json.dumps(memory.facts(p).to_json()) for p in memory.paths()}
    snapshot._write_commands(r, index.index_writes(DETECTOR, ROOT, texts))
    restored = RedisIndex(r, DETECTOR, ROOT)
    assert_same_order(memory, restored, [*NAMES, COMMON])
    replay([memory, restored], steps(6, 250, paths + ["0-first.py"]))
    assert_same_order(memory, restored, [*NAMES, COMMON])


def test_an_index_stored_before_the_sets_existed_answers_from_its_holder_lists(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    paths = [f"pkg/mod_{i}.py" for i in range(50)]
    replay([memory, redis_index], steps(8, 150, paths))
    # What an older release left: no mark and no sets.
    r.hdel(names.index_meta(DETECTOR, ROOT), "ordered")
    for key in order_keys(r):
        r.delete(key)

    assert_same_order(memory, redis_index, [*NAMES, COMMON])
    replay([memory, redis_index], steps(9, 150, paths))  # updates do not start sets
    assert order_keys(r) == []
    assert_same_order(memory, redis_index, [*NAMES, COMMON])


def test_the_first_file_marks_a_new_index_even_when_it_needs_nothing(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    replay([memory, redis_index], [("pyproject.toml", FileFacts(
        relations={"declares": frozenset({"celery"})}))])
    assert r.hget(names.index_meta(DETECTOR, ROOT), "ordered") == b"1"
    replay([memory, redis_index], steps(10, 100, [f"m{i}.py" for i in range(30)]))
    assert order_keys(r)
    assert_same_order(memory, redis_index, [*NAMES, COMMON])


def test_an_update_whose_script_redis_forgot_leaves_index_and_order_agreeing(r):
    memory, redis_index = MemoryIndex(DETECTOR), RedisIndex(r, DETECTOR, ROOT)
    replay([memory, redis_index], [("b.py", needs(COMMON)), ("c.py", needs(COMMON))])
    r.script_flush()  # as after a restart of Redis
    replay([memory, redis_index], [("a.py", needs(COMMON)), ("c.py", None)])
    assert_same_order(memory, redis_index, [COMMON])


def test_concurrent_writers_leave_the_order_sets_matching_the_facts(r, redis_url):
    update_concurrently(redis_url, DETECTOR, ROOT, random_facts)
    redis_index, memory = RedisIndex(r, DETECTOR, ROOT), MemoryIndex(DETECTOR)
    replay([memory], [(p, redis_index.facts(p)) for p in redis_index.paths()])
    assert_same_order(memory, redis_index, [*NAMES, COMMON])


def test_the_order_script_applies_several_paths_at_once_each_only_if_stored_as_meant(r):
    facts, meta = names.facts(DETECTOR, ROOT), names.index_meta(DETECTOR, ROOT)
    prefix = names.index_order(DETECTOR, ROOT, "")
    r.eval(ORDER_SCRIPT, 2, facts, meta, "mark")  # an empty index is marked
    r.hset(facts, mapping={"a.py": b"A", "b.py": b"B"})
    r.eval(ORDER_SCRIPT, 2, facts, meta, "mark")  # a filled one is left as it is
    assert r.hget(meta, "ordered") == b"1"
    x, y = index.field("needs", "x"), index.field("needs", "y")
    sha = {p: hashlib.sha1(v).hexdigest() for p, v in (("a", b"A"), ("b", b"B"))}
    done = r.eval(ORDER_SCRIPT, 2, facts, meta, "apply", prefix,
                  "b.py", sha["b"], 2, "+", x, "+", y,
                  "a.py", "not what is stored", 1, "+", x,  # refused: left alone
                  "gone.py", "", 1, "-", y,
                  "a.py", sha["a"], 1, "+", y)
    assert done == 3
    assert r.zrange(prefix + x.hex(), 0, -1) == [b"b.py"]
    assert r.zrange(prefix + y.hex(), 0, -1) == [b"a.py", b"b.py"]
    r.hdel(meta, "ordered")
    assert r.eval(ORDER_SCRIPT, 2, facts, meta, "apply", prefix, "a.py", sha["a"], 1, "-", y) == 0
    assert r.zrange(prefix + y.hex(), 0, -1) == [b"a.py", b"b.py"]
