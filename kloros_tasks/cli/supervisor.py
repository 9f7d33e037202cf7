"""``kloros-tasks up``: the whole pipeline in the foreground, as child processes.

Children run in their own sessions (process groups), so a Ctrl-C reaches only this
supervisor, which then stops them in order with SIGTERM and, after a grace period,
SIGKILLs whole groups (a prefork worker's pool children included).  An exclusive
``flock`` on the state dir refuses a second ``up`` on the same state.

A child that dies while ``up`` runs is restarted the way systemd's ``Restart=`` does
it (``RestartPolicy``): after a delay that doubles from RestartSec to a cap and resets
once the child has run for a while, with a start limit: more than ``burst`` restarts
of one child within ``interval`` seconds, or an exit status a restart cannot mend
(status 2 of a ``kloros-tasks`` child, a configuration error: the units'
``RestartPreventExitStatus=2``), and ``up`` gives up, stops everything and exits 1.
``up`` never asks a child to stop while running, so any exit counts, a clean one too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.cli import lifeline
from kloros_tasks.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE = lifeline.STOP_GRACE  # SIGTERM to SIGKILL; the whole stop stays under 10 s
# ``celery -A kloros_tasks.celery_app`` for the workers, without the subcommands and
# plugins a worker never uses (cli/celery_worker.py).
CELERY = [sys.executable, "-m", "kloros_tasks.cli.celery_worker", "-A", "kloros_tasks.celery_app"]
# ``python -m MODULE ...`` run through cli/prestart.py: imports first, then waits for
# its standard input to end (``Gate``) before it runs.
PRESTART = [sys.executable, "-m", "kloros_tasks.cli.prestart"]
# A ``kloros-tasks`` command's configuration error (cli/main.py): a restart cannot mend it.
CONFIG_ERROR = 2


class AlreadyRunning(RuntimeError):
    pass


def lock_state_dir(state_dir: Path):
    """Hold an exclusive lock on ``state_dir/up.lock`` for this process's lifetime."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "a+")  # held until exit
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


class Gate:
    """What gated children wait for: a process reads the end of its standard input (a
    pipe whose writing end only ``up`` holds; cli/prestart.py), a thread an event."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()  # neither inherited by any child
        self.event = threading.Event()

    def open(self) -> None:
        if not self.event.is_set():
            os.close(self._write_fd)
            os.close(self.read_fd)
            self.event.set()


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    final_statuses: frozenset[int] = frozenset()  # exits a restart cannot mend
    restarts: int = 0
    last_exit: int | None = None
    restart_at: float | None = None  # monotonic time of the pending restart, if any
    started_at: float = 0.0
    delay: float = 0.0
    restart_times: deque[float] = field(default_factory=deque)
    gated: bool = False  # may start before the Gate opens (waits for it on its own)
    forkable: bool = False  # gated; its first start may be a fork of the zygote (cli/zygote.py)

    def start(self, env: dict[str, str], log_dir: Path, gate: Gate | None = None) -> None:
        self.log_path = log_dir / f"{self.name}.log"
        # Logs name the watched files: private to the user, as the state dir is.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                self.argv, env={**env, **self.extra_env},
                stdin=gate.read_fd if gate is not None else subprocess.DEVNULL,
                stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lifeline.preexec(),  # ends when up ends, even killed
            )
        finally:
            os.close(fd)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        pid = self.proc.pid if self.proc is not None else None
        if pid is None:  # never started, or a fork the zygote did not make
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass


def prestarted(child: Child) -> Child:
    """``child`` (``python -m MODULE ...``) run through cli/prestart.py: it may be
    started before Redis answers, and imports while it waits for the Gate."""
    assert child.argv[1] == "-m", child.argv
    child.argv = PRESTART + child.argv[2:]
    child.gated = True
    return child


def pool_argv(concurrency: tuple[int, int]) -> list[str]:
    """``--concurrency N`` for a fixed pool, ``--autoscale MAX,MIN`` otherwise."""
    most, fewest = concurrency
    if most == fewest:
        return ["--concurrency", str(most)]
    return ["--autoscale", f"{most},{fewest}"]


def worker_argv(queues: list[str], settings: Settings, concurrency: tuple[int, int],
                node: str) -> list[str]:
    return CELERY + [
        "worker", "-Q", ",".join(queues), "-n", f"{node}@%h", "--pool", "prefork",
        *pool_argv(concurrency),
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


def plan(settings: Settings, roots: list[Path], *, concurrency: tuple[int, int] | None = None,
         single_worker: bool = True, flower_auth: str | None = None,
         bridge_in_process: Callable[[Settings], Child] | None = None,
         watcher_in_process: Callable[[Settings, list[Path]], Child] | None = None,
         beat_in_process: Callable[[Settings], Child] | None = None,
         ) -> list[Child]:
    """The children of one ``up``: workers, beat, watcher (and the bridge when configured).
    By default one worker on every queue; ``single_worker=False``: one per queue.  Each
    worker's pool is ``concurrency`` (most, fewest processes), by default the setting's
    or the layout's (``Settings.pool_of``).
    ``bridge_in_process``, ``watcher_in_process``, ``beat_in_process``: make that
    child from ``settings`` (and the roots) as a thread of ``up`` (cli/threadchild.py)
    instead of a process: ``up``'s default layout.

    Beat runs embedded (``-B``) in the single worker unless ``beat_in_process``, as
    kloros-curiosity-all.service does, and in the per-detector layout in the exploration
    worker, the one that consumes what it sends: a separate beat process would cost about
    45 MiB, and a seventh process importing Celery at every start, to send one message
    every 5 minutes."""
    concurrency = concurrency or settings.pool_of(single_worker)
    children: list[Child] = []
    schedule = str(settings.state_dir / "celerybeat-schedule.json")
    beat = ["-B", "--schedule", schedule]
    if single_worker:
        children.append(prestarted(Child("worker", worker_argv(
            list(names.QUEUES), settings, concurrency, "all")
            + (beat if beat_in_process is None else []))))
        if beat_in_process is not None:
            children.append(beat_in_process(settings))
    else:
        # Forked by one zygote: Celery is imported once instead of once per worker.
        for queue in names.QUEUES:
            children.append(prestarted(Child(
                f"worker-{queue}", worker_argv([queue], settings, concurrency, queue)
                + (beat if queue == names.EXPLORATION else []), forkable=True)))
    # The watcher keeps the snapshot, as under systemd: it restores it as soon as it
    # finds Redis emptied under it, and is the one process that writes it.
    if watcher_in_process is not None:
        children.append(watcher_in_process(settings, roots))
    else:
        children.append(prestarted(Child("watcher", [sys.executable, "-m", "kloros_tasks.cli",
                                                     "watch", *map(str, roots)],
                                         final_statuses=frozenset({CONFIG_ERROR}))))
    if settings.chem_xsub_given and bridge_in_process is not None:
        children.append(bridge_in_process(settings))
    elif settings.chem_xsub_given:
        children.append(prestarted(Child("bridge", [sys.executable, "-m", "kloros_tasks.cli",
                                                    "bridge"],
                                         final_statuses=frozenset({CONFIG_ERROR}))))
    if flower_auth:
        nodes = ["all"] if single_worker else list(names.QUEUES)
        children.append(flower_child(settings, flower_auth, nodes))
    return children


def zygote_of(children: list[Child]):
    """cli/zygote.py where some of ``children`` may be forked by a zygote (the
    per-detector layout), else None: the default layout's ``up`` never imports it."""
    if any(child.forkable for child in children):
        from kloros_tasks.cli import zygote  # noqa: PLC0415

        return zygote
    return None


def stop_all(children: list[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM every child group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    zygote = zygote_of(children)
    if zygote is not None:
        zygote.end_launches(children)  # a worker still being forked is stopped too
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
    if zygote is not None:
        zygote.reap_orphans()  # the pool processes of workers killed above


def describe_exit(status: int | None) -> str:
    """``exited with status N`` or ``was killed by SIGKILL``."""
    if status is not None and status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


@dataclass(frozen=True)
class RestartPolicy:
    """systemd's ``RestartSec=`` (doubling up to ``max_delay``, back to ``first_delay``
    after a run of ``stable_after`` seconds) and ``StartLimitBurst=`` within
    ``StartLimitIntervalSec=`` (``burst`` restarts of one child in ``interval`` s)."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0
    burst: int = 5
    interval: float = 300.0


class GaveUp(RuntimeError):
    """A child cannot be kept running; the message says which and why, in one line."""


class Supervisor:
    """Starts the children and keeps them running under a RestartPolicy."""

    def __init__(self, children: list[Child], env: dict[str, str], log_dir: Path, *,
                 policy: RestartPolicy = RestartPolicy(),
                 clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None) -> None:
        self.children, self.env, self.log_dir = children, env, log_dir
        self.policy, self.clock = policy, clock
        self.say = say or (lambda line: print(f"kloros-tasks: {line}", file=sys.stderr,
                                              flush=True))
        self.changed = True  # the state others read (``status``) needs publishing
        self.gate: Gate | None = None
        self.zygote = zygote_of(children)

    def start_all(self, gate: Gate | None = None) -> None:
        """Start every child; with a ``gate``, only the gated ones now (they wait for
        it), the others in ``open_gate``.  Gated children marked ``forkable``, when there
        are several, are forked by one zygote (cli/zygote.py) where this process can
        adopt its forks."""
        self.gate = gate
        forked = [c for c in self.children if c.forkable and c.gated and gate is not None]
        if len(forked) < 2 or not self.zygote.launch(forked, self.env, self.log_dir, gate):
            forked = []
        forked_ids = {id(child) for child in forked}
        for child in self.children:
            if id(child) in forked_ids:  # started (a Forked handle), not yet forked
                child.started_at, child.restart_at, self.changed = self.clock(), None, True
            elif gate is None or child.gated:
                self._start(child, gate)

    def open_gate(self) -> None:
        """Let the gated children run and start the others."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.open()
            for child in self.children:
                if not child.gated:
                    self._start(child)

    def close_gate(self) -> None:
        """Release the gate's pipe without starting anything (the children were stopped)."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.open()

    def _start(self, child: Child, gate: Gate | None = None) -> None:
        child.start(self.env, self.log_dir, gate)
        child.started_at, child.restart_at = self.clock(), None
        self.changed = True

    def check(self) -> None:
        """Restart the children whose delay is over and schedule those that died;
        GaveUp when one hit the start limit or exited for good."""
        now = self.clock()
        if self.zygote is not None:
            self.zygote.reap_orphans()
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                    self.say(f"{child.name} restarted (restart {child.restarts}); "
                             f"pid {child.proc.pid}")
            elif not child.alive():
                self._died(child, now)

    def _died(self, child: Child, now: float) -> None:
        child.last_exit = child.proc.returncode
        child.signal_group(signal.SIGKILL)  # pool children it left behind
        how = f"{child.name} {describe_exit(child.last_exit)}; see {child.log_path}"
        if child.last_exit in child.final_statuses:
            raise GaveUp(f"{how}; a restart cannot help")
        policy = self.policy
        while child.restart_times and now - child.restart_times[0] > policy.interval:
            child.restart_times.popleft()
        if len(child.restart_times) >= policy.burst:
            raise GaveUp(f"{how}; restarted {policy.burst} times within "
                         f"{policy.interval:.0f} s, giving up")
        if now - child.started_at >= policy.stable_after or not child.delay:
            child.delay = policy.first_delay
        else:
            child.delay = min(child.delay * 2, policy.max_delay)
        child.restart_times.append(now)
        child.restarts += 1
        child.restart_at = now + child.delay
        self.changed = True
        self.say(f"{how}; restarting in {child.delay:.0f} s")

    def state(self) -> dict[str, dict]:
        """Per child: pid, ``running`` or ``restarting``, restarts so far, last exit."""
        return {c.name: {"pid": c.proc.pid if c.proc is not None else None,
                         "state": "restarting" if c.restart_at is not None else "running",
                         "restarts": c.restarts, "last_exit": c.last_exit}
                for c in self.children}
