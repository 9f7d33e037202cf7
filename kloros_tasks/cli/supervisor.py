"""``kloros-tasks up``: the whole pipeline in the foreground, as child processes.

Children run in their own sessions (process groups), so a Ctrl-C reaches only this
supervisor, which then stops them in order with SIGTERM and, after a grace period,
SIGKILLs whole groups (a prefork worker's pool children included).  An exclusive
``flock`` on the state dir refuses a second ``up`` on the same state.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE = 7.0  # SIGTERM to SIGKILL; the whole stop stays under 10 s
CELERY = [sys.executable, "-m", "celery", "-A", "kloros_tasks.celery_app"]


class AlreadyRunning(RuntimeError):
    pass


def lock_state_dir(state_dir: Path):
    """Hold an exclusive lock on ``state_dir/up.lock`` for this process's lifetime."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "up.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise AlreadyRunning(
            f"kloros-tasks up is already running on {state_dir} (pid {owner}); stop it first"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{self.name}.log"
        out = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.argv, env={**env, **self.extra_env}, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def worker_argv(queues: list[str], settings: Settings, concurrency: int, node: str) -> list[str]:
    return CELERY + [
        "worker", "-Q", ",".join(queues), "-n", f"{node}@%h", "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--max-memory-per-child", str(settings.worker_max_memory_kib),
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--heartbeat-interval", "10",
    ]


def flower_child(settings: Settings, auth: str, nodes: list[str]) -> Child:
    """Flower on 127.0.0.1 only, behind basic auth, with a bounded task history; started
    once the worker ``nodes`` answer, so it lists them from the start (cli/flower.py)."""
    return Child("flower", [
        sys.executable, "-m", "kloros_tasks.cli.flower", ",".join(nodes), "--",
        "--address=127.0.0.1", f"--port={settings.flower_port}",
        "--max_tasks=10000", "--persistent=False", "--inspect_timeout=3000",
    ], extra_env={"FLOWER_BASIC_AUTH": auth})


def plan(settings: Settings, roots: list[Path], *, concurrency: int = 1,
         single_worker: bool = False, flower_auth: str | None = None) -> list[Child]:
    """The children of one ``up``: workers, beat, watcher (and the bridge when configured).

    The single worker runs beat embedded (``-B``), as kloros-curiosity-all.service
    does: a separate beat process would cost about 45 MiB to send one message every
    5 minutes."""
    children: list[Child] = []
    schedule = str(settings.state_dir / "celerybeat-schedule.json")
    if single_worker:
        children.append(Child("worker", worker_argv(list(names.QUEUES), settings,
                                                     concurrency, "all")
                              + ["-B", "--schedule", schedule]))
    else:
        for queue in names.QUEUES:
            children.append(Child(f"worker-{queue}",
                                  worker_argv([queue], settings, concurrency, queue)))
        children.append(Child("beat", CELERY + ["beat", "--loglevel", "INFO",
                                                "--schedule", schedule]))
    # --no-snapshot: run_up restores and writes the snapshot itself, around its children.
    children.append(Child("watcher", [sys.executable, "-m", "kloros_tasks.cli", "watch",
                                      "--no-snapshot", *map(str, roots)]))
    if settings.chem_xsub_given:
        children.append(Child("bridge", [sys.executable, "-m", "kloros_tasks.cli", "bridge"]))
    if flower_auth:
        nodes = ["all"] if single_worker else list(names.QUEUES)
        children.append(flower_child(settings, flower_auth, nodes))
    return children


def stop_all(children: list[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for child in reversed(children):
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", child.name, grace)
    for child in children:
        child.signal_group(signal.SIGKILL)  # also reaps orphaned pool children
        if child.proc is not None and child.proc.poll() is None:
            child.proc.wait(2)


def first_dead(children: list[Child]) -> Child | None:
    return next((c for c in children if not c.alive()), None)
