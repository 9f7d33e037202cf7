"""Updates read ahead, as a batch makes them under the root's lock: what ``read_ahead``
read once and what each update script answers stand in for the read before each
update, and leave exactly the index (every key, every value) that the same updates
one at a time leave, their script calls sent one by one or queued and sent together
(``pipelined``).  What another writer changed meanwhile is read again and the update
retried, never applied over; a queued update whose caller was told too little of what
it changed is refused."""

from __future__ import annotations

import contextlib
import random
import re

import pytest
import redis

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.state import index
from kloros_tasks.state.index import RedisIndex
from kloros_tasks.work.batchindex import BatchIndex

ROOT = "repo"
RELATION = {names.KNOWLEDGE: "links", names.CAPABILITY: "needs"}  # "needs": ordered


def facts(detector: str, values) -> FileFacts:
    return FileFacts(relations={RELATION[detector]: frozenset(values), "py": frozenset({"1"})})


def dump(r) -> dict:
    """Every kloros:* key with its type and whole value."""
    read = {"hash": r.hgetall, "string": r.get, "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            "list": lambda k: r.lrange(k, 0, -1)}
    return {key: (kind, read[kind](key)) for key in r.scan_iter(match="kloros:*")
            if (kind := r.type(key).decode())}


def same_holders(index_dump: dict) -> dict:
    """``dump`` with each packed holder list's ids sorted: updates made in another order
    (a queued one made again after later ones) append the same ids in another order."""
    def ids(value):
        return b",".join(sorted(value.split(b","))) if re.fullmatch(rb"\d+(,\d+)*", value) \
            else value

    out = {}
    for key, (kind, value) in index_dump.items():
        if b":b:" in key:
            value = {f: ids(v) for f, v in value.items()}
        elif b":h:" in key:
            value = ids(value)
        out[key] = (kind, value)
    return out


def batches(detector: str, seed: int) -> list[list[tuple[str, FileFacts | None]]]:
    """Batches of changes of 150 paths: new files with many values each (the buckets
    split many times), changes, deletions (of indexed files and of files never
    indexed), a path changed twice in one batch, and a file of more values than one
    script call applies (slices)."""
    rng = random.Random(seed)
    pool = [f"v{i}" for i in range(3000)]
    paths = [f"p/{i:03}.py" for i in range(150)]

    def change(path: str) -> tuple[str, FileFacts | None]:
        if rng.random() < 0.15:
            return path, None
        return path, facts(detector, rng.sample(pool, rng.randrange(0, 40)) + ["common"])

    out = [[change(p) for p in rng.sample(paths, 60)] for _ in range(6)]
    out[2] += [("big.py", facts(detector, pool[:2 * index.CHUNK_OPS + 7])), out[2][0]]
    out[4] += [("big.py", facts(detector, pool[index.CHUNK_OPS:]))]
    return out


def count_reads(redis_index: RedisIndex) -> list[bytes]:
    """The keys of the updates that read Redis before their script call."""
    reads, read = [], redis_index._read_for_update

    def counting(key: bytes):
        reads.append(key)
        return read(key)

    redis_index._read_for_update = counting
    return reads


def count_round_trips(r) -> list[int]:
    """Counts (in a one-item list) the requests ``r`` sends: a pipeline counts once."""
    trips = [0]
    for name in ("execute_command", "pipeline"):
        real = getattr(r, name)

        def counting(*args, _real=real, **kwargs):
            trips[0] += 1
            return _real(*args, **kwargs)

        setattr(r, name, counting)
    return trips


def run(r, detector: str, steps, *, ahead: bool, keep_journal: bool, queued: bool = False,
        journal: bool = True, settle: bool = True):
    """Each batch's updates, then (``settle``) its settling; (touched of each update,
    the index's keys, the keys the updates read before their script call, requests
    sent)."""
    redis_index = RedisIndex(r, detector, ROOT, keep_journal=keep_journal)
    reads, touched = count_reads(redis_index), []
    trips = count_round_trips(r)
    for batch in steps:
        with redis_index.pipelined() if queued else contextlib.nullcontext():
            known = redis_index.read_ahead(p for p, _ in batch) if ahead else None
            touched += [redis_index.update(p, f, ahead=known, journal=journal)
                        for p, f in batch]
            if settle:
                redis_index.settled_many(p for p, _ in batch)
    sent = trips[0]
    return touched, dump(r), reads, sent


@pytest.mark.parametrize("detector", [names.KNOWLEDGE, names.CAPABILITY])
@pytest.mark.parametrize("keep_journal", [True, False])
def test_updates_read_ahead_leave_the_index_updates_one_at_a_time_leave(r, detector,
                                                                        keep_journal):
    steps = batches(detector, seed=7)
    one_at_a_time, alone, reads, _ = run(r, detector, steps, ahead=False,
                                         keep_journal=keep_journal)
    assert len(reads) == sum(map(len, steps))
    r.flushall()
    read_ahead, together, reads, trips = run(r, detector, steps, ahead=True,
                                             keep_journal=keep_journal)
    assert reads == []  # every update took what was read ahead or what the last left
    assert read_ahead == one_at_a_time
    assert together == alone
    r.flushall()
    r.config_resetstat()
    queued, sent_together, reads, queued_trips = run(r, detector, steps, ahead=True,
                                                     keep_journal=keep_journal, queued=True)
    assert queued == one_at_a_time
    assert sent_together == alone
    assert reads == [b"big.py", b"big.py"]  # sent in slices, after the queue was sent
    # One script call per file read ahead only for big.py's slices; the other updates
    # of a batch go in one call of the batch script per FLUSH_OPS operations or so.
    calls = r.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert calls <= 3 * len(steps) + 6 < sum(map(len, steps)) // 4
    # A request per update read ahead; queued: per batch the read-ahead, a MULTI/EXEC
    # per FLUSH_OPS operations or so, the settling, and big.py's reads and slices.
    assert trips > sum(map(len, steps)) // 2
    assert queued_trips <= 4 * len(steps) + 10
    meta = together[names.index_meta(detector, ROOT).encode()][1]
    assert int(meta[b"level"]) >= 5  # the buckets split, many times
    if detector == names.CAPABILITY:
        assert meta[b"ordered"] == b"1"
        assert names.index_order(detector, ROOT, index.field("needs", "common").hex()
                                 ).encode() in together


DETECTOR = names.KNOWLEDGE
PATHS = ["a.md", "b.md", "new.md"]


def first(r, keep_journal: bool = True) -> RedisIndex:
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=keep_journal)
    redis_index.update("a.md", facts(DETECTOR, ["x", "y"]))
    redis_index.update("b.md", facts(DETECTOR, ["y"]))
    redis_index.settled("b.md")  # a.md's change is not settled yet: its journal entry stays
    return redis_index


def other_writer_changes_a(r) -> None:
    RedisIndex(r, DETECTOR, ROOT, keep_journal=True).update("a.md", facts(DETECTOR, ["z"]))


def other_writer_adds_a_file(r) -> None:  # claims the id "new.md" was to claim
    RedisIndex(r, DETECTOR, ROOT).update("other.md", facts(DETECTOR, ["w"]))


def other_writer_splits_buckets(r) -> None:  # the addressing read ahead changes
    RedisIndex(r, DETECTOR, ROOT).update("many.md", facts(DETECTOR, map(str, range(400))))


def other_writer_settles_a(r) -> None:  # the journal entry read ahead goes
    RedisIndex(r, DETECTOR, ROOT).settled("a.md")


def lose_connection_on_second_slice(redis_index: RedisIndex):
    """Make ``redis_index``'s update fail after its first script slice, as a connection
    lost half-way through a change would; returns the script call it replaced."""
    script, done = redis_index._update, [0]

    def failing(keys, args):
        if done[0] == 1:
            raise redis.ConnectionError("connection lost mid-update")
        done[0] += 1
        return script(keys=keys, args=args)

    redis_index._update = failing
    return script


def other_writer_is_cut_short_on_a(r) -> None:  # journals a change, applies part of it
    cut = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    lose_connection_on_second_slice(cut)
    with pytest.raises(redis.ConnectionError):
        cut.update("a.md", facts(DETECTOR, [f"c{i}" for i in range(index.CHUNK_OPS + 5)]))


def three_updates(redis_index: RedisIndex, ahead) -> list:
    # The new file first: the meta an update's script answers is Redis's own, so a
    # stale id count is seen only by the first update after the read-ahead.
    return [redis_index.update("new.md", facts(DETECTOR, ["x", "q"]), ahead=ahead),
            redis_index.update("a.md", facts(DETECTOR, ["y", "q"]), ahead=ahead),
            redis_index.update("b.md", None, ahead=ahead)]


def stale_read_ahead(r, meanwhile):
    """(touched, index) of ``three_updates`` after ``meanwhile``, each reading Redis
    first; then the same start again, with a read-ahead made before ``meanwhile``:
    (the index, the read-ahead)."""
    redis_index = first(r)
    meanwhile(r)
    expected, index_expected = three_updates(redis_index, None), dump(r)
    r.flushall()
    redis_index = first(r)
    ahead = redis_index.read_ahead(PATHS)
    meanwhile(r)
    return expected, index_expected, redis_index, ahead


@pytest.mark.parametrize("meanwhile", [
    other_writer_changes_a, other_writer_adds_a_file, other_writer_splits_buckets,
    other_writer_settles_a, other_writer_is_cut_short_on_a])
def test_what_another_writer_changed_after_the_read_ahead_is_read_again(r, meanwhile):
    """The same updates with another writer's change between the read-ahead and them
    leave what they leave when each reads Redis first: nothing stale is applied."""
    expected, index_expected, redis_index, ahead = stale_read_ahead(r, meanwhile)
    reads = count_reads(redis_index)
    assert three_updates(redis_index, ahead) == expected
    assert dump(r) == index_expected
    assert reads  # the stale read was noticed, and read again


def test_an_update_cut_short_forgets_what_was_read_ahead_of_it(r):
    redis_index = first(r)
    ahead = redis_index.read_ahead(PATHS)
    script = lose_connection_on_second_slice(redis_index)
    big = facts(DETECTOR, [f"c{i}" for i in range(index.CHUNK_OPS + 5)])
    with pytest.raises(redis.ConnectionError):
        redis_index.update("a.md", big, ahead=ahead)
    redis_index._update = script
    reads = count_reads(redis_index)
    touched = redis_index.update("a.md", facts(DETECTOR, ["y"]), ahead=ahead)
    assert reads == [b"a.md"]  # read again: the journal entry it left is the repair's
    assert ("links", "c0") in touched and ("links", "x") in touched
    assert redis_index.who_many("links", ["c0", "c504", "x", "y"]) == {
        "c0": frozenset(), "c504": frozenset(), "x": frozenset(),
        "y": frozenset({"a.md", "b.md"})}


def test_a_batch_index_reads_ahead_its_files_and_the_package_markers_above_them(r):
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    redis_index.update("pkg/__init__.py", facts(DETECTOR, ["init"]))
    batch = BatchIndex(redis_index, remember=True)
    batch.read_ahead(["pkg/a.py", "pkg/b.py"])
    reads = count_reads(redis_index)
    hgets = []
    real = r.hget
    r.hget = lambda *args: hgets.append(args) or real(*args)
    assert batch.facts("pkg/__init__.py") == facts(DETECTOR, ["init"])
    assert batch.facts("__init__.py") is None
    batch.update("pkg/a.py", facts(DETECTOR, ["init", "a"]))
    batch.update("pkg/b.py", facts(DETECTOR, ["a"]))
    batch.update("pkg/a.py", None)
    assert reads == [] and hgets == []
    assert redis_index.who_many("links", ["init", "a"]) == {
        "init": frozenset({"pkg/__init__.py"}), "a": frozenset({"pkg/b.py"})}


@pytest.mark.parametrize(("meanwhile", "refused"), [
    (other_writer_changes_a, True), (other_writer_adds_a_file, False),
    (other_writer_splits_buckets, False), (other_writer_settles_a, False),
    (other_writer_is_cut_short_on_a, True)])
def test_queued_updates_another_writer_made_stale_are_made_again_or_refused(r, meanwhile,
                                                                           refused):
    """A queued call that finds what it was computed from changed is made again once
    the queue is sent, reading Redis first.  If that changes pairs the caller was not
    told of (another writer changed the file, or journaled a change of it), the
    queue's sending raises WatchError: the caller, a batch under the root's lock, is
    tried again, and its second try leaves the index the updates one at a time leave.
    Otherwise the caller may have been told of more pairs (it evaluates more files),
    never fewer."""
    expected, index_expected, redis_index, ahead = stale_read_ahead(r, meanwhile)
    if refused:
        with pytest.raises(redis.WatchError), redis_index.pipelined():
            three_updates(redis_index, ahead)
        assert three_updates(redis_index, redis_index.read_ahead(PATHS)) == expected
    else:
        with redis_index.pipelined():  # the caller may be told more, never less
            told = three_updates(redis_index, ahead)
            assert all(map(frozenset.issuperset, told, expected))
    assert same_holders(dump(r)) == same_holders(index_expected)


def test_queued_calls_are_sent_again_when_redis_lost_the_script(r):
    expected, index_expected = run(r, DETECTOR, batches(DETECTOR, seed=3)[:1], ahead=False,
                                   keep_journal=True)[:2]
    r.flushall()
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    (batch,) = batches(DETECTOR, seed=3)[:1]
    with redis_index.pipelined():
        ahead = redis_index.read_ahead(p for p, _ in batch)
        touched = [redis_index.update(p, f, ahead=ahead) for p, f in batch[:5]]
        r.script_flush()  # a Redis restarted, say: its script cache is empty
        touched += [redis_index.update(p, f, ahead=ahead) for p, f in batch[5:]]
        redis_index.settled_many(p for p, _ in batch)
    assert touched == expected
    assert dump(r) == index_expected


@pytest.mark.parametrize("read", [
    lambda ix: ix.facts("q.md") == facts(DETECTOR, ["x"]),
    lambda ix: ix.facts_many(["q.md"])["q.md"] == facts(DETECTOR, ["x"]),
    lambda ix: ix.present_many(["q.md"]) == {"q.md"},
    lambda ix: ix.who("links", "x") == {"q.md"},
    lambda ix: ix.who_pairs([("links", "x")]) == {("links", "x"): {"q.md"}},
    lambda ix: ix.exists_many("links", ["x"]) == {"x"},
    lambda ix: ix.count_many("links", ["x"]) == {"x": 1},
    lambda ix: ix.paths() == ["q.md"],
    lambda ix: ix.size() == 1,
    lambda ix: ix.pending("q.md") == {("links", "x"), ("py", "1")},
    lambda ix: ix.pending_many(["q.md"]) == {"q.md"},
    lambda ix: ix.read_ahead(["q.md"]).facts("q.md") == facts(DETECTOR, ["x"]),
    lambda ix: (ix.settled("q.md"), ix.r.hlen(names.index_pending(DETECTOR, ROOT)))[1] == 0,
    lambda ix: (ix.settled_many(["q.md"]),
                ix.r.hlen(names.index_pending(DETECTOR, ROOT)))[1] == 0,
])
def test_whatever_reads_or_writes_the_index_sends_the_queue_first(r, read):
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    with redis_index.pipelined():
        ahead = redis_index.read_ahead(["q.md"])
        redis_index.update("q.md", facts(DETECTOR, ["x"]), ahead=ahead)
        assert r.hlen(names.facts(DETECTOR, ROOT)) == 0  # queued, not sent
        assert read(redis_index)


def test_what_is_queued_when_the_block_raises_is_dropped(r):
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    with pytest.raises(KeyError), redis_index.pipelined():
        redis_index.update("q.md", facts(DETECTOR, ["x"]),
                           ahead=redis_index.read_ahead(["q.md"]))
        raise KeyError("the caller failed half-way")
    assert dump(r) == {}
    redis_index.update("z.md", facts(DETECTOR, ["x"]))  # not queued any more
    assert redis_index.paths() == ["z.md"]


def test_queued_updates_not_journaled_leave_the_index_and_no_journal_entry(r):
    """A caller that evaluates every file anyway (a burst deferring the whole root)
    has its one-call changes made without a journal entry; the index is the same. A
    change of several calls, or of a file whose earlier change left an entry, is
    journaled still: a cut one is repaired from it."""
    steps = batches(DETECTOR, seed=11)
    journaled, index_journaled = run(r, DETECTOR, steps, ahead=True, keep_journal=True,
                                     queued=True)[:2]
    r.flushall()
    bare, index_bare = run(r, DETECTOR, steps, ahead=True, keep_journal=True, queued=True,
                           journal=False)[:2]
    # Told what each change changed, without what an unsettled entry adds (a path
    # changed twice in one batch: its first change's pairs).
    assert all(map(frozenset.issubset, bare, journaled)) and bare != journaled
    assert index_bare == index_journaled
    r.flushall()
    run(r, DETECTOR, steps[:3], ahead=True, keep_journal=True, queued=True, journal=False,
        settle=False)  # the third batch changes big.py in several calls
    pending = names.index_pending(DETECTOR, ROOT)
    assert r.hkeys(pending) == [b"big.py"]
    redis_index = RedisIndex(r, DETECTOR, ROOT, keep_journal=True)
    with redis_index.pipelined():
        ahead = redis_index.read_ahead(["big.py", "p/000.py"])
        redis_index.update("big.py", facts(DETECTOR, ["after"]), ahead=ahead, journal=False)
        redis_index.update("p/000.py", facts(DETECTOR, ["after"]), ahead=ahead, journal=False)
    assert redis_index.pending("big.py") is not None  # an entry left: journaled again
    assert redis_index.pending("p/000.py") is None
