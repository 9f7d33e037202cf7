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
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


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
