"""Content-addressed file blobs in Redis, reference-counted by the tasks that need them.

The producer stores a file's bytes under ``kloros:blob:<sha256>`` and adds one
reference per task it sends; each task drops its reference when it is done and the
last one deletes the blob.  Both keys carry a TTL so that a lost task cannot leak
memory.  A worker on another host thus analyses exactly the bytes that changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from redis.exceptions import NoScriptError

from kloros_tasks import names

# Drop one reference; the last reference deletes the blob.  Atomic, so two tasks
# finishing together cannot both see "one left" and leave the blob behind.
_RELEASE = """
local left = redis.call('DECR', KEYS[2])
if left <= 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return left
"""

# The same for each (blob, refs) key pair, in one call: one reference per pair given.
_RELEASE_MANY = """
for i = 1, #KEYS, 2 do
  if redis.call('DECR', KEYS[i + 1]) <= 0 then
    redis.call('DEL', KEYS[i], KEYS[i + 1])
  end
end
return #KEYS / 2
"""

# A blob's bytes when at most ARGV[1] long, else its length (an integer), or nil when
# it is gone: one command for a single-file task instead of a MULTI of three.
_FETCH = """
local size = redis.call('STRLEN', KEYS[1])
if size == 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
if size > tonumber(ARGV[1]) then
  return size
end
return redis.call('GET', KEYS[1])
"""

_FETCH_SHA = hashlib.sha1(_FETCH.encode()).hexdigest()

_TAKE_MANY = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCR', KEYS[i]) end
end
return #KEYS
"""


def store(client, sha256: str, content: bytes, refs: int, ttl: int) -> None:
    """Keep ``content`` for ``refs`` more tasks (adds to any references already held)."""
    store_many(client, [(sha256, content, refs)], ttl)


def store_many(client, items: Iterable[tuple[str, bytes, int]], ttl: int) -> None:
    """Keep each ``(sha256, content, refs)`` for ``refs`` more tasks, in one round trip.

    The same digest given twice is stored once with the references summed.  All of it
    runs in one MULTI/EXEC, so a concurrent ``release`` never sees a blob whose
    references are not yet counted.  Nothing is sent for no items.
    """
    merged: dict[str, tuple[bytes, int]] = {}
    for sha256, content, refs in items:
        held = merged.get(sha256)
        merged[sha256] = (content, refs + (held[1] if held else 0))
    if not merged:
        return
    pipe = client.pipeline(transaction=True)
    for sha256, (content, refs) in merged.items():
        pipe.set(names.blob(sha256), content, ex=ttl)
        pipe.incrby(names.blob_refs(sha256), refs)
        pipe.expire(names.blob_refs(sha256), ttl)
    pipe.execute()


def fetch(client, sha256: str, max_bytes: int | None = None) -> bytes | int | None:
    """The blob's bytes, or None when it is gone.  With ``max_bytes``, a blob larger
    than that is measured in Redis and never loaded: its size (an int) is returned."""
    if max_bytes is None:
        return client.get(names.blob(sha256))
    try:
        return client.evalsha(_FETCH_SHA, 1, names.blob(sha256), max_bytes)
    except NoScriptError:  # a Redis that has not seen it yet (or was restarted)
        return client.eval(_FETCH, 1, names.blob(sha256), max_bytes)


def fetch_many(client, digests: Iterable[str],
               max_bytes: int) -> dict[str, bytes | int | None]:
    """``fetch`` of every digest in one round trip: digest -> bytes, size or None."""
    wanted = list(dict.fromkeys(digests))
    if not wanted:
        return {}
    pipe = client.pipeline(transaction=True)
    for sha256 in wanted:
        pipe.exists(names.blob(sha256))
        pipe.strlen(names.blob(sha256))
        pipe.getrange(names.blob(sha256), 0, max_bytes)
    found = pipe.execute()
    out: dict[str, bytes | int | None] = {}
    for i, sha256 in enumerate(wanted):
        exists, size, head = found[3 * i:3 * i + 3]
        out[sha256] = None if not exists else (size if size > max_bytes else head)
    return out


def take_many(client, digests: Iterable[str]) -> None:
    """One more reference to each digest given (given twice, two), in one script call;
    a blob already gone stays gone (no counter is created for it)."""
    keys = [names.blob_refs(sha256) for sha256 in digests]
    if keys:
        client.eval(_TAKE_MANY, len(keys), *keys)


def release_many(client, digests: Iterable[str]) -> None:
    """``release`` one reference per digest given (a digest given twice, twice), in one
    script call."""
    keys = [k for sha256 in digests for k in (names.blob(sha256), names.blob_refs(sha256))]
    if keys:
        client.eval(_RELEASE_MANY, len(keys), *keys)


def release(client, sha256: str) -> int:
    """Drop one reference; returns the references left (<= 0 means deleted)."""
    return int(client.eval(_RELEASE, 2, names.blob(sha256), names.blob_refs(sha256)))
