"""What a worker does for its memory besides the limits: the parent freezes its heap
before it forks, and a pool child hands freed heap back once it has been idle a while.

How much these save is measured by bench/cold_scan.py --rest, not asserted here.
"""

from __future__ import annotations

import gc
import threading

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


class Trims:
    def __init__(self) -> None:
        self.count = 0
        self.done = threading.Event()

    def __call__(self) -> None:
        self.count += 1
        self.done.set()


def test_a_pool_child_trims_once_after_its_tasks_and_never_while_one_runs():
    trims = Trims()
    idle = celery_app._IdleTrim(after=0.05, trim=trims)
    idle.start()
    idle.task_started()
    assert not trims.done.wait(0.3)  # a task running: never
    idle.task_ended()
    wait_for(trims.done.is_set, 30, message="the trim after the task")
    assert not idle.dirty
    count = trims.count
    idle.task_started()
    idle.task_ended()
    wait_for(lambda: trims.count > count, 30, message="the trim after the next task")
    assert trims.count == count + 1
