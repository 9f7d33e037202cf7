"""A worker's processes collect cyclic garbage less often: the worker parent sets the
thresholds before its pool forks, and a forked pool process inherits them."""

from __future__ import annotations

import gc
import os

from kloros_tasks.work import collector


def test_tune_raises_the_young_threshold_keeps_the_others_and_a_forked_child_has_it():
    before = gc.get_threshold()
    try:
        collector.tune()
        assert gc.get_threshold() == (collector.GEN0, *before[1:])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child, as a pool process forked after worker_init
            os.write(write, str(gc.get_threshold()[0]).encode())
            os._exit(0)
        os.close(write)
        assert int(os.read(read, 64)) == collector.GEN0
        os.waitpid(pid, 0)
        os.close(read)
    finally:
        gc.set_threshold(*before)
