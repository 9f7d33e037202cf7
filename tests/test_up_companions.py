"""``kloros-tasks up`` and the commands run beside it: they find its Redis without
KLOROS_REDIS_URL, and its output to a file keeps the idle line and the end summary."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from procs import Proc, service_env

from kloros_tasks.connections import RECORDED_URL_FILE

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "kloros_tasks.cli"]
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))
# The tree declares a docstring policy: missing_docstrings asks only in such a tree.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["D"]\n'


@pytest.fixture
def up_world(procs):
    base = Path(tempfile.mkdtemp(prefix="kl-upc-"))
    tree, state = base / "tree", base / "state"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text(UNDOCUMENTED)
    (tree / "pyproject.toml").write_text(DOC_POLICY)
    (tree / "README.md").write_text("# Tree\n")
    env = service_env("", state, KLOROS_EXPLORATION_INTERVAL="3600")
    del env["KLOROS_REDIS_URL"]  # up embeds its own; the others must find it
    # stdout and stderr go to a file: neither is a terminal.
    up = procs.add(Proc(CLI + ["up", "--single-worker", str(tree)], env, base / "up.log"))
    yield up, env, state, tree
    up.stop()
    shutil.rmtree(base, ignore_errors=True)


def run(args, env, timeout=60):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def test_companion_commands_find_ups_redis_and_the_file_output_keeps_its_summaries(up_world):
    up, env, state, tree = up_world
    up.wait_output("knowledge.missing_docstrings", 90)
    up.wait_output("analysis idle: ", 60)
    idle = re.search(r"analysis idle: (\d+) questions open; this run opened (\d+) and "
                     r"resolved (\d+)", up.output())
    assert idle and int(idle[1]) >= 1 and int(idle[3]) == 0
    assert "\r" not in up.output() and "\x1b[" not in up.output()  # plain in a file

    url = (state / RECORDED_URL_FILE).read_text().strip()
    assert url == f"redis+socket://{state}/redis/redis.sock"
    assert run(CLI + ["env"], env).stdout == f"export KLOROS_REDIS_URL={url}\n"
    assert "knowledge.missing_docstrings" in run(CLI + ["questions", "--open"], env).stdout
    done = run(CLI + ["status", "--json"], env)
    assert done.returncode in (0, 1) and json.loads(done.stdout)["status"] != "absent"
    # Celery's own commands, through the app's configuration.  Addressed to up's one
    # worker (supervisor.plan names it "all"), the ping ends with its reply instead of
    # always waiting out the timeout for replies from workers that may not exist.
    ping = run([sys.executable, "-m", "celery", "-A", "kloros_tasks.celery_app", "inspect",
                "ping", "--timeout", "5", "-d", f"all@{socket.gethostname()}"], env, timeout=90)
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr

    # A resolution counts as resolved, not as one more question.
    (tree / "pkg" / "mod.py").write_text("")
    up.wait_output("resolved  knowledge.missing_docstrings", 30)
    assert up.stop() == 0
    summary = re.search(r"stopped: (\d+) questions open; this run opened (\d+) and "
                        r"resolved (\d+)", up.output())
    assert summary and int(summary[1]) == int(idle[1]) - 1 and int(summary[3]) == 1
    assert not (state / RECORDED_URL_FILE).exists()
