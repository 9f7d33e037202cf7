"""A fork server ("zygote") for the Celery workers of ``up --per-detector``.

``python -m kloros_tasks.cli.zygote REPORT_FD NAME LOG MODULE ARGS... [:: NAME LOG MODULE ARGS...]``

Every worker of that layout runs the same program, and importing it (Celery, kombu,
the app: cli/prestart.py's PRELOAD) is most of the CPU a worker spends to start.  This
process imports it once, moves what it imported to the collector's permanent
generation (``gc.freeze``: a collection in a fork would otherwise write to every page
it shares) and forks one process per command, then exits.  Each fork starts a session
of its own, reports ``NAME PID`` on REPORT_FD, writes to its own LOG, shows its command
in ``ps`` and then does what a prestarted child does: waits for the end of its standard
input (``up``'s gate, inherited) and runs ``python -m MODULE ARGS...``.

The forks are children of ``up`` as the processes it starts itself are: ``up`` is a
child subreaper (``adopt_orphans``), so the zygote's exit hands them to it.  ``up``
reads the reports to their end and waits for the zygote (``Launch``) before it treats
a pid as its own; from then on it waits for, signals and stops them as any child.  A
restart runs the plain prestart command.
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kloros_tasks.cli import lifeline, prestart

ZYGOTE = [sys.executable, "-m", "kloros_tasks.cli.zygote"]
PRESTART = [sys.executable, "-m", "kloros_tasks.cli.prestart"]  # supervisor.PRESTART
SEPARATOR = "::"
# How long the zygote may take to import and fork before ``up`` kills it (its children
# are then restarted the plain way); a stop waits at most this for its forks to report.
LAUNCH_WAIT = 30.0
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_adopting = False  # this process is a child subreaper (adopt_orphans)


@dataclass(frozen=True)
class Spec:
    """One command to fork: the child's name, its log file, ``python -m MODULE ARGS``."""

    name: str
    log: str
    module: str
    args: tuple[str, ...]


def parse(words: list[str]) -> list[Spec]:
    specs, current = [], []
    for word in [*words, SEPARATOR]:
        if word != SEPARATOR:
            current.append(word)
            continue
        if len(current) < 3:
            raise ValueError(f"a command needs NAME LOG MODULE: {current}")
        specs.append(Spec(current[0], current[1], current[2], tuple(current[3:])))
        current = []
    return specs


# --- the zygote's side -------------------------------------------------------------------

def set_cmdline(words: list[str]) -> None:
    """Show ``words`` as this process's command line (``ps``, /proc/PID/cmdline), in the
    space its own arguments take (the rest is zeroed): a fork would show the zygote's."""
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
    text = b"\0".join(w.encode() for w in words)[:end - start - 1]
    import ctypes  # noqa: PLC0415 - only forks need it

    ctypes.memmove(start, text.ljust(end - start, b"\0"), end - start)


def fork_each(specs: list[Spec]) -> Spec | None:
    """Fork a process per spec; returns the spec in each fork, None in the zygote."""
    if threading.active_count() > 1:  # a fork copies one thread and the others' locks
        raise RuntimeError("threads were started while importing; the zygote cannot fork")
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    for spec in specs:
        if os.fork() == 0:
            return spec
    return None


def become(spec: Spec, report_fd: int) -> None:
    """In a fork: its own session, its log, its command line, and then (so that ``up``
    never sees it otherwise) its report to ``up``."""
    os.setsid()
    fd = os.open(spec.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        set_cmdline([*ZYGOTE, spec.module, *spec.args])
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: ps then shows the zygote's command
    os.write(report_fd, f"{spec.name} {os.getpid()}\n".encode())
    os.close(report_fd)


def main(argv: list[str]) -> None:
    if len(argv) < 4:
        sys.exit("usage: python -m kloros_tasks.cli.zygote REPORT_FD NAME LOG MODULE "
                 f"[ARGS...] [{SEPARATOR} NAME LOG MODULE [ARGS...]]...")
    report_fd, specs = int(argv[0]), parse(argv[1:])
    for module in dict.fromkeys(spec.module for spec in specs):
        for name in ("ctypes", *prestart.PRELOAD.get(module, ())):  # ctypes: set_cmdline's
            importlib.import_module(name)
    up, me = os.getppid(), os.getpid()
    mine = fork_each(specs)
    if mine is None:
        return  # the zygote's work is done; its exit hands the forks to up
    become(mine, report_fd)
    # Adopted by up by the time its gate opens: from then on it ends when up does.
    prestart.run(mine.module, list(mine.args),
                 started=lambda: lifeline.end_with_adopter(up, me))


# --- up's side ---------------------------------------------------------------------------

def adopt_orphans() -> bool:
    """Make this process a child subreaper: the orphans of its descendants (the
    zygote's forks) become its children.  False where that is not possible."""
    global _adopting
    if not _adopting:
        _adopting = lifeline.prctl(PR_SET_CHILD_SUBREAPER, 1)
    return _adopting


def reap_orphans() -> None:
    """Reap the adopted orphans that have exited: children of this process that do not
    lead their process group (a worker's pool processes or beat, left behind when the
    worker was killed).  Every process ``up`` starts, the zygote's forks included, leads
    its own group, and its ``Popen`` (or ``Forked``) waits for it.  (An orphan that
    leads a session of its own, an exploration probe whose pool process died, stays a
    zombie until ``up`` exits.)"""
    if not _adopting:
        return
    for task in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                raw = Path(f"/proc/{pid}/stat").read_bytes()
                if int(raw[raw.rindex(b")") + 2:].split()[2]) != pid:  # pgrp
                    os.waitpid(pid, os.WNOHANG)
            except (OSError, ValueError):
                continue


class Launch:
    """One zygote started by ``up`` for ``children`` (supervisor.Child), gated by ``gate``.

    Nothing here blocks ``up``'s loop: ``collect`` reads the reports that arrived and is
    ``done`` once they ended and the zygote was reaped, or after LAUNCH_WAIT, when the
    zygote is killed (the children it did not fork then count as exited).  ``end``
    finishes it at once, for a stop."""

    def __init__(self, children, env: dict[str, str], log_dir: Path, gate) -> None:
        self.logs = {c.name: log_dir / f"{c.name}.log" for c in children}
        words: list[str] = []
        for child in children:
            assert child.argv[:len(PRESTART)] == PRESTART, child.argv
            if words:
                words.append(SEPARATOR)
            words += [child.name, str(self.logs[child.name]), *child.argv[len(PRESTART):]]
        read_fd, write_fd = os.pipe()
        log = os.open(log_dir / "zygote.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = subprocess.Popen(
                [*ZYGOTE, str(write_fd), *words], env=env, stdin=gate.read_fd, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(write_fd,),
                preexec_fn=lifeline.preexec())
        finally:
            os.close(log)
            os.close(write_fd)
        self.read_fd, self.buffer = read_fd, b""
        self.deadline = time.monotonic() + LAUNCH_WAIT
        self.pids: dict[str, int] = {}
        self.done = False

    def collect(self, block: float = 0.0) -> None:
        """Take the reports that arrived (waiting up to ``block`` seconds for the end);
        once they ended, reap the zygote: from then on its forks are our children."""
        until = time.monotonic() + block
        while self.read_fd is not None:
            if time.monotonic() >= self.deadline and self.proc.poll() is None:
                self.proc.kill()  # the forks it made still report, and close their ends
            now = time.monotonic()
            left = max(0.0, (min(until, self.deadline) if now < self.deadline else until) - now)
            if not select.select([self.read_fd], [], [], left)[0]:
                if time.monotonic() >= until:
                    return
                continue
            chunk = os.read(self.read_fd, 4096)
            if chunk:
                self.buffer += chunk
                continue
            os.close(self.read_fd)
            self.read_fd = None
        if not self.done:
            self.proc.wait()
            self._finish()

    def _finish(self) -> None:
        for line in self.buffer.decode().splitlines():
            name, pid = line.split()
            self.pids[name] = int(pid)
        for name, path in self.logs.items():
            if name not in self.pids:
                with open(path, "a") as f:
                    f.write(f"kloros-tasks: not started: the zygote exited with status "
                            f"{self.proc.returncode} (see zygote.log)\n")
        self.done = True

    def end(self) -> None:
        """Finish now: a zygote still importing is stopped (what it forked reports)."""
        if not self.done:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.collect(block=LAUNCH_WAIT)


def end_launches(children) -> None:
    """Finish the launches of ``children`` forked by a zygote, so that each pid is known
    (or known never to be) before they are stopped."""
    for child in children:
        if isinstance(child.proc, Forked):
            child.proc.launch.end()


class Forked:
    """What the supervisor asks of a ``Popen``, for a process the zygote forks: running
    (``poll`` None, ``pid`` None) until the zygote is done, then a child of ours."""

    def __init__(self, launch: Launch, name: str) -> None:
        self.launch, self.name = launch, name
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        self.launch.collect()
        return self.launch.pids.get(self.name)

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        pid = self.pid
        if pid is None:
            if self.launch.done:  # never forked: the zygote failed
                self.returncode = self.launch.proc.returncode or 1
            return self.returncode
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours after all (reaped elsewhere): gone
            self.returncode = 1
            return self.returncode
        if done:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.name, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self.pid is not None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(children, env: dict[str, str], log_dir: Path, gate) -> bool:
    """Start one zygote that forks ``children`` (gated ``python -m
    kloros_tasks.cli.prestart MODULE ...`` children) and give each a ``Forked`` handle;
    False (nothing started) where this process cannot adopt the forks."""
    if not adopt_orphans():
        return False
    started = Launch(children, env, log_dir, gate)
    for child in children:
        child.log_path, child.proc = started.logs[child.name], Forked(started, child.name)
    return True


if __name__ == "__main__":
    main(sys.argv[1:])
