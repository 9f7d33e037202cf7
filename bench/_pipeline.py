"""Run ``kloros-tasks up`` exactly as a user would, and observe it from outside.

``Up`` starts ``python -m kloros_tasks.cli up PATH...`` with a private state dir under a
short /tmp directory, so the embedded ``redis-server`` listens on a unix socket there
(never on a TCP port).  When ChemBus is wanted it also starts ``kloros-tasks
chem-proxy`` on two free loopback ports and sets ``KLOROS_CHEM_XSUB``, so ``up``
starts the bridge.  Budgets are unlimited (``KLOROS_BUDGET_*=0``): the benchmarks
count every envelope, and the original daemons' hourly budgets would hold them back.

Processes are found through /proc (``up`` and its descendants) and named by role;
memory is PSS from ``/proc/PID/smaps_rollup``, CPU is utime+stime (+ reaped
children's) from ``/proc/PID/stat``.  Idle means: the watcher has finished its
initial reconciliation (its heartbeat carries its pid), every queue and kombu's
``unacked`` hash are empty, and this held without a new stream entry for
``QUIET`` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from kloros_tasks import names
from kloros_tasks.connections import redis_client
from kloros_tasks.watch import filters

QUIET = 2.0
POLL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
KOMBU_UNACKED = "unacked"  # kombu's Redis transport: messages delivered, not yet acked
EXPLORATION_INTERVAL = "3600"  # keep the hourly host scan out of the measured windows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench_env(state: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KLOROS_", "KLR_"))}
    env.update({"KLOROS_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1",
                "KLOROS_EXPLORATION_INTERVAL": EXPLORATION_INTERVAL})
    env.update({f"KLOROS_BUDGET_{d.upper()}": "0" for d in names.DETECTORS})
    env.update(extra)
    return env


# --- /proc ------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def parent_map() -> dict[int, int]:
    """pid -> ppid of every process we can see."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    parents = parent_map()
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found += kids
        frontier += kids
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid: int, with_reaped: bool = True) -> int | None:
    """utime+stime, plus cutime+cstime (children it has reaped: replaced pool processes)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if with_reaped else 0)


def role_of(argv: list[str]) -> str:
    """A readable role from a pipeline process's argv."""
    if "worker" in argv and "-Q" in argv:
        queues = argv[argv.index("-Q") + 1]
        return "worker (all queues)" if "," in queues else f"worker {queues}"
    if "beat" in argv:
        return "beat"
    for command in ("watch", "bridge", "chem-proxy", "up"):
        if command in argv and "kloros_tasks.cli" in argv:
            return {"watch": "watcher", "up": "up (supervisor)"}.get(command, command)
    if argv and "redis-server" in argv[0]:  # it rewrites its title: "redis-server unixsocket:..."
        return "redis-server"
    return " ".join(argv)[:40]


@dataclass
class Proc:
    pid: int
    role: str


# --- the pipeline -----------------------------------------------------------------------

class Up:
    """``kloros-tasks up`` on ``roots`` with a private state dir in ``workdir``."""

    def __init__(self, workdir: Path, roots: list[Path], *, single_worker: bool = False,
                 chembus: bool = False, extra_env: dict[str, str] | None = None,
                 concurrency: str | None = None) -> None:
        self.workdir, self.roots = workdir, roots
        self.concurrency = concurrency  # up --concurrency (N or MAX,MIN); up's default if None
        self.state = workdir / "state"
        self.single_worker, self.chembus = single_worker, chembus
        self.extra_env = dict(extra_env or {})
        self.xsub = self.xpub = ""
        self.proc: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.started_at = self.started_wall = 0.0
        self._client: redis.Redis | None = None
        # Round trips and commands this observer made, left out of redis_io().
        self.own_trips = self.own_commands = 0
        self._known: set[int] = set()
        self._log_marks: dict[Path, int] = {}

    @property
    def url(self) -> str:
        return f"unix://{self.state}/redis/redis.sock"

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            client = redis_client(self.url, socket_timeout=10)
            plain = client.execute_command

            def counted(*args, **options):
                self.own_trips += 1
                self.own_commands += 1
                return plain(*args, **options)

            client.execute_command = counted  # so that redis_io() can leave ours out
            self._client = client
        return self._client

    def redis_io(self) -> dict[str, int]:
        """What the pipeline asked of its Redis so far, this observer's own polling left
        out: ``reads`` (read(2) calls of redis-server: one per request a client sent, a
        pipeline or a script call counting once; from /proc/PID/io) and ``commands``
        (``INFO commandstats``: every command, those run inside scripts included)."""
        pid = self.pid_of("redis-server")
        reads = 0
        if pid is not None:
            io = Path(f"/proc/{pid}/io").read_text().split()
            reads = int(io[io.index("syscr:") + 1])
        stats = self.client.info("commandstats")
        commands = sum(int(v["calls"]) for v in stats.values())
        scripts = sum(int(v["calls"]) for k, v in stats.items()
                      if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall"))
        return {"reads": max(0, reads - self.own_trips),
                "commands": max(0, commands - self.own_commands),
                "scripts": scripts}

    def start(self, timeout: float = 30.0) -> Up:
        """Start ``up`` (and the proxy); return once the embedded Redis answers."""
        env = _bench_env(self.state, self.extra_env)
        if self.chembus:
            if not self.xpub:
                self.xsub = f"tcp://127.0.0.1:{free_port()}"
                self.xpub = f"tcp://127.0.0.1:{free_port()}"
            env.update({"KLOROS_CHEM_XSUB": self.xsub, "KLOROS_CHEM_XPUB": self.xpub})
            if self.proxy is None or self.proxy.poll() is not None:
                self.proxy = self._spawn(["chem-proxy"], env, "chem-proxy.log")
        self._mark_logs()
        argv = ["up", "--format", "jsonl", *map(str, self.roots)]
        argv.append("--single-worker" if self.single_worker else "--per-detector")
        if self.concurrency:
            argv += ["--concurrency", self.concurrency]
        self.started_at, self.started_wall = time.perf_counter(), time.time()
        self.proc = self._spawn(argv, env, "up.out")
        self.wait_for(self._redis_answers, timeout, "the embedded redis-server")
        return self

    def _spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "kloros_tasks.cli", *args], env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _redis_answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"kloros-tasks up exited {self.proc.returncode}; "
                               f"see {self.workdir / 'up.out'}")
        try:
            return bool(self.client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def wait_for(self, condition, timeout: float, what: str):
        """Poll ``condition`` until truthy and return its value; TimeoutError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL)

    # --- processes ----------------------------------------------------------------------
    def processes(self, include_proxy: bool = True) -> list[Proc]:
        """Every live process of the pipeline, with its role (pool processes named after
        their worker)."""
        found: list[Proc] = []
        if self.proc is not None and self.proc.poll() is None:
            found.append(Proc(self.proc.pid, "up (supervisor)"))
            parents = parent_map()
            for child in [p for p, pp in parents.items() if pp == self.proc.pid]:
                role = role_of(cmdline(child))
                found.append(Proc(child, role))
                for grandchild in [p for p, pp in parents.items() if pp == child]:
                    found.append(Proc(grandchild, f"{role} pool"))
        if include_proxy and self.proxy is not None and self.proxy.poll() is None:
            found.append(Proc(self.proxy.pid, "chem-proxy"))
        self._known.update(p.pid for p in found)
        return found

    def pid_of(self, role: str) -> int | None:
        return next((p.pid for p in self.processes() if p.role == role), None)

    # --- state as seen from Redis ----------------------------------------------------------
    def queued(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        self.own_trips += 1  # one round trip of len(QUEUES) + 1 commands
        self.own_commands += len(names.QUEUES) + 1
        for queue in names.QUEUES:
            pipe.llen(queue)
        pipe.hlen(KOMBU_UNACKED)
        return sum(pipe.execute())

    def watcher_synced(self) -> bool:
        """The watcher of *this* run has finished its initial reconciliation (its first
        heartbeat is written only after it).  In the default layout the watcher is a
        thread of ``up``: its heartbeat names ``up``'s pid."""
        raw = self.client.get(names.WATCHER_HEARTBEAT)
        if not raw:
            return False
        watcher = self.pid_of("watcher") or (self.proc.pid if self.proc is not None else None)
        return json.loads(raw).get("pid") == watcher

    def workers_ready(self) -> bool:
        logs = sorted((self.state / "logs").glob("worker*.log"))
        if not logs or len(logs) < (1 if self.single_worker else len(names.QUEUES)):
            return False
        return all(" ready." in self.log_since_start(p) for p in logs)

    def bridge_connected(self) -> bool:
        raw = self.client.get(names.BRIDGE_HEARTBEAT)
        return bool(raw) and bool(json.loads(raw).get("connected"))

    def seen(self) -> int:
        return sum(self.client.hlen(names.seen(filters.root_name(str(r)))) for r in self.roots)

    def stream_last_ms(self) -> int:
        last = self.client.xrevrange(names.STREAM, count=1)
        return int(last[0][0].split(b"-")[0]) if last else 0

    def busy(self, expect_seen: int | None) -> bool:
        if not (self.workers_ready() and self.watcher_synced()):
            return True
        if expect_seen is not None and self.seen() < expect_seen:
            return True
        return self.queued() > 0

    def wait_idle(self, expect_seen: int | None = None, timeout: float = 1800.0,
                  quiet: float = QUIET) -> float:
        """Wait until idle; returns the perf_counter time at which the final quiet
        window began (idle was reached then, and confirmed ``quiet`` s later)."""
        deadline = time.monotonic() + timeout
        since, last_entry = None, None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kloros-tasks up exited {self.proc.returncode}")
            entry = self.stream_last_ms()
            if self.busy(expect_seen) or entry != last_entry:
                since, last_entry = None, entry
            elif since is None:
                since = time.perf_counter()
            elif time.perf_counter() - since >= quiet:
                return since
            time.sleep(POLL)
        raise TimeoutError(f"the pipeline was not idle after {timeout:.0f} s")

    # --- logs ------------------------------------------------------------------------------
    def _mark_logs(self) -> None:
        """Remember where each log ended, so a restart's lines can be told apart."""
        logs = self.state / "logs"
        self._log_marks = {p: p.stat().st_size for p in logs.glob("*.log")} if logs.is_dir() \
            else {}

    def log_since_start(self, path: Path) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(self._log_marks.get(path, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def worker_log_lines(self, needle: str) -> list[str]:
        out = []
        for path in sorted((self.state / "logs").glob("worker*.log")):
            out += [ln for ln in self.log_since_start(path).splitlines() if needle in ln]
        return out

    # --- stopping ---------------------------------------------------------------------------
    def stop(self, keep_proxy: bool = False, timeout: float = 15.0) -> float:
        """SIGTERM ``up`` (it stops its children), wait; returns the seconds it took.
        Anything of ours still alive afterwards is killed by pid."""
        took = 0.0
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.processes()  # remember every pid, to clean up after a failed stop
            started = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            took = time.perf_counter() - started
        if not keep_proxy and self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy.wait(5)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        self._kill_leftovers(keep_proxy)
        return took

    def _ours(self, pid: int) -> bool:
        """True when ``pid`` still runs with this pipeline's state dir (not a reused pid)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"KLOROS_STATE_DIR={self.state}".encode() in environ

    def _kill_leftovers(self, keep_proxy: bool) -> None:
        keep = {self.proxy.pid} if keep_proxy and self.proxy is not None else set()
        for pid in self._known - keep:
            if self._ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._known &= keep
