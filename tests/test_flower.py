"""Flower, started by ``kloros-tasks up --flower``: bound to 127.0.0.1, behind basic auth,
showing the four detector workers, in its API and in a real headless browser."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from procs import Proc, service_env, wait_for

from kloros_tasks import names

pytestmark = pytest.mark.integration
AUTH = "ops:s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, auth: str | None = AUTH) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def chromium() -> str | None:
    """Debian's chromium, installed when missing and we are allowed to (root with apt)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or not shutil.which("apt-get"):
        return found
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(command, capture_output=True, timeout=900, check=False)
    return shutil.which("chromium")


@pytest.fixture
def pipeline(procs):
    base = Path(tempfile.mkdtemp(prefix="kl-flower-"))
    tree = base / "tree"
    tree.mkdir()
    (tree / "README.md").write_text("# tree\n")
    port = free_port()
    env = service_env("", base / "state", KLOROS_FLOWER_AUTH=AUTH, KLOROS_FLOWER_PORT=str(port),
                      KLOROS_EXPLORATION_INTERVAL="3600")
    del env["KLOROS_REDIS_URL"]
    up = procs.add(Proc([sys.executable, "-m", "kloros_tasks.cli", "up", "--flower", str(tree)],
                        env, base / "up.log"))
    yield f"http://127.0.0.1:{port}", base
    up.stop()
    assert "Traceback" not in up.output(), up.output()[-3000:]
    shutil.rmtree(base, ignore_errors=True)


def test_flower_shows_the_four_detector_workers_behind_basic_auth(pipeline):
    url, base = pipeline

    def workers():
        status, body = get(f"{url}/api/workers?refresh=1")
        return status == 200 and json.loads(body)

    found = wait_for(lambda: (w := workers()) and len(w) >= 4 and w, 90, 1.0,
                     message="four workers in Flower")
    assert {name.split("@")[0] for name in found} >= set(names.QUEUES)
    assert get(f"{url}/api/workers", auth=None)[0] == 401
    assert get(f"{url}/api/workers", auth="ops:wrong")[0] == 401
    # The dashboard lists the workers Flower has heard from over events (a heartbeat
    # every 10 s), which can be later than the inspect replies above.
    wait_for(lambda: all(f"{q}@".encode() in get(f"{url}/workers")[1] for q in names.QUEUES),
             60, 1.0,
             message="the four workers on the dashboard")

    browser = chromium()
    if browser is None:
        pytest.skip("no chromium and no apt-get to install it")
    shot = base / "flower.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={base / 'chromium'}", "--window-size=1400,800",
             "--virtual-time-budget=8000"]
    page = url.replace("http://", f"http://{AUTH}@") + "/workers"
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120).stdout
    for queue in names.QUEUES:
        assert f"{queue}@" in dom
    subprocess.run([browser, *flags, f"--screenshot={shot}", page], capture_output=True,
                   timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000
