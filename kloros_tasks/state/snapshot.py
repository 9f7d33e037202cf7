"""A JSON snapshot of the state a lost Redis must not take with it.

Kept: the open-question ledger (``kloros:ledger``), the open question ids each file
owns (``kloros:owned:*``), what the producer last sent (``kloros:seen:*``) and the
per-file facts (``kloros:facts:*``, written as plain JSON although Redis keeps them
compressed).  The inverted indexes (``kloros:ix:*``) are a function of the facts, so
they are rebuilt from them on restore rather than stored: the two then always agree.
Queues, blobs, the stream and counters are in flight or rebuilt, and are not kept.

Restored into an empty Redis, the snapshot lets the pipeline carry on without
publishing again a question that is still open: the ledger and the owned sets say
what is open, the facts let the workers recognise content they already analysed,
and the seen hashes spare the watcher from sending unchanged files again.

The file is written atomically (a temporary file in the same directory, fsynced, then
``os.replace``), so a reader finds the previous snapshot or the new one, never half of
one, and streamed: keys found by SCAN and hashes read by HSCAN in bounded chunks, each
written out before the next is read, so the writer does not hold the whole state.
Redis bytes are decoded as UTF-8 with ``surrogateescape`` and written with
``ensure_ascii``, so any byte string (a non-UTF-8 file name, say) survives exactly.

A snapshot that cannot be read is renamed ``<name>.corrupted`` and logged, and
``restore_snapshot`` returns False: the watcher's reconciliation then sends every file
again and the detectors rebuild the index by rescanning.

Who keeps it: the watcher (``kloros-tasks watch``, under systemd or under ``up``):
it restores the snapshot before its first reconciliation and as soon as it finds Redis
emptied under it, and writes it every SNAPSHOT_EVERY seconds and at shutdown.
``kloros-tasks up`` also restores it before its children start, and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import redis

from kloros_tasks import names
from kloros_tasks.heap import give_back_memory
from kloros_tasks.routing import route
from kloros_tasks.state import index
from kloros_tasks.state.snapshot_file import (  # noqa: F401 - part of this module's API
    FORMAT,
    VERSION,
    AtomicFile,
    JsonStream,
    SnapshotError,
    Summary,
    begin_document,
    end_document,
    keep_previous,
    load_snapshot,
    previous_path,
    read_summary,
    summarise,
    write_atomically,
)

log = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.json"  # under KLOROS_STATE_DIR
SNAPSHOT_EVERY = 300.0  # seconds between snapshots written while running
CORRUPTED_SUFFIX = ".corrupted"
SCAN_COUNT = 1000  # keys per SCAN step
READ_BATCH = 2000  # keys read per MULTI/EXEC, so Redis is never blocked for long
DIGEST_FIELD = "_sha256"  # where engine.apply_change records the digest it analysed
_ENCODING, _ERRORS = "utf-8", "surrogateescape"

Hashes = dict[str, dict[str, str]]


def default_path(state_dir: str | os.PathLike) -> Path:
    """Where the snapshot of a state dir lives."""
    return Path(state_dir) / SNAPSHOT_FILE


# --- writing ----------------------------------------------------------------------------

def write_snapshot(client, path: str | os.PathLike) -> Summary:
    """Write the seen hashes, facts, owned sets and ledger to ``path`` as JSON,
    atomically, streamed: keys found by SCAN and hashes read by HSCAN, SCAN_COUNT at a
    time, each chunk written out before the next is read, so the writer's memory does
    not grow with the tree.

    The seen hashes are read before the facts, so that a change sent but not analysed
    yet shows as a seen entry that the facts do not confirm, and is sent again after a
    restore (see ``confirmed_seen``).  Raises redis errors and OSError; the previous
    snapshot then stays in place.  A snapshot this one would replace while holding far
    more is kept as ``<name>.previous`` (``snapshot_file.keep_previous``).
    """
    with AtomicFile(path) as out:
        doc = JsonStream(out)
        begin_document(doc, time.time())
        doc.begin("seen")
        for key in _keys(client, names.seen("*"), "hash"):
            _write_hash(doc, client, key)
        doc.end()
        doc.begin("facts")
        files = sum(_write_hash(doc, client, key, decode=index.facts_json)  # stored compressed
                    for d in names.DETECTORS for key in _keys(client, names.facts(d, "*"), "hash"))
        doc.end()
        doc.begin("owned")
        for keys in _chunks(_keys(client, names.owned("*", "*", "*"), "set"), READ_BATCH):
            _write_sets(doc, client, keys)
        doc.end()
        doc.begin("ledger")
        questions = _write_hash(doc, client, names.LEDGER.encode(), member=False)
        doc.end()
        summary = Summary(questions=questions, files=files)
        end_document(doc, summary)
        out.commit(summary)
    log.info("wrote state snapshot %s: %d open questions, %d indexed files",
             path, summary.questions, summary.files)
    return summary


def keep_snapshot(client, path: str | os.PathLike) -> Summary | None:
    """Best effort, for a running process: write the snapshot, unless Redis holds no
    file state (a flushed Redis must not overwrite the snapshot that restores it).
    A failure is logged and the previous snapshot stays; None when nothing was written."""
    try:
        if holds_state(client):
            return write_snapshot(client, path)
        log.info("Redis holds no file state; the snapshot %s is left as it is", path)
    except (redis.RedisError, OSError) as exc:
        log.warning("state snapshot %s not written (%s); the previous one is kept",
                    path, exc)
    finally:
        give_back_memory()
    return None


def _text(value: bytes | str) -> str:
    return value.decode(_ENCODING, _ERRORS) if isinstance(value, bytes) else value


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode(_ENCODING, _ERRORS)


def _keys(client, pattern: str, kind: str) -> Iterator[bytes]:
    """Each key of ``kind`` matching ``pattern`` once (SCAN may return a key twice)."""
    found: set[bytes] = set()
    for key in client.scan_iter(match=pattern, count=SCAN_COUNT, _type=kind):
        if key not in found:
            found.add(key)
            yield key


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while chunk := list(islice(items, size)):
        yield chunk


def _write_hash(doc: JsonStream, client, key: bytes, decode: Callable[[bytes], str] = _text,
                *, member: bool = True) -> int:
    """The hash at ``key``, HSCAN chunk by chunk, as the member ``key`` of the open object
    (``member=False``: its fields written into the open object itself); how many fields
    were written.  A hash gone since the SCAN is left out, and a field HSCAN returns
    twice (the hash grew while scanned) is written once."""
    cursor, written, fields = 0, 0, set()
    while True:
        cursor, chunk = client.hscan(key, cursor, count=SCAN_COUNT)
        for field, value in chunk.items():
            if field in fields:
                continue
            if member and not fields:
                doc.begin(_text(key))
            fields.add(field)
            doc.item(_text(field), decode(value))
            written += 1
        if not cursor:
            break
    if member and fields:
        doc.end()
    return written


def _write_sets(doc: JsonStream, client, keys: list[bytes]) -> None:
    """The sets at ``keys``, read in one MULTI/EXEC, each as a member of the open object."""
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.smembers(key)
    for key, members in zip(keys, pipe.execute(), strict=True):
        if members:  # an empty reply: deleted between the SCAN and the read
            doc.item(_text(key), sorted(_text(m) for m in members))


# --- restoring --------------------------------------------------------------------------

def holds_state(client, roots: Iterable[str] = ()) -> bool:
    """True when Redis holds file state: a seen hash, a detector's facts, or an open
    question of a file detector (a file task opens one only after storing the facts).

    Open exploration questions alone do not count: an exploration worker may publish
    its first scan before the watcher restores the snapshot of a flushed Redis.
    ``roots`` (root names, optional) are looked up first, with one EXISTS: the scans
    that follow walk the whole keyspace (about a second for 10,000 indexed files) to
    find the first key of a pattern.
    """
    known = [names.seen(r) for r in roots] + [names.facts(d, r) for r in roots
                                               for d in names.DETECTORS]
    if known and client.exists(*known):
        return True
    patterns = [names.seen("*")] + [names.facts(d, "*") for d in names.DETECTORS]
    if any(next(iter(client.scan_iter(match=p, count=SCAN_COUNT)), None) is not None
           for p in patterns):
        return True
    exploration = f"{names.EXPLORATION}."  # question ids start with their detector
    return any(not _text(qid).startswith(exploration)
               for qid, _envelope in client.hscan_iter(names.LEDGER, count=SCAN_COUNT))


def restore_snapshot(client, path: str | os.PathLike, roots: Iterable[str] = ()) -> bool:
    """Restore the snapshot at ``path`` into a Redis without file state; True if done.

    False, with nothing written, when there is no snapshot, when Redis already holds
    file state (newer than any snapshot, see ``holds_state``), or when the snapshot is
    corrupt: a corrupt one is renamed ``<name>.corrupted`` and logged, and the detectors
    rebuild by rescanning.  The inverted indexes are rebuilt from the facts.  Seen
    entries that the facts do not confirm (changes still queued when the snapshot was
    taken) are left out, so the watcher's reconciliation sends those files again.
    Questions opened since the flush stay as they are: the snapshot's ledger entries are
    merged under them (HSETNX) and the owned sets merged (SADD), so every open question
    keeps an owner that resolves it.  The document is read whole; the memory it took is
    handed back to the system afterwards (``give_back_memory``).  ``roots``: the root
    names whose state is looked up first (``holds_state``).
    """
    path = Path(path)
    if not path.exists():
        log.info("no state snapshot at %s; the index is rebuilt by rescanning", path)
        return False
    if holds_state(client, roots):
        log.info("Redis already holds state; the snapshot %s is not restored", path)
        return False
    try:
        return _restore(client, path)
    finally:
        give_back_memory()  # the whole document was loaded: do not keep its peak


def _restore(client, path: Path) -> bool:
    try:
        document = load_snapshot(path)
    except (SnapshotError, OSError) as exc:
        _set_aside(path, exc)
        return False
    seen, dropped = confirmed_seen(document["seen"], document["facts"])
    commands = _restore_commands({**document, "seen": seen, "ledger": {}})
    _write_commands(client, chain(commands, [("hsetnx", names.LEDGER, document["ledger"])]))
    summary = summarise(document)
    log.info("restored state snapshot %s: %d open questions, %d indexed files, "
             "%d files to send again", path, summary.questions, summary.files, dropped)
    return True


def _set_aside(path: Path, exc: Exception) -> None:
    aside = path.with_name(path.name + CORRUPTED_SUFFIX)
    try:
        os.replace(path, aside)
    except OSError as move_error:
        log.error("state snapshot %s is unreadable (%s) and could not be moved aside (%s);"
                  " the index is rebuilt by rescanning", path, exc, move_error)
        return
    log.error("state snapshot %s is unreadable (%s); moved to %s, the index is rebuilt "
              "by rescanning", path, exc, aside)


def _restore_commands(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """("hset", key, mapping), ("sadd" or "zadd", key, members), ("set", key, value) that
    recreate the state: facts and their inverted indexes first, the ledger last."""
    for key, files in document["facts"].items():
        yield from _index_commands(key, files)
    for key, members in document["owned"].items():
        yield "sadd", key, members
    for key, entries in document["seen"].items():
        if entries:
            yield "hset", key, entries
    if document["ledger"]:
        yield "hset", names.LEDGER, document["ledger"]


def _index_commands(facts_key: str, files: dict[str, str]) -> Iterator[tuple[str, str, Any]]:
    """The facts of ``files`` and their inverted index (``kloros:ix:*``), stored as
    RedisIndex stores them (index.index_writes computes both)."""
    for detector in names.DETECTORS:
        prefix = names.facts(detector, "")
        if facts_key.startswith(prefix):
            yield from index.index_writes(detector, facts_key[len(prefix):], files)
            return
    yield "hset", facts_key, files  # not a detector's: kept as it was


def _write_commands(client, commands: Iterator[tuple[str, str, Any]]) -> None:
    """All in one MULTI/EXEC: a restore cut short leaves Redis empty, not half-filled
    (and so still restorable).  It runs before any worker does, so blocking is harmless."""
    pipe = client.pipeline(transaction=True)
    for verb, key, value in commands:
        if not value:
            continue
        if verb == "hset":
            pipe.hset(_raw(key), mapping={_raw(f): _raw(v) for f, v in value.items()})
        elif verb == "hsetnx":
            for f, v in value.items():
                pipe.hsetnx(_raw(key), _raw(f), _raw(v))
        elif verb == "set":
            pipe.set(_raw(key), _raw(value))
        elif verb == "zadd":  # an index's holders in path order: every score 0
            pipe.zadd(_raw(key), {_raw(m): 0 for m in value})
        else:
            pipe.sadd(_raw(key), *(_raw(m) for m in value))
    pipe.execute()


def confirmed_seen(seen: Hashes, facts: Hashes) -> tuple[Hashes, int]:
    """The seen hashes without the entries the facts do not confirm, and how many went.

    An entry "sha256 mtime_ns size" is confirmed when every detector the path is routed
    to holds facts for it recorded from that same digest.  Anything else (a task still
    queued at snapshot time, a file skipped or not parseable, a detector added since)
    is dropped, so the file is sent again: tasks are idempotent, a lost change is not.
    """
    digests = _fact_digests(facts)
    prefix = names.seen("")
    kept: Hashes = {}
    dropped = 0
    for key, entries in seen.items():
        root = key[len(prefix):]
        kept[key] = {}
        for rel, value in entries.items():
            sha = value.split(" ", 1)[0]
            detectors = route(rel)
            if detectors and all(digests.get((d, root, rel)) == sha for d in detectors):
                kept[key][rel] = value
            else:
                dropped += 1
    return kept, dropped


def _fact_digests(facts: Hashes) -> dict[tuple[str, str, str], str]:
    """(detector, root, relpath) -> the digest the stored facts were extracted from."""
    out = {}
    for detector in names.DETECTORS:
        prefix = names.facts(detector, "")
        for key, files in facts.items():
            if not key.startswith(prefix):
                continue
            for rel, text in files.items():
                digest = json.loads(text).get("data", {}).get(DIGEST_FIELD)
                if isinstance(digest, str):
                    out[(detector, key[len(prefix):], rel)] = digest
    return out
