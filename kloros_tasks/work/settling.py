"""The settle task's body (tasks.py): when to settle a root's deferred evaluations,
and one task at a time per (detector, root).

``task`` is the running KlorosTask: its client, settings, request id, context and
``schedule_settle`` are used.
"""

from __future__ import annotations

import logging
import os

from kloros_tasks import names
from kloros_tasks.work import deferral
from kloros_tasks.work.analysis import SETTLE_BUDGET, SETTLE_MAX_WAIT, SETTLE_RECHECK, settle
from kloros_tasks.work.registry import worker_detector

log = logging.getLogger(__name__)
# The second argument of a settle task queued after the root's burst ended.
SETTLE_BEHIND = "behind"


def settle_for(task, context, detector, root: str) -> int | None:
    """Settle (detector, root) for a while; how many files are left deferred, or None
    when another task settles the root now (this one is queued again, for later)."""
    budget = min(SETTLE_BUDGET, task.settings.task_time_limit / 3)
    owner = task.request.id or f"pid {os.getpid()}"
    if not deferral.take_settling(task.client, detector.name, root, owner,
                                  task.settings.task_time_limit):
        task.schedule_settle(detector.name, root, SETTLE_RECHECK, behind=True)
        log.info("%s: another task settles %s now; looking again in %.0f s",
                 detector.name, root, SETTLE_RECHECK)
        return None
    try:
        remaining = settle(context, detector, root, budget)
    finally:
        deferral.drop_settling(task.client, detector.name, root, owner)
    if remaining:  # hand the rest to a task of its own, within the time limit
        task.schedule_settle(detector.name, root)
    log.info("%s: settled deferred evaluations of %s; %d left for the next task",
             detector.name, root, remaining)
    return remaining


def settle_task(task, detector_name: str, args: tuple, kwargs: dict) -> str:
    """The body of ``kloros.<detector>.settle``: settle the root of ``args`` once its
    burst is over and no other task applies or settles it; else queue it again."""
    if kwargs or not 1 <= len(args) <= 2 or not isinstance(args[0], str) \
            or args[1:] not in ((), (SETTLE_BEHIND,)):
        log.warning("%s: refused malformed settle payload %r %r", task.name, args, kwargs)
        return "refused"
    root, behind = args[0], len(args) == 2
    if not task.client.exists(names.deferred(detector_name, root)):
        return "0 deferred"  # settled already, by a change that found the burst over
    waited = deferral.deferred_for(task.client, detector_name, root) or 0.0
    sending, claiming, queued = deferral.burst_state(task.client, detector_name, root)
    # Judged only on the settled index.  While the watcher still sends the root's burst
    # (or a task applies a claimed batch of it: soon over), look again behind what is
    # queued, or in a moment.  Once it has stopped, one pass behind the queue is
    # enough: the queue is first in, first out, so every change of the burst was taken
    # before this task comes round again.  What is queued then (later edits, another
    # root's settle task) is no reason to wait: two roots settling at once would
    # otherwise requeue behind each other until SETTLE_MAX_WAIT.
    if waited < SETTLE_MAX_WAIT and (sending or claiming or (queued and not behind)):
        task.schedule_settle(detector_name, root, None if queued else (
            SETTLE_RECHECK if sending else deferral.LOCK_POLL), behind=not sending)
        return "burst in progress"
    # Another settle of the root, or a batch's apply: take other work meanwhile.
    if waited < SETTLE_MAX_WAIT and deferral.held_now(task.context(), detector_name, root):
        task.schedule_settle(detector_name, root, None if queued else deferral.LOCK_POLL,
                             behind=True)
        return "root busy"
    detector, _ = worker_detector(detector_name, task.settings, task.client, root)
    remaining = settle_for(task, task.context(), detector, root)
    return "settled elsewhere" if remaining is None else f"{remaining} deferred"
