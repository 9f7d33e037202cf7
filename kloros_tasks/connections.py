"""Redis clients and URL forms, built from settings and passed in (never module-level).

Celery/kombu spell a unix socket ``redis+socket:///path``; redis-py spells it
``unix:///path``.  Both forms are accepted everywhere and translated here.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis._parsers import _HiredisParser, _RESP3Parser
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

HEALTH_CHECK_INTERVAL = 10
SOCKET_TIMEOUT = 10
CONNECT_TIMEOUT = 5
# Backoff between retries when a caller asks for some (redis-py's own defaults).
RETRY_BACKOFF_BASE = 0.01
RETRY_BACKOFF_CAP = 1.0


class RedisBusyError(redis.ConnectionError):
    """Redis answered ``BUSY``: a script (or a module command) is running past
    ``busy-reply-threshold``.  Transient like a lost connection: the same command
    succeeds once the script ends, so it is a ConnectionError subclass, as redis-py's
    own ``BusyLoadingError`` (a server still loading its data) is."""


# What "Redis is away for now; wait and try again" looks like to code using a client
# from ``redis_client``: BUSY and LOADING are ConnectionError subclasses there.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN")


def is_transient(exc: BaseException) -> bool:
    """True for an error that means "Redis is unavailable for now", including a
    ``BUSY``/``LOADING`` reply seen through a client not built here (kombu's, say)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


class _PythonParser(_RESP3Parser):
    # The parser redis-py uses by default without hiredis (its connections speak RESP3
    # unless told otherwise; the protocol is left as it was so that no reply changes
    # shape).  Replies starting with BUSY become RedisBusyError instead of a plain
    # ResponseError, so every ``except TRANSIENT_ERRORS`` (and redis-py's own retry)
    # covers them.
    EXCEPTION_CLASSES = {**_RESP3Parser.EXCEPTION_CLASSES, "BUSY": RedisBusyError}


class _HiredisBusyParser(_HiredisParser):
    # The same replies parsed in C: an index lookup can answer with thousands of paths,
    # which redis-py's own parser reads element by element in Python (docs/performance.md,
    # "Worker-side cost per file of a batch").
    EXCEPTION_CLASSES = {**_HiredisParser.EXCEPTION_CLASSES, "BUSY": RedisBusyError}


_Parser = _HiredisBusyParser if HIREDIS_AVAILABLE else _PythonParser


def client_url(url: str) -> str:
    """The redis-py form of a broker URL."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def broker_url(url: str) -> str:
    """The kombu form of a redis-py URL."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


MASK = "***"
SECRET_QUERY_KEYS = ("password", "pass", "passwd")


def redact(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query option)
    replaced by ``***``: the only form of a Redis URL that any message may show.

    Anything that does not parse is reduced to its scheme, so a mistyped URL holding a
    password is never echoed either."""
    if "://" not in url:
        return MASK if "@" in url else url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if colon else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v)
                               for k, v in pairs], safe="*")
        # Built by hand: urlunsplit drops the empty host of redis+socket:///path.
        return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
                + (f"#{parts.fragment}" if parts.fragment else ""))
    except ValueError:
        scheme, sep, _rest = url.partition("://")
        return f"{scheme}://{MASK}" if sep else MASK


def redis_client(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT,
                 retries: int | None = None) -> redis.Redis:
    """A client with keepalive and health checks, so a restarted server is noticed; a
    ``BUSY`` reply raises RedisBusyError (a ConnectionError).

    ``retries``: how often a command is retried on a connection error or timeout;
    None keeps redis-py's default, 0 fails at once (for callers with their own backoff).
    """
    url = client_url(url)
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "parser_class": _Parser,
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets refuse the option
    if retries is not None:
        options["retry"] = _retry(retries)
    return redis.Redis.from_url(url, **options)


def _retry(retries: int) -> Retry:
    if retries == 0:
        return Retry(NoBackoff(), 0)
    return Retry(ExponentialWithJitterBackoff(
        cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), retries)


# ``kloros-tasks up`` writes where its Redis is into this file of the state directory,
# so that the companion commands (questions, status, celery inspect ...) find it when
# KLOROS_REDIS_URL is unset.  One line: the URL.
RECORDED_URL_FILE = "redis.url"
RECORDED_PING_TIMEOUT = 0.5  # a recorded server that does not answer at once is not used


def record_redis_url(state_dir: Path, url: str) -> Path:
    """Write ``url`` to ``state_dir/redis.url`` (mode 0600: it may hold a password)."""
    path = Path(state_dir) / RECORDED_URL_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(url + "\n")
    os.replace(tmp, path)
    return path


def forget_redis_url(state_dir: Path, url: str) -> None:
    """Remove the record if it still names ``url`` (a later ``up`` may have replaced it)."""
    path = Path(state_dir) / RECORDED_URL_FILE
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


def recorded_redis_url(state_dir: Path) -> str | None:
    """The URL a running ``up`` recorded under ``state_dir``, if its Redis answers a PING."""
    try:
        url = (Path(state_dir) / RECORDED_URL_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not url:
        return None
    try:
        client = redis.Redis.from_url(client_url(url), socket_timeout=RECORDED_PING_TIMEOUT,
                                      socket_connect_timeout=RECORDED_PING_TIMEOUT)
    except ValueError:
        return None  # not a URL redis-py understands: ignore the record
    try:
        return url if client.ping() else None
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
