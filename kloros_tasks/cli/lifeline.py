"""A child of ``up`` ends when ``up`` does, however ``up`` ends.

``up`` stops its children itself when it is asked to (SIGTERM, SIGINT); killed
outright (SIGKILL, the OOM killer, a crash of the interpreter), it cannot, and its
children used to run on: workers retrying a Redis that was gone, a redis-server still
holding the state directory's append-only file when the next ``up`` started its own.
On Linux the kernel sends a child a chosen signal when its parent ends
(``PR_SET_PDEATHSIG``); the signal chosen is SIGTERM, which every child handles as a
stop (Celery's warm shutdown, the watcher's and the bridge's stop, redis-server's
shutdown, which syncs its append-only file).  The setting survives ``exec`` and is
tied to the thread that started the child: ``up`` starts its children from its
main thread.  A process handed to a new parent (a zygote's fork, adopted by ``up``)
gets the signal at the handover too, so it sets it only once adopted.  Elsewhere than
Linux nothing is set.

The signal is only the first half of ``up``'s own stop, which sends SIGKILL to what is
still running STOP_GRACE seconds after its SIGTERM.  Without that second half a worker
whose task was retrying the Redis that ended with ``up`` (a warm shutdown waits for
its tasks) ran on for as long as the task's retries, 40 s and more.  So a child that
has the signal set (``orphan_guard``, run by cli/prestart.py once the child starts)
watches for the end of its parent and, STOP_GRACE seconds after it, kills its own
process group (the child and its pool processes) as ``up`` would have.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
STOP_GRACE = 7.0  # up's stop: SIGTERM, then SIGKILL after this long (supervisor.py)
ORPHAN_POLL = 0.5  # s between two looks at the parent (a getppid call)


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's among them
    except OSError:
        return None
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()  # resolved before any fork: the child only calls it


def prctl(option: int, value: int) -> bool:
    """``prctl(option, value)``; False where it failed or there is none (not Linux)."""
    return _PRCTL is not None and _PRCTL(option, value, 0, 0, 0) == 0


def parent_death_signal() -> int:
    """The signal this process is sent when its parent ends; 0 for none (or not Linux)."""
    if _PRCTL is None:
        return 0
    found = ctypes.c_int(0)
    if _PRCTL(PR_GET_PDEATHSIG, ctypes.addressof(found), 0, 0, 0) != 0:
        return 0
    return found.value


def end_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` sent to this process when its parent (pid ``parent``) ends; if it
    has ended already (this process was adopted meanwhile), exit at once."""
    prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os._exit(1)


def preexec(sig: int = signal.SIGTERM):
    """A ``preexec_fn`` for ``subprocess.Popen`` doing ``end_with_parent`` in the child
    before it runs its program (set before ``exec``, the signal survives it): call it
    in the thread that will start the child."""
    parent = os.getpid()
    return lambda: end_with_parent(parent, sig)


def end_with_adopter(adopter: int, first_parent: int, wait: float = 5.0) -> bool:
    """``end_with_parent(adopter)`` for a process whose parent ``first_parent`` exits
    and hands it to ``adopter``, a child subreaper (a fork of cli/zygote.py): set only
    once the handover happened, since the signal is also sent at the handover itself.
    False (nothing set) if ``first_parent`` is still there after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while os.getppid() == first_parent:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    end_with_parent(adopter)
    return True


def orphan_guard(grace: float = STOP_GRACE, poll: float = ORPHAN_POLL) -> threading.Thread | None:
    """In a child whose parent-death signal is set (started by ``up``, once it runs):
    a daemon thread that, once the parent has ended, waits ``grace`` seconds for the
    signal's stop to end this process and then sends SIGKILL to its process group (the
    whole group only if this process leads it, as each child of ``up`` does; else to
    itself).  None, and nothing started, where no parent-death signal is set."""
    if not parent_death_signal():
        return None
    parent = os.getppid()

    def guard() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        time.sleep(grace)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)  # this process with its group
        else:
            os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=guard, name="orphan-guard", daemon=True)
    thread.start()
    return thread
