"""Start and stop the real processes that integration tests talk to.

At teardown every process of a test is signalled at once and then waited for, so a
test with several processes pays for the slowest stop, not for the sum.  A process
started with ``kill_at_teardown`` (Celery workers: a warm shutdown spends seconds in
Celery's own polling) is SIGKILLed with its process group there instead: nothing is
checked after teardown.  A test that stops a process on purpose calls ``stop()``,
which is still the SIGTERM an operator sends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

READY_TIMEOUT = 60.0


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition"):
    """Poll until ``condition()`` is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def service_env(redis_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLOROS_", "KLR_"))}
    env.update({"KLOROS_REDIS_URL": redis_url, "KLOROS_STATE_DIR": str(state_dir),
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, *,
                 kill_at_teardown: bool = False) -> None:
        self.log = log
        self.kill_at_teardown = kill_at_teardown
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        def seen():
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited {self.popen.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(seen, timeout, 0.1, f"{text!r} in {self.log}")

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
        return self._reap(time.monotonic() + timeout)

    def kill(self) -> int:
        """SIGKILL the process and everything in its group (pool children)."""
        self.signal_group(signal.SIGKILL)
        return self._reap(time.monotonic())

    def _reap(self, deadline: float) -> int:
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()
        self.signal_group(signal.SIGKILL)  # pool children left behind, if any
        return self.popen.returncode


class ProcGroup:
    """Every process a test starts, stopped at teardown even when the test fails early."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 10.0) -> None:
        """Signal every running process at once, then wait for each (one shared deadline)."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.signal_group(signal.SIGKILL if proc.kill_at_teardown else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            proc._reap(deadline)


def start_worker(redis_url: str, state_dir: Path, queues: str, log: Path, *,
                 node: str | None = None, ready: bool = True, concurrency: int = 1,
                 **extra) -> Proc:
    """A prefork worker on ``queues``, once it logs " ready." (``ready=False``: at once,
    for the caller to wait on after starting something else)."""
    node = node or f"{queues.replace(',', '-')}-test@%h"
    argv = [sys.executable, "-m", "celery", "-A", "kloros_tasks.celery_app", "worker",
            "-Q", queues, "-n", node, "--pool", "prefork",
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    proc = Proc(argv, service_env(redis_url, state_dir, **extra), log, kill_at_teardown=True)
    if ready:
        proc.wait_output(" ready.")
    return proc


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from its third field on (state, parent, group...); OSError once
    the process is gone."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()


def ended(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped yet."""
    try:
        return stat_fields(pid)[0] == "Z"
    except OSError:
        return True
