"""``kloros-tasks status`` tells the truth on a healthy pipeline and on each broken state."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from procs import Proc, service_env, start_worker, wait_for

from kloros_tasks import names

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "kloros_tasks.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(env) -> tuple[int, dict]:
    done = subprocess.run(CLI + ["status", "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, json.loads(done.stdout)


def test_status_on_a_healthy_pipeline_and_with_each_part_stopped(redis_url, r, tmp_path,
                                                                 procs):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "README.md").write_text("# hi\n")
    env = service_env(redis_url, tmp_path / "state",
                      KLOROS_CHEM_XSUB=f"tcp://127.0.0.1:{free_port()}",
                      KLOROS_CHEM_XPUB=f"tcp://127.0.0.1:{free_port()}")
    # Started together; each is waited for below.
    watcher = procs.add(Proc(CLI + ["watch", str(tree)], env, tmp_path / "watch.log"))
    procs.add(Proc(CLI + ["chem-proxy"], env, tmp_path / "proxy.log"))
    bridge = procs.add(Proc(CLI + ["bridge"], env, tmp_path / "bridge.log"))
    worker = procs.add(start_worker(redis_url, tmp_path, ",".join(names.QUEUES),
                                    tmp_path / "worker.log", **{
                                        k: v for k, v in env.items() if k.startswith("KLOROS_")}))
    wait_for(lambda: r.exists(names.WATCHER_HEARTBEAT) and r.exists(names.BRIDGE_HEARTBEAT), 30,
             message="watcher and bridge heartbeats")

    code, report = status(env)
    assert (code, report["status"], report["problems"]) == (0, "healthy", [])
    assert all(report["queues"][q]["consumers"] for q in names.QUEUES)
    assert report["watcher"]["roots"] == ["tree"]

    bridge.stop()
    r.delete(names.BRIDGE_HEARTBEAT)  # as its TTL would after 30 s
    code, report = status(env)
    assert code == 1 and any("bridge" in p for p in report["problems"])

    watcher.stop()
    r.delete(names.WATCHER_HEARTBEAT)
    code, report = status(env)
    assert code == 1 and any("watcher" in p for p in report["problems"])

    # The knowledge worker starts while the first one stops.
    knowledge_only = procs.add(start_worker(redis_url, tmp_path, "knowledge",
                                            tmp_path / "worker2.log", ready=False))
    worker.stop()
    knowledge_only.wait_output(" ready.")
    code, report = status(env)
    assert code == 1
    assert "no worker consumes the integration queue" in report["problems"]
    assert "no worker consumes the knowledge queue" not in report["problems"]


def test_status_says_unreachable_with_exit_2_when_redis_is_down(tmp_path):
    env = service_env(f"redis+socket://{tmp_path}/nothing.sock", tmp_path)
    code, report = status(env)
    assert code == 2 and report["status"] == "unreachable"
    assert "unreachable" in report["problems"][0]
