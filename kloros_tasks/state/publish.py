"""The open-question ledger: publish a question once while it holds, resolve it once.

``Publisher.sync(detector, root, owner, questions)`` is given every question one owner
(a file, or a host for exploration) has *now*.  It opens the new ones and resolves
the ones that stopped holding.  Each open or resolve is decided inside one Lua
script (HEXISTS then HSET / HDEL on the ledger), so two workers racing on the same question
publish it exactly once, and PUBLISH + XADD happen in the same atomic step: what is
on the channel is always in the stream too.

The ledger and the owned sets are keyed by the stable question id.  The script counts
resolutions per stable id (``kloros:resolutions``), so a re-opening is published as
``<stable id>.r<N>`` and its resolution, built from the ledger's envelope, names that id.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kloros_tasks import names
from kloros_tasks.questions import SEVERITIES, Question, dumps, open_envelope, resolved_envelope

_SYNC = """
local ledger, owned, stream, resolutions = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, n_open = ARGV[1], tonumber(ARGV[2])
local opened, resolved = {}, {}
local i = 3
for _ = 1, n_open do
  local qid, channel, env, again = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  redis.call('SADD', owned, qid)
  if redis.call('HEXISTS', ledger, qid) == 0 then
    -- resolved N-1 times before: this is opening N, published under <id>.r<N>
    local times = tonumber(redis.call('HGET', resolutions, qid) or '0')
    if times > 0 then
      local at, upto = string.find(again, '"question_id":"' .. qid .. '.r#"', 1, true)
      env = again:sub(1, at - 1) .. '"question_id":"' .. qid .. '.r' .. (times + 1) .. '"'
        .. again:sub(upto + 1)
    end
    redis.call('HSET', ledger, qid, env)
    redis.call('PUBLISH', channel, env)
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'envelope', env)
    table.insert(opened, qid)
  end
end
while i <= #ARGV do
  local qid, env = ARGV[i], ARGV[i + 1]
  i = i + 2
  redis.call('SREM', owned, qid)
  if redis.call('HDEL', ledger, qid) == 1 then
    redis.call('HINCRBY', resolutions, qid, 1)
    redis.call('PUBLISH', 'curiosity.question_resolved', env)
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'envelope', env)
    table.insert(resolved, qid)
  end
end
return {opened, resolved}
"""


@dataclass(frozen=True)
class SyncResult:
    opened: tuple[str, ...]
    resolved: tuple[str, ...]


def reopening_template(envelope: dict) -> dict:
    """The envelope as a re-opening publishes it, its number left as ``#`` for the script.

    KLoROS's CuriosityCore skips a question id it processed once, forever, so a problem
    that was resolved and holds again must come under an id it has not seen: the ledger
    script writes ``<stable id>.r<N>`` (N = times resolved + 1) where ``.r#`` stands, and
    ``metadata.stable_id`` keeps the stable id.  The first opening keeps the stable id.
    """
    facts = envelope["facts"]
    stable = facts["question_id"]
    return {**envelope, "facts": {**facts, "question_id": f"{stable}.r#",
                                  "metadata": {**facts["metadata"], "stable_id": stable}}}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Publisher:
    """Ledger, channels and stream on one Redis connection (passed in)."""

    def __init__(self, client, *, host: str | None = None, stream_maxlen: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.r = client
        self.host = host or socket.gethostname()
        self.stream_maxlen = stream_maxlen
        self.clock = clock
        self._script = client.register_script(_SYNC)

    def open_ids(self, detector: str, root: str, owner: str) -> set[str]:
        return {_text(m) for m in self.r.smembers(names.owned(detector, root, owner))}

    def sync(self, detector: str, root: str, owner: str, questions: Iterable[Question], *,
             max_open: int | None = None, keep: Iterable[str] = ()) -> SyncResult:
        """Make the open questions of ``owner`` exactly ``questions``; publish the difference.

        ``max_open`` caps how many new questions open now (most severe first; the rest
        are simply not open yet and are offered again by the next sync).  Ids in
        ``keep`` are not resolved even if absent (their rule could not be decided).
        """
        return self.sync_many(detector, root, {owner: questions}, max_open=max_open,
                              keep=keep)[owner]

    def sync_many(self, detector: str, root: str,
                  questions: Mapping[str, Iterable[Question]], *,
                  max_open: int | None = None,
                  keep: Iterable[str] = ()) -> dict[str, SyncResult]:
        """``sync`` of each owner of ``questions`` (owner -> every question it has now),
        in three round trips whatever their number: the owners' open ids read together,
        the envelopes of the questions they resolve read together, and one ledger
        script per owner with anything to publish, sent together.  Each owner's
        script is atomic on its own, as with ``sync``."""
        now, keep = self.clock(), set(keep)
        owners = list(questions)
        pipe = self.r.pipeline(transaction=False)
        for owner in owners:
            pipe.smembers(names.owned(detector, root, owner))
        opened_ids = [{_text(m) for m in found} for found in pipe.execute()] if owners else []
        plans = []
        for owner, already in zip(owners, opened_ids, strict=True):
            current = {q.id: q for q in questions[owner]}
            fresh = sorted((q for qid, q in current.items() if qid not in already),
                           key=lambda q: (-SEVERITIES.index(q.severity), q.id))
            if max_open is not None:
                fresh = fresh[:max(0, max_open)]
            plans.append((owner, fresh, sorted(already - current.keys() - keep)))
        gone_ids = [qid for _owner, _fresh, gone in plans for qid in gone]
        stored = dict(zip(gone_ids, self.r.hmget(names.LEDGER, gone_ids), strict=True)) \
            if gone_ids else {}
        results = {owner: SyncResult((), ()) for owner in owners}
        calls = [(owner, self._sync_args(root, fresh, gone, stored, now))
                 for owner, fresh, gone in plans if fresh or gone]
        if not calls:
            return results
        pipe = self.r.pipeline(transaction=False)
        for owner, args in calls:
            self._script(keys=[names.LEDGER, names.owned(detector, root, owner),
                               names.STREAM, names.RESOLUTIONS], args=args, client=pipe)
        for (owner, _args), (opened, resolved) in zip(calls, pipe.execute(), strict=True):
            results[owner] = SyncResult(tuple(map(_text, opened)), tuple(map(_text, resolved)))
        return results

    def _sync_args(self, root: str, fresh: list[Question], gone: list[str],
                   stored: Mapping[str, bytes | None], now: float) -> list:
        """The ledger script's arguments: the questions to open, then those to resolve."""
        args: list = [self.stream_maxlen, len(fresh)]
        for q in fresh:
            envelope = open_envelope(q, root=root, host=self.host, now=now)
            args += [q.id, q.signal, dumps(envelope), dumps(reopening_template(envelope))]
        for qid in gone:
            raw = stored.get(qid)
            if raw is None:  # resolved meanwhile by someone else: just forget it
                args += [qid, ""]
                continue
            args += [qid, dumps(resolved_envelope(json.loads(raw), now=now))]
        return args

    def open_questions(self) -> list[dict]:
        """Every open question's envelope, oldest first."""
        envs = [json.loads(v) for v in self.r.hvals(names.LEDGER)]
        return sorted(envs, key=lambda e: e["facts"].get("timestamp", 0))
