"""The path order ``index.RedisIndex`` keeps of some relations' holders.

For the relations a detector asks ``first_many`` of (``detectors.base.ORDERED``), each
value's holder paths are also members of one sorted set (``names.index_order``, every
score 0, so in byte order), changed by ORDER_SCRIPT in the same MULTI/EXEC as the
update's last slice and read by FIRST_SCRIPT: the first holders of a value cost a
range of its set, however many files hold it.  An index stored before these sets
existed is not marked ``ordered`` in its meta hash; ``first_many`` then answers from
the holder lists, at their cost, until the index is rebuilt (docs/operations.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import redis

from kloros_tasks import names
from kloros_tasks.detectors.base import ORDERED, Holders, path_order
from kloros_tasks.state.index_scripts import UPDATE_SCRIPT

# The holders of an ordered relation's values in path order, changed together with the
# index, in the same MULTI/EXEC as the update script's last slice.  Mode "mark", sent
# before the update when the caller found the index empty: an index with no file yet
# is marked "ordered" (it has no holders, so its sets are complete); an index stored
# before these sets existed is never marked, and its lookups fall back to the holder
# lists.  Mode "apply", sent after the update: for each path whose facts now have the
# SHA-1 given (the update stored what the caller meant it to; else that path is left
# alone), each operation sets one holder's membership as the update leaves it, so
# applying it twice, or again after an interrupted change, is harmless.  Nothing on an
# index not marked.
# KEYS: facts, meta.  ARGV: "mark"; or "apply", order key prefix, then per path: the
#       path, SHA-1 of its facts stored ("" none), operation count, sign and field per
#       operation.
ORDER_SCRIPT = """
if ARGV[1] == 'mark' then
  if redis.call('HLEN', KEYS[1]) == 0 then redis.call('HSET', KEYS[2], 'ordered', '1') end
  return 1
end
if redis.call('HGET', KEYS[2], 'ordered') ~= '1' then return 0 end
local function hex(c) return string.format('%02x', string.byte(c)) end
local i, done = 3, 0
while i <= #ARGV do
  local path, nops = ARGV[i], tonumber(ARGV[i + 2])
  local current = redis.call('HGET', KEYS[1], path)
  if (current and redis.sha1hex(current) or '') == ARGV[i + 1] then
    for j = i + 3, i + 1 + 2 * nops, 2 do
      local key = ARGV[2] .. string.gsub(ARGV[j + 1], '.', hex)
      if ARGV[j] == '+' then redis.call('ZADD', key, 0, path)
      else redis.call('ZREM', key, path) end
    end
    done = done + 1
  end
  i = i + 3 + 2 * nops
end
return done
"""


# The first n holders of each field in path order and how many there are: a ZRANGE
# and a ZCARD, whatever the number of holders.  0 when the index is not marked
# "ordered" (stored before the sets existed): the caller reads the holder lists.
# KEYS: meta.  ARGV: n, order key prefix, fields.
FIRST_SCRIPT = """
if redis.call('HGET', KEYS[1], 'ordered') ~= '1' then return 0 end
local n, out = tonumber(ARGV[1]), {}
local function hex(c) return string.format('%02x', string.byte(c)) end
for i = 3, #ARGV do
  local key = ARGV[2] .. string.gsub(ARGV[i], '.', hex)
  local found = {}
  if n > 0 then found = redis.call('ZRANGE', key, 0, n - 1) end
  table.insert(found, 1, redis.call('ZCARD', key))
  out[#out + 1] = found
end
return out
"""


UPDATE_SHA = hashlib.sha1(UPDATE_SCRIPT.encode()).hexdigest()
LOOKUP_CHUNK = 1000  # values per FIRST_SCRIPT call (index.LOOKUP_CHUNK)


class PathOrder:
    """The sorted sets of one detector's index on one root."""

    def __init__(self, client, detector: str, root: str, facts_key: str, meta_key: str) -> None:
        self.r = client
        self.keeps = bool(ORDERED.get(detector))
        self._facts_key, self._meta = facts_key, meta_key
        self._prefix = names.index_order(detector, root, "")
        self._first = client.register_script(FIRST_SCRIPT)

    @staticmethod
    def ops(removed: list[bytes], added: list[bytes]) -> list[bytes]:
        """Sign and field, flat, for ORDER_SCRIPT: the ordered fields a change removes
        ``path`` from and adds it to."""
        return [x for f in removed for x in (b"-", f)] + [x for f in added for x in (b"+", f)]

    def wanted(self, ops: list, empty: bool) -> bool:
        """Whether the update's last slice goes with ORDER_SCRIPT: it changes ordered
        fields (``ops``, or the changes ``apply`` takes), or the index held no file
        when the update read it (``empty``: a new index is marked ``ordered``)."""
        return bool(ops) or (empty and self.keeps)

    def apply(self, keys: list, args: list, changes: list[tuple[bytes, bytes, list[bytes]]],
              *, empty: bool):
        """The update script's call (``keys``, ``args``: the last slice of one file's
        update) with ORDER_SCRIPT in one MULTI/EXEC, one round trip (``add``); what the
        update script answered (0: not applied)."""
        pipe = self.r.pipeline(transaction=True)
        at = self.add(pipe, keys, args, changes, empty=empty)
        try:
            replies = pipe.execute()
        except redis.exceptions.NoScriptError:
            # The update did not run, so ORDER_SCRIPT found the facts not stored and
            # changed nothing (or they were already, and it set what a retry sets
            # again).  Load the update script and let the caller try again.
            self.r.script_load(UPDATE_SCRIPT)
            return 0
        return replies[at]

    def add(self, pipe, keys: list, args: list, changes: list[tuple[bytes, bytes, list[bytes]]],
            *, empty: bool, sha: str = UPDATE_SHA) -> int:
        """Add to ``pipe`` (a MULTI/EXEC) the update script's call (``sha``: or the
        batch script's), "mark" before it when the index was ``empty``, "apply" after
        it for each (path, value stored, ``ops``) of ``changes``; returns the position
        of the update's reply.  ORDER_SCRIPT is sent whole (EVAL): if Redis had lost
        it, the index would be updated and its sets not."""
        if empty and self.keeps:
            pipe.eval(ORDER_SCRIPT, 2, self._facts_key, self._meta, "mark")
        pipe.evalsha(sha, len(keys), *keys, *args)
        at = len(pipe) - 1
        per_path: list = []
        for path, value, ops in changes:
            stored = hashlib.sha1(value).hexdigest() if value else ""
            per_path += [path, stored, len(ops) // 2, *ops]
        if per_path:
            pipe.eval(ORDER_SCRIPT, 2, self._facts_key, self._meta, "apply", self._prefix,
                      *per_path)
        return at

    def first(self, fields: Mapping[str, bytes], n: int) -> dict[str, Holders] | None:
        """The first ``n`` holders of each value (value -> its field) and their count;
        None when the index is not marked ``ordered``."""
        values, out = list(fields), {}
        for start in range(0, len(values), LOOKUP_CHUNK):
            part = values[start:start + LOOKUP_CHUNK]
            found = self._first(keys=[self._meta],
                                args=[max(n, 0), self._prefix, *(fields[v] for v in part)])
            if not isinstance(found, list):
                return None
            for value, (count, *first) in zip(part, found, strict=True):
                out[value] = Holders(tuple(_text(p) for p in first), int(count))
        return out


def first_of(holders: Mapping[str, frozenset[str]], n: int) -> dict[str, Holders]:
    """``first_many``'s answers computed from complete holder sets."""
    return {v: Holders(tuple(sorted(paths, key=path_order)[:max(n, 0)]), len(paths))
            for v, paths in holders.items()}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
