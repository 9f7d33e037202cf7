"""``python -m kloros_tasks.cli.prestart MODULE ARGS...``: import, wait, then run MODULE.

How ``up`` starts its workers and its watcher while the embedded Redis still loads its
append-only file: the child imports what its program needs (Celery, kombu, the app,
redis-py, the watcher's modules: about a second of CPU per process), then reads its
standard input to the end, and only then runs ``python -m MODULE ARGS...`` in the same
interpreter (the imports are not repeated).  ``up`` holds the other end of that pipe
and closes it once Redis answers and the snapshot is restored, so nothing of a child
touches Redis earlier than before; a child started with /dev/null as its input (a
restart) runs at once, and one whose ``up`` died gets the end of input too.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from collections.abc import Callable

from kloros_tasks.cli import lifeline

# What each program imports before its first connection, by the module it runs.
_WORKER = ("kloros_tasks.celery_app", "celery.apps.worker", "celery.worker.consumer",
           "celery.concurrency.prefork", "kombu.transport.redis")
PRELOAD = {
    "celery": ("celery.bin.celery", *_WORKER),
    "kloros_tasks.cli.celery_worker": ("kloros_tasks.cli.celery_worker", *_WORKER),
    "kloros_tasks.cli": ("kloros_tasks.cli.main", "kloros_tasks.watch.producer"),
}


def wait_for_start() -> None:
    """Block until standard input ends, then point it at /dev/null."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass  # no usable stdin: nothing to wait for
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def run(module: str, args: list[str], started: Callable[[], object] | None = None) -> None:
    """Wait for the start, call ``started`` (if given), then run ``python -m MODULE
    ARGS...`` in this interpreter."""
    wait_for_start()
    if started is not None:
        started()
    lifeline.orphan_guard()  # a child of up: up's stop, even when up was killed
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m kloros_tasks.cli.prestart MODULE [ARGS...]")
    module = argv[0]
    for name in PRELOAD.get(module, ()):
        importlib.import_module(name)
    run(module, argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
