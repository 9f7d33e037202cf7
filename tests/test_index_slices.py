"""A file of tens of thousands of values: the index applies it in slices that keep
Redis responsive, and an update cut short between two slices is repaired by the next
update of the file, whatever its new facts are."""

from __future__ import annotations

import pytest
import redis

from kloros_tasks import connections, names
from kloros_tasks.connections import TRANSIENT_ERRORS, RedisBusyError, is_transient, redis_client
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.state import index
from kloros_tasks.state.index import MemoryIndex, RedisIndex

DETECTOR, ROOT = names.KNOWLEDGE, "repo"


def many(n: int, prefix: str = "d") -> FileFacts:
    return FileFacts(relations={"links": frozenset(f"{prefix}/{i}.md" for i in range(n))})


def assert_agree(memory: MemoryIndex, redis_index: RedisIndex, values: list[str]) -> None:
    assert redis_index.count_many("links", values) == memory.count_many("links", values)
    assert redis_index.who_many("links", values) == memory.who_many("links", values)
    assert redis_index.paths() == memory.paths()


def test_twenty_thousand_values_go_in_through_slices_with_a_bounded_script_each(r):
    calls: list[int] = []
    redis_index = RedisIndex(r, DETECTOR, ROOT)
    script = redis_index._update

    def counting(keys, args):
        calls.append(len(keys))
        return script(keys=keys, args=args)

    redis_index._update = counting
    memory = MemoryIndex(DETECTOR)
    big = many(20_000)
    # A single script once tried to move half of these in one unpack() and failed.
    for i in (redis_index, memory):
        i.update("big.md", big)
        i.update("small.md", many(3))
    assert len(calls) > 20_000 // index.CHUNK_OPS
    bound = 4 + 2 * index.CHUNK_OPS + 2 * index.MAX_SPLITS
    assert max(calls) <= bound
    assert_agree(memory, redis_index, [f"d/{i}.md" for i in range(0, 20_000, 97)] + ["d/1.md"])
    assert not r.exists(names.index_pending(DETECTOR, ROOT))


class Cut(Exception):
    pass


def cut_after(redis_index: RedisIndex, slices: int) -> None:
    """Make the update fail after ``slices`` script calls, as a lost connection would."""
    script, done = redis_index._update, [0]

    def failing(keys, args):
        if done[0] == slices:
            raise redis.ConnectionError("connection lost mid-update")
        done[0] += 1
        return script(keys=keys, args=args)

    redis_index._update = failing


@pytest.mark.parametrize("then", ["same", "other", "gone"])
def test_an_update_cut_short_between_slices_is_repaired_by_the_next_update(r, then):
    memory = MemoryIndex(DETECTOR)
    for i in (memory, RedisIndex(r, DETECTOR, ROOT)):
        i.update("big.md", many(2_000, "old"))
        i.update("other.md", many(50, "old"))  # shares values with big.md
    broken = RedisIndex(r, DETECTOR, ROOT)
    cut_after(broken, 3)
    with pytest.raises(redis.ConnectionError):
        broken.update("big.md", many(2_000, "new"))
    # The retry (same facts), a newer version, or the file deleted: all repair it.
    final = {"same": many(2_000, "new"), "other": many(700, "new"),
             "gone": None}[then]
    redis_index = RedisIndex(r, DETECTOR, ROOT)
    touched = redis_index.update("big.md", final)
    memory.update("big.md", final)
    values = [f"{p}/{i}.md" for p in ("old", "new") for i in range(0, 2_000, 7)]
    assert_agree(memory, redis_index, values)
    assert {("links", "new/0.md"), ("links", "old/0.md")} <= touched
    entries = int(r.hget(names.index_meta(DETECTOR, ROOT), "entries"))
    assert entries == len({v for p in memory.paths() for v in memory.facts(p).relations["links"]})
    assert not r.exists(names.index_pending(DETECTOR, ROOT))


def test_a_kept_journal_entry_lasts_until_the_change_is_settled(r):
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    redis_index.update("a.md", many(3))
    assert redis_index.pending("a.md") == {("links", f"d/{i}.md") for i in range(3)}
    # Not settled: the next change reports the pairs of both.
    assert redis_index.update("a.md", many(1, "e")) == (
        {("links", f"d/{i}.md") for i in range(3)} | {("links", "e/0.md")})
    redis_index.settled("a.md")
    assert redis_index.pending("a.md") is None
    assert redis_index.update("a.md", many(2, "e")) == {("links", "e/1.md")}


@pytest.mark.parametrize("parser", [
    connections._PythonParser,
    pytest.param(connections._HiredisBusyParser, marks=pytest.mark.skipif(
        not connections.HIREDIS_AVAILABLE, reason="hiredis is not installed")),
])
def test_a_busy_redis_is_a_transient_error(r, redis_url, monkeypatch, parser):
    # Whichever parser reads the replies (hiredis when installed, else redis-py's own).
    monkeypatch.setattr(connections, "_Parser", parser)
    # A script that runs past busy-reply-threshold makes Redis answer BUSY to others.
    r.config_set("lua-time-limit", 100)  # busy-reply-threshold since Redis 7
    other = redis_client(redis_url, retries=0)
    blocker = redis_client(redis_url, socket_timeout=None)
    import threading  # noqa: PLC0415

    spin = "local t = redis.call('TIME'); local s = t[1] + 1.5; " \
           "while tonumber(redis.call('TIME')[1]) < s do end; return 1"
    thread = threading.Thread(target=lambda: blocker.eval(spin, 0))
    thread.start()
    try:
        import time  # noqa: PLC0415

        time.sleep(0.5)
        with pytest.raises(TRANSIENT_ERRORS) as caught:
            other.get("anything")
        assert isinstance(caught.value, RedisBusyError) and is_transient(caught.value)
    finally:
        thread.join()
        r.config_set("lua-time-limit", 5000)
        other.close()
        blocker.close()
    assert is_transient(redis.ResponseError("BUSY Redis is busy running a script."))
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key"))
