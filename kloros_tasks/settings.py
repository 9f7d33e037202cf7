"""The only module that reads ``os.environ``: one frozen, validated Settings.

Every default is a named constant below.  A wrong value raises SettingsError whose
message is one line naming the variable; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_STATE_DIR = "~/.kloros"
DEFAULT_CHEM_XSUB = "tcp://127.0.0.1:5556"
DEFAULT_CHEM_XPUB = "tcp://127.0.0.1:5557"
DEFAULT_WORKER_MAX_MEMORY_MB = 150
# Pool processes per worker: (most, fewest); equal means a fixed pool (``--concurrency``),
# otherwise Celery's autoscaler grows it while tasks wait and shrinks it when idle.  One
# process per worker, except for the one worker of ``up``'s default layout, whose pool
# grows to a process per core of a 2-core host while a scan or a storm waits in the
# queues, and is one process again at rest (docs/performance.md).
DEFAULT_WORKER_CONCURRENCY = (1, 1)
DEFAULT_UP_CONCURRENCY = (2, 1)
MAX_WORKER_CONCURRENCY = 64
DEFAULT_EXPLORATION_INTERVAL = 300
DEFAULT_DEBOUNCE_MS = 50
# The watcher's heartbeat: also when it notices a Redis emptied under it.  Well under
# the heartbeat key's 30 s TTL (watch/producer.py), so a live watcher never looks gone.
DEFAULT_WATCHER_HEARTBEAT_MS = 5000
MAX_WATCHER_HEARTBEAT_MS = 10_000
DEFAULT_MAX_FILE_BYTES = 1_000_000
DEFAULT_DOCSTRING_THRESHOLD = 3
DEFAULT_STREAM_MAXLEN = 100_000
DEFAULT_BLOB_TTL = 3600
DEFAULT_TASK_TIME_LIMIT = 60
DEFAULT_VISIBILITY_TIMEOUT = 300
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_PENDING_LIMIT = 100_000
DEFAULT_EXPLORATION_RATE = (2, 300)
DEFAULT_TOOL_PACKAGES = ("tools", "skills")
DEFAULT_FLOWER_PORT = 5555  # questions per seconds reaching the channel

# What the bridge forwards to ChemBus per detector: (questions, per seconds); 0 = unlimited.
# The original daemons' expected rates.
DEFAULT_BUDGETS = {
    "integration": (5, 3600),
    "capability": (10, 3600),
    "knowledge": (10, 3600),
    "exploration": (2, 300),
}

# Upper bounds: past them a value is a typo, and some would fail only later (beat's
# timedelta overflows, a port beyond 65535 makes Flower bind a random one).
MAX_PORT = 65535
MAX_INTERVAL = 7 * 24 * 3600  # a week: exploration interval, time limits, TTLs
MAX_INT = 2**31 - 1  # counts and sizes
# KLoROS's own names for the proxy's two sides are honoured when ours are unset, in
# this order (KLR_UMN_* is the current spelling, KLR_CHEM_* the former one).
XSUB_VARIABLES = ("KLOROS_CHEM_XSUB", "KLR_UMN_XSUB", "KLR_CHEM_XSUB")
XPUB_VARIABLES = ("KLOROS_CHEM_XPUB", "KLR_UMN_XPUB", "KLR_CHEM_XPUB")

REDIS_SCHEMES = ("redis", "rediss", "redis+socket", "unix")
ZMQ_SCHEMES = ("tcp", "ipc", "inproc")


class SettingsError(ValueError):
    """A configuration value is invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    redis_url_given: bool = False
    # True when redis_url is the one a running `up` recorded in the state dir.
    redis_url_recorded: bool = False
    watch_roots: tuple[Path, ...] = ()
    state_dir: Path = field(default_factory=lambda: Path(DEFAULT_STATE_DIR).expanduser())
    chem_xsub: str = DEFAULT_CHEM_XSUB
    chem_xsub_given: bool = False
    chem_xpub: str = DEFAULT_CHEM_XPUB
    worker_max_memory_mb: int = DEFAULT_WORKER_MAX_MEMORY_MB
    # None: not configured, each layout's default (``pool_of``).
    worker_concurrency: tuple[int, int] | None = None
    exploration_interval: int = DEFAULT_EXPLORATION_INTERVAL
    exclude: tuple[str, ...] = ()
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    watcher_heartbeat_ms: int = DEFAULT_WATCHER_HEARTBEAT_MS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    docstring_threshold: int = DEFAULT_DOCSTRING_THRESHOLD
    stream_maxlen: int = DEFAULT_STREAM_MAXLEN
    blob_ttl: int = DEFAULT_BLOB_TTL
    task_time_limit: int = DEFAULT_TASK_TIME_LIMIT
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    pending_limit: int = DEFAULT_PENDING_LIMIT
    exploration_rate: tuple[int, int] = DEFAULT_EXPLORATION_RATE
    target_python: str | None = None  # the workers' own interpreter when None
    target_path: str | None = None  # the PATH programs are judged against; the worker's when None
    flower_auth: str | None = None  # "user:password" for Flower's basic auth
    host: str = field(default_factory=socket.gethostname)  # the name this host reports
    flower_port: int = DEFAULT_FLOWER_PORT
    tool_packages: tuple[str, ...] = DEFAULT_TOOL_PACKAGES
    budgets: tuple[tuple[str, int, int], ...] = tuple(
        (d, n, w) for d, (n, w) in DEFAULT_BUDGETS.items())

    def budget(self, detector: str) -> tuple[int, int]:
        """(questions, per seconds) the bridge may forward for ``detector``; 0 = unlimited."""
        for name, count, window in self.budgets:
            if name == detector:
                return count, window
        return 0, 1

    @property
    def worker_max_memory_kib(self) -> int:
        """Celery's ``worker_max_memory_per_child`` is in KiB."""
        return self.worker_max_memory_mb * 1024

    def pool_of(self, single_worker: bool = False) -> tuple[int, int]:
        """Each worker's pool: KLOROS_WORKER_CONCURRENCY when set, else the layout's
        default (autoscaled up to two processes for the one worker of ``up``'s default
        layout, one process for every other worker and unit)."""
        if self.worker_concurrency is not None:
            return self.worker_concurrency
        return DEFAULT_UP_CONCURRENCY if single_worker else DEFAULT_WORKER_CONCURRENCY

    def with_overrides(self, **changes) -> Settings:
        return replace(self, **changes)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0,
         maximum: int = MAX_INT) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    if value > maximum:
        raise SettingsError(f"{name}={value} must be at most {maximum}")
    return value


def _redact(url: str) -> str:
    from kloros_tasks.connections import redact  # noqa: PLC0415 - needs redis, only on error

    return redact(url)


def check_redis_url(name: str, url: str) -> str:
    """``url`` when it is a Redis URL every client here reads the same way (scheme, host
    or socket path, port, a numeric database); else SettingsError naming ``name``.
    Messages show the URL without its password."""
    problem = _redis_url_problem(url)
    if problem:
        raise SettingsError(f"{name}={_redact(url)!r} {problem}")
    return url


def _redis_url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        return "has an invalid port or host"
    if parts.scheme not in REDIS_SCHEMES:
        return "must start with one of " + ", ".join(s + "://" for s in REDIS_SCHEMES)
    if parts.scheme in ("redis+socket", "unix"):
        if not parts.path:
            return "names no socket path"
    elif not parts.hostname:
        return "names no host"
    elif port == 0:
        return "has an invalid port"
    # redis-py and kombu both read the database from the path (of a TCP URL) or a query
    # option; anything but a number is silently database 0 for one, an error for the other.
    databases = [parts.path.strip("/")] if parts.scheme in ("redis", "rediss") else []
    databases += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                  if k in ("db", "virtual_host")]
    bad = next((db for db in databases if db and not db.isdigit()), None)
    return None if bad is None else f"names the database {bad!r}, which is not a number"


def check_zmq_endpoint(name: str, endpoint: str) -> str:
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ZMQ_SCHEMES or not rest:
        raise SettingsError(f"{name}={endpoint!r} is not a ZeroMQ endpoint like tcp://host:port")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port.isdigit() or port == "*"):
            raise SettingsError(f"{name}={endpoint!r} needs host:port")
        if port != "*" and not 1 <= int(port) <= MAX_PORT:
            raise SettingsError(f"{name}={endpoint!r}: the port must be 1 to {MAX_PORT}")
    return endpoint


def check_state_dir(state_dir: Path, name: str = "KLOROS_STATE_DIR") -> Path:
    """Create ``state_dir`` (private, 0700) if needed and prove it writable; SettingsError
    naming ``name`` otherwise.  Called by the commands that keep state there (``up``,
    ``watch``) before they start anything, not by ``from_env``: ``scan`` and ``status``
    need no state dir."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        raise SettingsError(f"{name}={str(state_dir)!r} is not a writable directory "
                            f"({exc.strerror or exc})") from None
    return state_dir


def _rate(env: Mapping[str, str], name: str, default: tuple[int, int]) -> tuple[int, int]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    n, slash, w = raw.partition("/")
    try:
        count, window = int(n), (int(w) if slash else default[1])
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not COUNT or COUNT/SECONDS") from None
    if not (0 <= count <= MAX_INT and 1 <= window <= MAX_INTERVAL):
        raise SettingsError(f"{name}={raw!r}: COUNT >= 0 (0 = unlimited), SECONDS from 1 to"
                            f" {MAX_INTERVAL}")
    return count, window


def check_concurrency(name: str, raw: str) -> tuple[int, int]:
    """``N`` (a fixed pool of N processes) or ``MAX,MIN`` (autoscaled between them) as
    (most, fewest) pool processes; SettingsError naming ``name`` otherwise."""
    most, comma, fewest = raw.strip().partition(",")
    try:
        high = int(most)
        low = int(fewest) if comma else high
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not N or MAX,MIN") from None
    if not 1 <= low <= high <= MAX_WORKER_CONCURRENCY:
        raise SettingsError(f"{name}={raw!r}: pool processes need 1 <= MIN <= MAX <= "
                            f"{MAX_WORKER_CONCURRENCY}")
    return high, low


def _target_python(env: Mapping[str, str]) -> str | None:
    raw = env.get("KLOROS_TARGET_PYTHON", "").strip()
    if not raw:
        return None
    if not (os.path.isfile(raw) and os.access(raw, os.X_OK)):
        raise SettingsError(f"KLOROS_TARGET_PYTHON={raw!r} is not an executable file")
    return raw


def _target_path(env: Mapping[str, str]) -> str | None:
    raw = env.get("KLOROS_TARGET_PATH", "").strip()
    if not raw:
        return None
    entries = [p for p in raw.split(":") if p]
    relative = [p for p in entries if not os.path.isabs(p)]
    if relative or not entries:
        raise SettingsError(f"KLOROS_TARGET_PATH={raw!r}: every entry must be an absolute "
                            f"directory ({', '.join(relative) or 'none given'})")
    if not any(os.path.isdir(p) for p in entries):
        raise SettingsError(f"KLOROS_TARGET_PATH={raw!r} names no existing directory")
    return ":".join(entries)


def _flower_auth(env: Mapping[str, str]) -> str | None:
    raw = env.get("KLOROS_FLOWER_AUTH", "").strip()
    if not raw:
        return None
    user, colon, password = raw.partition(":")
    if not colon or not user or not password:
        raise SettingsError("KLOROS_FLOWER_AUTH must be user:password")
    return raw


def _budgets(env: Mapping[str, str]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for detector, (count, window) in DEFAULT_BUDGETS.items():
        name = f"KLOROS_BUDGET_{detector.upper()}"
        out.append((detector, *_rate(env, name, (count, window))))
    return tuple(out)


def _first_set(env: Mapping[str, str], variables: tuple[str, ...]) -> tuple[str, str]:
    """(name, value) of the first of ``variables`` set to a non-blank value, else (first, "")."""
    for name in variables:
        if env.get(name, "").strip():
            return name, env[name].strip()
    return variables[0], ""


def _roots(env: Mapping[str, str]) -> tuple[Path, ...]:
    raw = env.get("KLOROS_WATCH_ROOTS", "").strip()
    if not raw:
        return ()
    roots = []
    for part in raw.split(":"):
        if not part:
            continue
        path = Path(part).expanduser()
        if not path.is_dir():
            raise SettingsError(f"KLOROS_WATCH_ROOTS: {part!r} is not a directory")
        roots.append(path.resolve())
    return tuple(roots)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every KLOROS_* variable; raise SettingsError on the first bad one."""
    env = os.environ if env is None else env
    redis_url = env.get("KLOROS_REDIS_URL", "").strip()
    chem_name, chem_xsub = _first_set(env, XSUB_VARIABLES)
    xpub_name, chem_xpub = _first_set(env, XPUB_VARIABLES)
    exclude = tuple(p for p in env.get("KLOROS_EXCLUDE", "").replace(",", ":").split(":") if p)
    state_raw = env.get("KLOROS_STATE_DIR", "").strip() or DEFAULT_STATE_DIR
    state_dir = Path(state_raw).expanduser()
    if state_dir.exists() and not state_dir.is_dir():
        raise SettingsError(f"KLOROS_STATE_DIR={state_raw!r} exists and is not a directory")
    task_time_limit = _int(env, "KLOROS_TASK_TIME_LIMIT", DEFAULT_TASK_TIME_LIMIT, 2,
                           MAX_INTERVAL)
    visibility = _int(env, "KLOROS_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, 5,
                      MAX_INTERVAL)
    if visibility <= task_time_limit:
        raise SettingsError(
            f"KLOROS_VISIBILITY_TIMEOUT={visibility} must exceed the task time limit"
            f" ({task_time_limit} s), or long tasks would run twice"
        )
    recorded = None
    if not redis_url:
        # The Redis of a running `kloros-tasks up` on this state dir, when it answers.
        from kloros_tasks.connections import recorded_redis_url  # noqa: PLC0415 - needs redis

        recorded = recorded_redis_url(state_dir)
    return Settings(
        redis_url=(check_redis_url("KLOROS_REDIS_URL", redis_url) if redis_url
                   else recorded or DEFAULT_REDIS_URL),
        redis_url_given=bool(redis_url),
        redis_url_recorded=recorded is not None,
        watch_roots=_roots(env),
        state_dir=state_dir,
        chem_xsub=check_zmq_endpoint(chem_name, chem_xsub) if chem_xsub else DEFAULT_CHEM_XSUB,
        chem_xsub_given=bool(chem_xsub),
        chem_xpub=check_zmq_endpoint(xpub_name, chem_xpub) if chem_xpub else DEFAULT_CHEM_XPUB,
        worker_max_memory_mb=_int(
            env, "KLOROS_WORKER_MAX_MEMORY_MB", DEFAULT_WORKER_MAX_MEMORY_MB, 32
        ),
        worker_concurrency=(
            check_concurrency("KLOROS_WORKER_CONCURRENCY", env["KLOROS_WORKER_CONCURRENCY"])
            if env.get("KLOROS_WORKER_CONCURRENCY", "").strip()
            else None),
        exploration_interval=_int(
            env, "KLOROS_EXPLORATION_INTERVAL", DEFAULT_EXPLORATION_INTERVAL, 5, MAX_INTERVAL
        ),
        exclude=exclude,
        debounce_ms=_int(env, "KLOROS_DEBOUNCE_MS", DEFAULT_DEBOUNCE_MS, 0, 60_000),
        watcher_heartbeat_ms=_int(env, "KLOROS_WATCHER_HEARTBEAT_MS", DEFAULT_WATCHER_HEARTBEAT_MS,
                                  100, MAX_WATCHER_HEARTBEAT_MS),
        max_file_bytes=_int(env, "KLOROS_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, 1),
        docstring_threshold=_int(env, "KLOROS_DOCSTRING_THRESHOLD", DEFAULT_DOCSTRING_THRESHOLD),
        stream_maxlen=_int(env, "KLOROS_STREAM_MAXLEN", DEFAULT_STREAM_MAXLEN, 100),
        blob_ttl=_int(env, "KLOROS_BLOB_TTL", DEFAULT_BLOB_TTL, 10, MAX_INTERVAL),
        task_time_limit=task_time_limit,
        visibility_timeout=visibility,
        max_deliveries=_int(env, "KLOROS_MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES, 1),
        pending_limit=_int(env, "KLOROS_PENDING_LIMIT", DEFAULT_PENDING_LIMIT, 1),
        budgets=_budgets(env),
        exploration_rate=_rate(env, "KLOROS_EXPLORATION_RATE", DEFAULT_EXPLORATION_RATE),
        target_python=_target_python(env),
        target_path=_target_path(env),
        flower_auth=_flower_auth(env),
        host=env.get("KLOROS_HOSTNAME", "").strip() or socket.gethostname(),
        flower_port=_int(env, "KLOROS_FLOWER_PORT", DEFAULT_FLOWER_PORT, 1, MAX_PORT),
        tool_packages=tuple(p for p in env.get("KLOROS_TOOL_PACKAGES", "").replace(
            ":", ",").split(",") if p.strip()) or DEFAULT_TOOL_PACKAGES,
    )
