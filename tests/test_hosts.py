"""Several hosts on one Redis: each part names its host as KLOROS_HOSTNAME says,
never by the system host name alone."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from pathlib import Path

from kloros_tasks import names
from kloros_tasks.settings import Settings, from_env
from kloros_tasks.state.publish import Publisher
from kloros_tasks.watch.producer import Watcher
from kloros_tasks.work import analysis
from kloros_tasks.work.payload import Change
from kloros_tasks.work.registry import build, worker_detector

HOST_A, HOST_B = "node-a.example", "node-b.example"
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))


class NoSender:
    def send(self, detector: str, payload: dict) -> None:  # pragma: no cover - unused
        raise AssertionError("nothing is sent in these tests")


def test_kloros_hostname_is_the_settings_host():
    assert from_env({"KLOROS_HOSTNAME": HOST_B}).host == HOST_B
    assert from_env({}).host == socket.gethostname()


def test_the_watcher_registers_its_roots_and_beats_under_kloros_hostname(tmp_path, redis_url, r):
    root = tmp_path / "proj"
    root.mkdir()
    watcher = Watcher(Settings(redis_url=redis_url, host=HOST_B), [root], sender=NoSender())
    try:
        watcher._register()
        watcher._beat(time.monotonic())
    finally:
        watcher.client.close()
    assert json.loads(r.hget(names.ROOTS, "proj"))["host"] == HOST_B
    assert json.loads(r.get(names.WATCHER_HEARTBEAT))["host"] == HOST_B


def test_the_capability_environment_is_cached_under_kloros_hostname(redis_url, r):
    settings = Settings(redis_url=redis_url, host=HOST_B)
    worker_detector(names.CAPABILITY, settings, r)
    digest = hashlib.sha256(sys.executable.encode()).hexdigest()[:16]
    assert r.exists(names.environment(HOST_B, digest))
    assert not r.exists(names.environment(socket.gethostname(), digest))


def _expired_blob_change(r, tmp_path: Path, watcher_host: str, worker_host: str) -> str:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "local.py").write_text(UNDOCUMENTED)
    r.hset(names.ROOTS, "tree", json.dumps({"path": str(root), "host": watcher_host}))
    ctx = analysis.Context(r, Publisher(r, host=worker_host), 1_000_000)
    sha = hashlib.sha256(UNDOCUMENTED.encode()).hexdigest()
    change = Change("tree", "local.py", "modified", sha, ts=1.0).to_json()  # no blob stored
    return analysis.handle_change(ctx, build(names.KNOWLEDGE, Settings()), change)


def test_an_expired_blob_is_read_from_disk_on_the_host_named_by_kloros_hostname(tmp_path, r):
    assert _expired_blob_change(r, tmp_path, HOST_A, HOST_A) == "analysed"


def test_an_expired_blob_is_not_read_from_disk_by_another_host(tmp_path, r):
    # Same machine, but a worker configured as another host must not take the
    # watcher's path for its own: on a real second host that path is another tree.
    assert _expired_blob_change(r, tmp_path, HOST_A, HOST_B) == "superseded"


def test_celery_names_the_direct_queue_as_the_docs_say():
    from celery.utils.nodenames import worker_direct

    queue = worker_direct("exploration@node-a").name
    assert queue == "exploration@node-a.dq2"
    docs = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    assert "`<node>.dq2`" in docs and "LLEN exploration@host.dq2" in docs


def test_the_readmes_worker_host_commands_log_tasks_and_include_an_exploration_worker():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Running on several hosts", 1)[1].split("\n## ", 1)[0]
    workers = [line for line in section.replace("\\\n", " ").splitlines()
               if "celery -A kloros_tasks.celery_app worker" in line]
    assert workers and all(" -l INFO" in w for w in workers)
    assert any("-Q exploration" in w for w in workers)
