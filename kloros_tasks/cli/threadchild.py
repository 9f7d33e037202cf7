"""Children of ``up`` that run as threads of it, supervised as processes are.

The ChemBus bridge, the watcher and Celery Beat of the default layout run so
(``bridge_thread``, ``watcher_thread``, ``beat_thread``): each a process fewer, whose
redis-py, kombu and Celery modules ``up`` holds once (about 22, 33 and 15 MiB of PSS
at a burst's peak; docs/performance.md).  ``kloros-tasks bridge``, ``kloros-tasks
watch``, ``celery worker -B`` and their units stay as they are, and ``up
--per-detector`` runs them as processes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kloros_tasks.cli.supervisor import CONFIG_ERROR, Child, Gate
from kloros_tasks.settings import Settings, SettingsError

log = logging.getLogger(__name__)


class InProcess:
    """What the supervisor asks of a ``Popen``, for a child that runs as a thread of
    ``up``: ``target(stop)`` returns an exit status; an exception counts as status 1, a
    SettingsError as CONFIG_ERROR.  SIGTERM (or SIGINT) sets ``stop``; SIGKILL also
    abandons a thread that does not end (it is a daemon thread) and reports it killed."""

    def __init__(self, name: str, target: Callable[[threading.Event], int],
                 gate: Gate | None = None) -> None:
        self.pid = os.getpid()
        self.name, self.returncode, self.killed = name, None, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(target, gate), name=name,
                                       daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[threading.Event], int], gate: Gate | None) -> None:
        status = 1
        try:
            while gate is not None and not (gate.event.wait(0.1) or self.stop.is_set()):
                pass
            status = 0 if self.stop.is_set() else target(self.stop)
        except SettingsError as exc:
            log.error("%s: %s", self.name, exc)
            status = CONFIG_ERROR
        except Exception:
            log.exception("%s failed", self.name)
        finally:
            self.returncode = status

    def poll(self) -> int | None:
        if self.thread.is_alive():
            return -signal.SIGKILL if self.killed else None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self.thread.join(timeout)
        if self.thread.is_alive() and not self.killed:
            raise subprocess.TimeoutExpired(self.name, timeout or 0.0)
        return self.poll()

    def send_signal(self, sig: int) -> None:
        self.stop.set()
        self.killed = self.killed or sig == signal.SIGKILL

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class ThreadChild(Child):
    """A child run as a thread of ``up`` (``run(stop)``), supervised like a process: its
    own loggers (``loggers``) write to its log file instead of ``up``'s stderr."""

    run: Callable[[threading.Event], int] | None = None
    loggers: tuple[str, ...] = ()

    def start(self, env: dict[str, str], log_dir: Path, gate: Gate | None = None) -> None:
        path = log_dir / f"{self.name}.log"
        if self.log_path != path:
            self.log_path = path
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s"))
            for name in self.loggers:
                logger = logging.getLogger(name)
                logger.addHandler(handler)
                logger.setLevel(logging.INFO)
                logger.propagate = False
        self.proc = InProcess(self.name, self.run, gate)

    def signal_group(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)


def bridge_thread(settings: Settings) -> ThreadChild:
    """The ChemBus bridge as a thread of ``up``, on ``settings.redis_url``: one Python
    interpreter fewer (about 22 MiB PSS, most of it redis-py's modules, which ``up``
    has imported already); ``kloros-tasks bridge`` and its unit are unchanged."""

    def run(stop: threading.Event) -> int:
        from kloros_tasks.deliver.run import run_bridge  # noqa: PLC0415 - only when configured

        return run_bridge(settings, stop)

    return ThreadChild("bridge", [], final_statuses=frozenset({CONFIG_ERROR}), run=run,
                       loggers=("kloros_tasks.deliver",), gated=True)


def watcher_thread(settings: Settings, roots: list[Path]) -> ThreadChild:
    """The watcher as a thread of ``up``, on ``settings.redis_url``, keeping the snapshot
    as ``kloros-tasks watch`` does: one Python interpreter fewer (its redis-py, kombu and
    Celery modules are shared with ``up``'s); ``kloros-tasks watch`` and its unit are
    unchanged."""

    def run(stop: threading.Event) -> int:
        from kloros_tasks.watch.producer import run_watch  # noqa: PLC0415 - in the thread

        return run_watch(settings, roots, stop_event=stop, keep_snapshot=True)

    return ThreadChild("watcher", [], final_statuses=frozenset({CONFIG_ERROR}), run=run,
                       loggers=("kloros_tasks.watch",), gated=True)


def beat_thread(settings: Settings) -> ThreadChild:
    """Celery Beat as a thread of ``up`` on ``settings.redis_url`` (work/beatstore.py
    ``run_beat``), instead of the process a worker's ``-B`` forks: a worker-sized
    process fewer (about 15 MiB of PSS) for a scheduler that sends one task every
    five minutes.  ``up --per-detector`` and the units keep ``-B``."""

    def run(stop: threading.Event) -> int:
        from kloros_tasks.celery_app import app_for  # noqa: PLC0415 - Celery, in the thread
        from kloros_tasks.work.beatstore import run_beat  # noqa: PLC0415

        return run_beat(app_for(settings), stop)

    return ThreadChild("beat", [], final_statuses=frozenset({CONFIG_ERROR}), run=run,
                       loggers=("celery.beat", "kloros_tasks.work.beatstore"), gated=True)
