"""What a worker does for its memory besides the limits: the parent freezes its heap
before it forks, and an idle pool process that holds a burst's memory is replaced.

How much these save is measured by bench/cold_scan.py --rest, not asserted here.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
from celery.worker import state as worker_state
from procs import wait_for

from kloros_tasks import celery_app
from kloros_tasks.heap import give_back_memory


def test_the_parent_freezes_what_it_holds_before_forking():
    gc.unfreeze()
    try:
        celery_app.freeze_heap()
        assert gc.get_freeze_count() > 0  # objects alive now: never scanned again
    finally:
        gc.unfreeze()


def test_freed_memory_is_handed_back_without_error():
    garbage = [[i] for i in range(100_000)]
    del garbage
    give_back_memory()  # glibc here; elsewhere the collection alone


class Pool:
    """The two calls the step makes on Celery's prefork pool, recorded."""

    def __init__(self, pids: list[int]) -> None:
        self.info = {"processes": pids}
        self.calls: list[tuple[str, int]] = []

    def shrink(self, n: int) -> None:
        self.calls.append(("shrink", n))

    def grow(self, n: int) -> None:
        self.calls.append(("grow", n))


class Worker:
    def __init__(self, pids: list[int]) -> None:
        self.pool = Pool(pids)


@pytest.fixture
def counts():
    saved = worker_state.all_total_count[0]
    yield worker_state.all_total_count
    worker_state.all_total_count[0] = saved
    worker_state.reserved_requests.clear()


def test_an_idle_pool_process_holding_a_burst_is_replaced_once(counts):
    heavy = [1] * 8_000_000  # this test process holds well over the threshold of its own
    assert celery_app.private_mib(os.getpid()) > celery_app.RECYCLE_ABOVE_MIB
    w = Worker([os.getpid()])
    step = celery_app.RecycleIdlePool(w)
    step.check(w)
    assert w.pool.calls == []  # no task ran yet
    counts[0] += 5
    step.check(w)
    assert w.pool.calls == []  # tasks started during the last interval
    waiting = Worker([])  # any object a weak set can hold stands for a request
    worker_state.reserved_requests.add(waiting)
    step.check(w)
    assert w.pool.calls == []  # one waiting
    worker_state.reserved_requests.clear()
    step.check(w)
    assert w.pool.calls == [("shrink", 1), ("grow", 1)]
    step.check(w)
    assert len(w.pool.calls) == 2  # nothing ran since
    del heavy


def test_an_idle_pool_process_holding_little_is_kept(counts):
    small = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        wait_for(lambda: (celery_app.private_mib(small.pid) or 0) > 0, 30,
                 message="the small process started")
        w = Worker([small.pid])
        step = celery_app.RecycleIdlePool(w)
        counts[0] += 1
        step.check(w)
        step.check(w)
        assert w.pool.calls == []
    finally:
        small.communicate(b"")
