"""No message shows a Redis password: every command that names the Redis URL it could
not reach prints it through ``connections.redact``."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from procs import service_env

from kloros_tasks.connections import redact

CLI = [sys.executable, "-m", "kloros_tasks.cli"]
SECRET = "S3cretPW"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://kuser:S3cretPW@h:6379/0", "redis://kuser:***@h:6379/0"),
    ("redis://:S3cretPW@h/1", "redis://:***@h/1"),
    ("rediss://h:6380/0?ssl_cert_reqs=required&password=S3cretPW",
     "rediss://h:6380/0?ssl_cert_reqs=required&password=***"),
    ("redis+socket:///run/r.sock?password=S3cretPW", "redis+socket:///run/r.sock?password=***"),
    ("redis://kuser:S3c@retPW@h/0", "redis://kuser:***@h/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
    ("redis://[::1:S3cretPW@h", "redis://***"),
])
def test_redact_hides_the_password_and_keeps_the_rest(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "--json"], ["questions"], ["questions", "--open"],
])
def test_no_command_prints_the_password_of_an_unreachable_redis(argv, tmp_path):
    url = f"redis://kuser:{SECRET}@127.0.0.1:{closed_port()}/0"
    env = service_env(url, tmp_path / "state")
    done = subprocess.run(CLI + argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "kuser:***@127.0.0.1" in output
    assert SECRET not in output


def test_a_bad_url_is_named_without_its_password(tmp_path):
    env = service_env(f"redis://kuser:{SECRET}@h:6379/notadb", tmp_path / "state")
    done = subprocess.run(CLI + ["status"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "KLOROS_REDIS_URL" in done.stderr
    assert SECRET not in done.stderr
