"""One parse per Python file of a batch, whichever of a worker's processes takes it.

The watcher cuts a reconciliation or a storm into batches once for every detector
(watch/sync.py): each file detector's batch k holds its share of the same files, and
every Python file is in all three.  A worker consuming several file detectors' queues
(the default layout) takes those three batches in turn, often in two pool processes
at once, and each parsed and walked the same files again.

Instead, the first of them to start claims the batch's Python files (the "common"
entries: those every file detector is sent) under ``kloros:claim:<root>:<digest>``,
the digest naming exactly those entries, and applies them for every file detector its
worker serves, parsing each file once; then it marks the claim done.  A task of the
same batch for another detector that finds the claim:

* held by another task: hands its batch back to its queue (the task layer sends it
  again, behind what is queued, and acknowledges this delivery; its blob references
  travel with it) instead of waiting or parsing the same files beside the claimant;
* done: leaves out the files the claimant applied for its detector (they end as
  "claimed"; a detector the claimant did not serve finds them as duplicates, by one
  read of its index) and analyses its own other files (a ``.md`` that knowledge and
  capability are sent, say) as usual.

What the claimant applies for another detector is exactly that detector's batch
(its own lock, deferral and records), so a claim changes who parses, never what is
indexed or asked.  Two more things keep it so: while a claimant applies a batch of a
root (``begin`` to ``end``) the root's burst goes on, since a detector's queue no
longer tells whether its share is still to come; and a claimant whose batch holds
package markers (``hold_layout``) is waited for by the claimants of later batches
before they apply (``await_layout``), so no marker comes after the modules below it.
A claimant that fails drops its claim, and one that is killed leaves it to expire
after the task time limit: the others then claim it themselves, or find it done when
the claimant's redelivery finished it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable

from kloros_tasks import names
from kloros_tasks.routing import route
from kloros_tasks.work.payload import ENTRY_FIELDS, Change

OURS, HELD, DONE = "ours", "held", "done"
_DONE = b"done:"  # a done claim's value: "done:" and the detectors it was applied for
CLAIM_DONE_TTL = 3600  # s a done claim is kept: the batch's other tasks come by then
# A batch handed back to an empty queue comes back after this long, not at once.
RECHECK = 0.25
LAYOUT_POLL = 0.02  # s between two looks at the claimants applying package markers
_ALL = frozenset(names.FILE_DETECTOR_SUFFIXES)
# The file detectors whose queues this worker consumes (``serve``, at worker_init).
_served: frozenset[str] = frozenset()


def serve(queues: Iterable[str]) -> None:
    """This worker (and the pool processes it forks) consumes ``queues``."""
    global _served
    _served = frozenset(queues) & _ALL


def sharing() -> bool:
    """Whether this worker serves two or more file detectors, so claims pay."""
    return len(_served) > 1


def others(detector: str) -> list[str]:
    """The file detectors this worker serves besides ``detector``."""
    return sorted(_served - {detector})


def recheck_after(client, queue: str) -> float | None:
    """The countdown of a batch handed back to ``queue``: none behind queued tasks,
    RECHECK when the queue is empty (the claimant is still at work)."""
    return None if client.llen(queue) else RECHECK


def common(changes: Iterable[Change]) -> list[Change]:
    """The changes every file detector is sent (Python files): the same entries, in
    the same order, in each detector's share of one batch."""
    return [c for c in changes if _ALL <= route(c.path)]


def digest(root: str, changes: list[Change]) -> str:
    """The claim's name for ``changes`` of ``root``."""
    body = json.dumps([root, [[getattr(c, f) for f in ENTRY_FIELDS] for c in changes]],
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def claim(client, key: str, owner: str, ttl: float) -> tuple[str, frozenset[str]]:
    """(OURS, {}) when ``owner`` holds ``key`` now (newly, or again on a redelivery),
    (DONE, the detectors the claimant applied the batch for) when a claimant finished
    it, (HELD, {}) when another task holds it."""
    pipe = client.pipeline(transaction=True)
    pipe.set(key, owner, nx=True, px=max(1, int(ttl * 1000)))
    pipe.get(key)
    _, holder = pipe.execute()
    if holder is None or holder == owner.encode():  # None: expired in between
        return OURS, frozenset()
    if holder.startswith(_DONE):
        return DONE, frozenset(holder[len(_DONE):].decode().split(","))
    return HELD, frozenset()


def done(client, key: str, detectors: Iterable[str]) -> None:
    """The claimant applied the batch's Python files for each of ``detectors``."""
    client.set(key, _DONE + ",".join(sorted(detectors)).encode(), ex=CLAIM_DONE_TTL)


def begin(client, root: str, owner: str, key: str, ttl: float) -> None:
    """``owner`` applies the claimed ``key`` now: the root's burst goes on until ``end``
    (or, ``owner`` killed, until its claim would expire)."""
    _enlist(client, names.claiming(root), owner, key, time.time() + ttl, ttl)


def end(client, root: str, owner: str, key: str) -> None:
    client.zrem(names.claiming(root), _member(owner, key))


def count_claiming(pipe, root: str) -> None:
    """Queue on ``pipe`` what answers, as its last reply, how many tasks apply claimed
    batches of ``root`` now (those past their claim's expiry dropped first)."""
    pipe.zremrangebyscore(names.claiming(root), "-inf", time.time())
    pipe.zcard(names.claiming(root))


def hold_layout(client, root: str, owner: str, key: str, stamp: float, ttl: float) -> None:
    """``owner``, which claimed ``key``, applies package markers of ``root`` sent at
    ``stamp``: claimants of later batches wait for it (``await_layout``)."""
    _enlist(client, names.layout_order(root), owner, key, stamp, ttl)


def release_layout(client, root: str, owner: str, key: str) -> None:
    client.zrem(names.layout_order(root), _member(owner, key))


def _member(owner: str, key: str) -> str:
    return f"{owner} {key}"


def _enlist(client, zset: str, owner: str, key: str, score: float, ttl: float) -> None:
    """Add (owner, key) to the sorted set ``zset``, which lasts ``ttl`` s past the last
    one added."""
    pipe = client.pipeline(transaction=True)
    pipe.zadd(zset, {_member(owner, key): score})
    pipe.pexpire(zset, max(1, int(ttl * 1000)))
    pipe.execute()


def await_layout(client, root: str, owner: str, stamp: float, wait: float) -> float:
    """Wait, up to ``wait`` s, while claimants of batches of ``root`` sent before
    ``stamp`` apply package markers: modules named before their markers are indexed
    would be extracted again (twice when a marker comes after modules below it).
    Those whose claim is no longer theirs (killed, expired) are not waited for.
    Returns how long it waited."""
    order, began = names.layout_order(root), time.monotonic()
    while True:
        earlier = [m for m in client.zrangebyscore(order, "-inf", f"({stamp!r}")
                   if not m.startswith(owner.encode() + b" ")]
        if not earlier or time.monotonic() - began >= wait:
            return time.monotonic() - began
        pipe = client.pipeline(transaction=False)
        for member in earlier:
            pipe.get(member.split(b" ", 1)[1])
        holders = pipe.execute()
        gone = [m for m, held in zip(earlier, holders, strict=True)
                if held != m.split(b" ", 1)[0]]
        if gone:
            client.zrem(order, *gone)
        if len(gone) < len(earlier):
            time.sleep(LAYOUT_POLL)


def drop(client, key: str, owner: str) -> None:
    """Give the claim up (the claimant failed), if ``owner`` still holds it."""
    if client.get(key) == owner.encode():
        client.delete(key)
