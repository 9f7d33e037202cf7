"""The stored forms of the cross-file index in Redis (RedisIndex writes them, snapshot
restore lays a whole index out in them at once).

In Redis (a tenth of the memory one SET per value took): ``names.facts`` maps a
relpath to ``b"<id>:"`` + zlib of its facts JSON, the id being the file's for as long
as it is indexed (ids are never reused); ``names.index_paths`` maps ids back.  A
(relation, value) pair is the first 8 bytes of the SHA-1 of ``"<relation> <value>"``:
a field of one ``names.index_bucket`` hash, whose value is the holders' ids joined by
",", or "*" when they outgrew INLINE_MAX and live in ``names.index_spill``.  Buckets
split one at a time as entries grow (linear hashing: ``names.index_meta`` holds
``level`` and ``split``), so each stays a compact listpack.  Two values share a
field only if 64 bits of their digests collide: for a million values, about three
chances in 10^8, taken to be never.
The holders of some relations are kept in path order too (index_order.py).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

from kloros_tasks import names
from kloros_tasks.detectors.base import FileFacts
from kloros_tasks.state.memory_index import _pairs, indexed, ordered

# Average entries per bucket before one splits.  Buckets not yet split in a round hold
# twice that, still far below hash-max-listpack-entries (512 by default).
BUCKET_FILL = 64
INLINE_MAX = 64  # longest holder list kept in a bucket (hash-max-listpack-value)
PATHS_PER_BUCKET = 128
FIELD_BYTES = 8
SPILLED = b"*"
ZLIB_LEVEL = 6
_ENCODING, _ERRORS = "utf-8", "surrogateescape"  # any byte string as a path survives

Write = tuple[str, str, object]  # ("hset", key, {field: value}) or ("set", key, value)


def _bytes(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


def _text(raw: bytes | str) -> str:
    return raw.decode(_ENCODING, _ERRORS) if isinstance(raw, bytes) else raw


def field(relation: str, value: str) -> bytes:
    """The bucket field of one (relation, value) pair.  Relations are names without
    spaces, so the digested text names the pair unambiguously."""
    return hashlib.sha1(_bytes(f"{relation} {value}")).digest()[:FIELD_BYTES]


def address(field_: bytes, level: int, split: int) -> int:
    """The bucket of a field under linear hashing: ``2**level + split`` buckets."""
    h = int.from_bytes(field_[:4], "big")
    bucket = h % (1 << level)
    return h % (1 << (level + 1)) if bucket < split else bucket


def facts_json(raw: bytes) -> str:
    """The facts JSON of a stored ``names.facts`` value."""
    return _split_stored(raw)[1].decode(_ENCODING, _ERRORS)


def _split_stored(raw: bytes) -> tuple[int | None, bytes]:
    """(file id, facts JSON bytes); plain JSON (no id) is read as such."""
    if raw.startswith(b"{"):
        return None, raw
    file_id, _, packed = raw.partition(b":")
    return int(file_id), zlib.decompress(packed)


def _stored(file_id: int, facts_json_bytes: bytes) -> bytes:
    return b"%d:" % file_id + zlib.compress(facts_json_bytes, ZLIB_LEVEL)


# What json.dumps(..., separators=(",", ":")) builds for every call, kept.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _dumps(facts: FileFacts) -> bytes:
    return _COMPACT.encode(facts.to_json()).encode()


def _fields(detector: str, pairs: Iterable[tuple[str, str]]) -> list[bytes]:
    return list(dict.fromkeys(field(r, v) for r, v in pairs if indexed(detector, r)))


def _ordered_fields(detector: str, pairs: Iterable[tuple[str, str]]) -> list[bytes]:
    return list(dict.fromkeys(field(r, v) for r, v in pairs if ordered(detector, r)))


def index_writes(detector: str, root: str, files: Mapping[str, str]) -> Iterator[Write]:
    """Every write that stores ``files`` (relpath -> facts JSON) in an empty Redis,
    laid out as RedisIndex.update lays it out: facts, ids, buckets and spills."""
    holders: dict[bytes, list[int]] = defaultdict(list)
    in_order: dict[bytes, list[bytes]] = defaultdict(list)
    stored, paths = {}, defaultdict(dict)
    for file_id, path in enumerate(sorted(files), 1):
        text = _bytes(files[path])
        pairs = _pairs(FileFacts.from_json(json.loads(text)))
        for f in _fields(detector, pairs):
            holders[f].append(file_id)
        for f in _ordered_fields(detector, pairs):
            in_order[f].append(_bytes(path))
        stored[_bytes(path)] = _stored(file_id, text)
        paths[file_id // PATHS_PER_BUCKET][b"%d" % file_id] = _bytes(path)
    # As many buckets as updates would have split into: the fewest that hold the
    # entries at BUCKET_FILL each, addressed as 2**level + split.
    buckets = max(1, -(-len(holders) // BUCKET_FILL))
    level = buckets.bit_length() - 1
    split = buckets - (1 << level)
    yield "hset", names.facts(detector, root), stored
    yield "hset", names.index_meta(detector, root), {
        "level": b"%d" % level, "split": b"%d" % split, "entries": b"%d" % len(holders),
        "ids": b"%d" % len(files), "ordered": b"1"}
    for bucket, ids in paths.items():
        yield "hset", names.index_paths(detector, root, bucket), ids
    for f, members in in_order.items():
        yield "zadd", names.index_order(detector, root, f.hex()), members
    yield from _bucket_writes(detector, root, holders, level, split)


def _bucket_writes(detector: str, root: str, holders: Mapping[bytes, list[int]],
                   level: int, split: int) -> Iterator[Write]:
    buckets: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    for f, ids in holders.items():
        packed = b",".join(b"%d" % i for i in ids)
        if len(packed) > INLINE_MAX:
            yield "set", names.index_spill(detector, root, f.hex()), packed
            packed = SPILLED
        buckets[address(f, level, split)][f] = packed
    for bucket, entries in buckets.items():
        yield "hset", names.index_bucket(detector, root, bucket), entries


def _journal(file_id: int | None, touched: Iterable[tuple[str, str]]) -> bytes:
    body = json.dumps(sorted(touched), separators=(",", ":")).encode(_ENCODING, _ERRORS)
    return b"%d:" % (file_id or 0) + zlib.compress(body, ZLIB_LEVEL)


def _read_journal(raw: bytes | None) -> tuple[int | None, set[tuple[str, str]]]:
    """(file id or None, pairs) of a journal entry; (None, empty) for none."""
    if raw is None:
        return None, set()
    file_id, _, packed = raw.partition(b":")
    pairs = json.loads(zlib.decompress(packed).decode(_ENCODING, _ERRORS))
    return (int(file_id) or None), {(r, v) for r, v in pairs}

