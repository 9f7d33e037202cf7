"""A child of ``up`` ends when ``up`` ends, even killed, and even when the child's own
stop hangs (cli/lifeline.py): the parent-death signal starts its stop, and STOP_GRACE
seconds later its whole process group is killed, as ``up``'s own stop would have."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procs import ended, stat_fields, wait_for

from kloros_tasks.cli import lifeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG is Linux's")

# A program whose stop never ends: it ignores SIGTERM, as a worker's warm shutdown
# waiting for a task that retries a Redis that is gone does, and so does the process it
# forks (a pool process).  It prints both pids, then sleeps.
STUBBORN = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(os.getpid(), child, flush=True)
    time.sleep(600)
""")

# The parent (``up``): starts the stubborn program as ``up`` starts a child (its own
# session, the parent-death signal, through cli/prestart.py), or plainly, and prints
# what the child printed.
PARENT = textwrap.dedent("""
    import subprocess, sys
    from kloros_tasks.cli import lifeline
    with_lifeline = sys.argv[1] == "1"
    child = subprocess.Popen(
        [sys.executable, "-m", "kloros_tasks.cli.prestart", "stubborn_program"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=lifeline.preexec() if with_lifeline else None)
    print(child.stdout.readline().strip(), flush=True)
    child.wait()
""")


def start(tmp_path: Path, with_lifeline: bool) -> tuple[subprocess.Popen, list[int]]:
    (tmp_path / "stubborn_program.py").write_text(STUBBORN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "1" if with_lifeline else "0"],
                              stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and not any(ended(p) for p in pids)
    return parent, pids


def test_a_child_whose_stop_hangs_is_killed_with_its_group_after_the_grace(tmp_path):
    parent, pids = start(tmp_path, with_lifeline=True)
    try:
        parent.kill()  # SIGKILL: up's own stop never runs
        parent.wait()
        wait_for(lambda: all(ended(p) for p in pids), lifeline.STOP_GRACE + 30, 0.1,
                 "the child and its fork to be killed after the grace")
    finally:
        parent.stdout.close()
        for pid in pids:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_the_parent_death_signal_nothing_is_killed(tmp_path):
    """The guard is only for children started with the signal set (by ``up``): a
    program started plainly through prestart outlives its parent, as before."""
    parent, pids = start(tmp_path, with_lifeline=False)
    try:
        parent.kill()
        parent.wait()
        wait_for(lambda: int(stat_fields(pids[0])[1]) != parent.pid, 30, 0.1,
                 "the child's adoption")
        time.sleep(lifeline.STOP_GRACE + 2 * lifeline.ORPHAN_POLL)  # the guard's whole wait
        assert not any(ended(p) for p in pids)
    finally:
        parent.stdout.close()
        for pid in pids:
            if not ended(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_signal_is_read_back_as_set():
    probe = subprocess.run(
        [sys.executable, "-c", "from kloros_tasks.cli import lifeline; "
         "print(lifeline.parent_death_signal())"],
        preexec_fn=lifeline.preexec(), capture_output=True, text=True, timeout=60, check=True)
    assert int(probe.stdout) == signal.SIGTERM
    plain = subprocess.run(
        [sys.executable, "-c", "from kloros_tasks.cli import lifeline; "
         "print(lifeline.parent_death_signal())"],
        capture_output=True, text=True, timeout=60, check=True)
    assert int(plain.stdout) == 0
