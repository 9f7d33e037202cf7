"""A batch task's pool child SIGKILLed half-way through applying its batch: the batch
comes back, the files it applied are duplicates by digest whose journal entries
publish what they left, and every question is published exactly once.

The world (tree, persistent Redis, processes) is test_faults.py's.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest
from procs import wait_for
from test_faults import KNOWLEDGE, ROOT, children_of, settle
from test_faults_work import linked_notes, open_ids, scan_ids

from kloros_tasks import names
from kloros_tasks.work.payload import BATCH_FILES

pytestmark = [pytest.mark.fault, pytest.mark.integration]

NOTES = 250  # three batches of the knowledge detector


def test_a_batch_killed_half_way_publishes_every_question_exactly_once(make_world):
    world = make_world(KLOROS_MAX_DELIVERIES="5")
    worker = world.worker()
    linked_notes(world.tree, NOTES)
    facts = names.facts(KNOWLEDGE, ROOT)
    world.watcher()
    # Writes wait while Redis is paused, so what it holds then stays true: a count of
    # applied notes that is no multiple of a batch means a batch is half applied.
    def paused_mid_batch() -> bool:
        world.r.client_pause(30_000, all=False)
        applied = world.r.hlen(facts)
        if 0 < applied < NOTES and applied % BATCH_FILES:
            return True
        world.r.client_unpause()
        return False

    wait_for(paused_mid_batch, 120, 0.01, message="a batch half applied")
    try:
        (child,) = children_of(worker.popen.pid)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: child not in children_of(worker.popen.pid), 30,
                 message="the child gone")
    finally:
        world.r.client_unpause()
    settle(world, [worker], 180, quiet=15)
    wait_for(world.all_analysed, 60, message="every note analysed and judged")
    received = re.findall(rf"Task {re.escape(names.TASK_ANALYZE_BATCH[KNOWLEDGE])}"
                          r"\[([0-9a-f-]+)\] received", worker.output())
    # The killed batch, delivered again (on a loaded machine a batch may also outlast
    # the test's 12 s visibility timeout and come back once more: idempotent too).
    assert max(Counter(received).values()) >= 2
    assert world.r.llen(names.DEADLETTER) == 0
    assert open_ids(world) == scan_ids(world)
    assert set(world.opened().values()) == {1}
