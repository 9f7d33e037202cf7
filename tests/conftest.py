"""Shared fixtures: a private redis-server for the whole session, never the one on 6379."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from kloros_tasks.cli.embedded import EmbeddedRedis
from kloros_tasks.connections import redis_client


@pytest.fixture(scope="session")
def redis_server():
    # A short directory under /tmp: unix socket paths are limited to ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="kl-redis-"))
    server = EmbeddedRedis(directory, persist=False).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the private server, emptied before each test (it is ours alone)."""
    client = redis_client(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def procs():
    """Register started processes here; they are stopped when the test ends, pass or fail."""
    from procs import ProcGroup

    group = ProcGroup()
    yield group
    group.stop_all()


@pytest.fixture
def make_world(procs):
    """Factory of the fault tests' worlds (test_faults.World: a watched tree, a persistent
    private Redis, the processes of one test), each with its own settings; everything
    stops at teardown."""
    from test_faults import World

    made = []

    def make(**env: str):
        made.append(World(procs, **env))
        return made[-1]

    yield make
    for world in made:
        world.close()
