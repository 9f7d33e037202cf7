"""Start and stop the real processes that integration tests talk to."""

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

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
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

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # pool children left behind, if any
        except ProcessLookupError:
            pass
        return self.popen.returncode


class ProcGroup:
    """Every process a test starts, stopped at teardown even when the test fails early."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def start_worker(redis_url: str, state_dir: Path, queues: str, log: Path, *,
                 node: str | None = None, **extra) -> Proc:
    node = node or f"{queues.replace(',', '-')}-test@%h"
    argv = [sys.executable, "-m", "celery", "-A", "kloros_tasks.celery_app", "worker",
            "-Q", queues, "-n", node, "--pool", "prefork",
            "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat"]
    proc = Proc(argv, service_env(redis_url, state_dir, **extra), log)
    proc.wait_output(" ready.")
    return proc
