"""Redis clients and URL forms, built from settings and passed in (never module-level).

Celery/kombu spell a unix socket ``redis+socket:///path``; redis-py spells it
``unix:///path``.  Both forms are accepted everywhere and translated here.
"""

from __future__ import annotations

import redis

HEALTH_CHECK_INTERVAL = 10
SOCKET_TIMEOUT = 10
CONNECT_TIMEOUT = 5


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


def redis_client(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT) -> redis.Redis:
    """A client with keepalive and health checks, so a restarted server is noticed."""
    url = client_url(url)
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only; unix sockets refuse the option
    return redis.Redis.from_url(url, **options)
