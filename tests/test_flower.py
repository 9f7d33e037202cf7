"""Flower, started by ``kloros-tasks up --flower``: bound to 127.0.0.1, behind the basic
auth it prints, listing the four detector workers from the start, in its API and on its
dashboard in a real headless browser.

The browser is Debian's ``chromium-headless-shell`` (with ``chromium-common``, which
holds its ICU data), fetched with ``apt-get download`` and unpacked into a temporary
directory, never installed; the ``playwright`` package drives it through
``executable_path``.  The browser part skips, saying why, where either is missing.
"""

from __future__ import annotations

import base64
import json
import re
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
BROWSER_PACKAGES = ("chromium-headless-shell", "chromium-common")
SHELL = Path("usr/lib/chromium/chromium-headless-shell")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, auth: str | None) -> tuple[int, bytes]:
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


def _apt_download(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", *BROWSER_PACKAGES], cwd=directory,
                          capture_output=True, text=True, timeout=600, check=False)


def _uninstalled_dependencies() -> list[str] | None:
    """What chromium-headless-shell depends on (apt's lists) that no installed package is
    or provides; None when apt cannot say.  Asked before anything is fetched: unpacking
    the browser takes longer than the rest of this module."""
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", BROWSER_PACKAGES[0]],
                           capture_output=True, text=True, timeout=120, check=False)
    depends = [line.split(":", 1)[1] for line in shown.stdout.splitlines()
               if line.startswith("Depends:")]
    listed = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}|${Package}|"
                             "${Provides}\n"], capture_output=True, text=True, timeout=120,
                            check=False)
    if shown.returncode != 0 or len(depends) != 1 or listed.returncode != 0:
        return None
    present = set(BROWSER_PACKAGES)
    for line in listed.stdout.splitlines():
        status, package, provides = line.split("|", 2)
        if status[1:2] == "i":  # installed (dpkg's second status letter)
            present.add(package.split(":")[0])
            present.update(p.split()[0].split(":")[0] for p in provides.split(",") if p.strip())
    missing = []
    for clause in depends[0].split(","):
        options = [o.split()[0].split(":")[0] for o in clause.split("|") if o.strip()]
        if not present.intersection(options):
            missing.append(clause.strip())
    return missing


@pytest.fixture(scope="module")
def headless_shell():
    """Path of chromium-headless-shell unpacked from Debian's packages into a temp dir."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("no apt-get/dpkg-deb to fetch Debian's chromium-headless-shell")
    if uninstalled := _uninstalled_dependencies():
        pytest.skip(f"chromium-headless-shell needs packages this host lacks: {uninstalled}")
    directory = Path(tempfile.mkdtemp(prefix="kl-chromium-"))
    try:
        done = _apt_download(directory)
        if done.returncode != 0:  # stale or missing package lists
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600,
                           check=False)
            done = _apt_download(directory)
        debs = sorted(directory.glob("*.deb"))
        if done.returncode != 0 or len(debs) != len(BROWSER_PACKAGES):
            pytest.skip(f"apt-get download {' '.join(BROWSER_PACKAGES)} failed: "
                        f"{done.stderr.strip()[-300:]}")
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(directory / "root")], check=True,
                           timeout=300)
        shell = directory / "root" / SHELL
        missing = [line.split()[0] for line in subprocess.run(
            ["ldd", str(shell)], capture_output=True, text=True).stdout.splitlines()
            if "not found" in line]
        if missing:
            pytest.skip(f"chromium-headless-shell needs libraries this host lacks: {missing}")
        yield shell
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pipeline(procs):
    base = Path(tempfile.mkdtemp(prefix="kl-flower-"))
    tree = base / "tree"
    tree.mkdir()
    (tree / "README.md").write_text("# tree\n")
    port = free_port()
    env = service_env("", base / "state", KLOROS_FLOWER_PORT=str(port),
                      KLOROS_EXPLORATION_INTERVAL="3600")
    del env["KLOROS_REDIS_URL"]
    up = procs.add(Proc([sys.executable, "-m", "kloros_tasks.cli", "up", "--flower",
                         "--per-detector", str(tree)], env, base / "up.log"))
    # The credentials up generated and printed once.
    printed = wait_for(lambda: re.search(r"flower on (http://127\.0\.0\.1:\d+)/ \(basic auth "
                                         r"(\S+:\S+)\)", up.output()), 60,
                       message="up's flower line")
    yield printed[1], printed[2], base
    up.stop()
    assert "Traceback" not in up.output(), up.output()[-3000:]
    shutil.rmtree(base, ignore_errors=True)


def workers_api(url: str, auth: str) -> dict:
    status, body = get(f"{url}/api/workers", auth)  # no ?refresh=1: what Flower already has
    return json.loads(body) if status == 200 else {}


def test_flower_lists_the_four_workers_from_the_start_behind_basic_auth(pipeline):
    url, auth, base = pipeline
    wait_for(lambda: get(f"{url}/healthcheck", None)[0] == 200, 120, 0.5,
             message="Flower answering")
    # Flower was started once the workers answered, so its own first inspection found
    # them: no refresh is needed (it used to stay {} until one).
    found = wait_for(lambda: len(w := workers_api(url, auth)) >= 4 and
                     all("stats" in i for i in w.values()) and w, 15, 0.5,
                     message="the four workers in /api/workers without a refresh")
    assert {name.split("@")[0] for name in found} == set(names.QUEUES)
    assert all(info.get("active_queues") for info in found.values())
    assert get(f"{url}/api/workers", None)[0] == 401
    assert get(f"{url}/api/workers", "kloros:wrong")[0] == 401
    flower_log = (base / "state" / "logs" / "flower.log").read_text()
    assert "answered; starting Flower" in flower_log, flower_log[-2000:]
    assert "Inspect method" not in flower_log, flower_log[-2000:]
    assert all("stats" in info for info in found.values())


def test_the_dashboard_shows_four_workers_online_in_a_headless_browser(pipeline,
                                                                       headless_shell):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    url, auth, base = pipeline
    user, password = auth.split(":", 1)
    wait_for(lambda: get(f"{url}/healthcheck", None)[0] == 200, 120, 0.5,
             message="Flower answering")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(headless_shell),
                                             args=["--no-sandbox"])
        try:
            refused = browser.new_page()
            assert refused.goto(f"{url}/workers").status == 401
            context = browser.new_context(
                http_credentials={"username": user, "password": password},
                viewport={"width": 1400, "height": 800})
            page = context.new_page()
            assert page.goto(f"{url}/workers").status == 200
            page.wait_for_function(
                "document.getElementById('workers-online').textContent.trim() === '4'",
                timeout=30_000)
            rows = page.locator("#workers-table tbody tr")
            texts = ["".join(rows.nth(i).inner_text().split()) for i in range(rows.count())]
            assert len(texts) == 4
            for queue in names.QUEUES:
                (row,) = [t for t in texts if t.startswith(f"{queue}@")]
                assert "Online" in row
            page.screenshot(path=str(base / "flower.png"))
            assert (base / "flower.png").stat().st_size > 10_000
        finally:
            browser.close()


def test_the_nodes_that_did_not_answer_a_ping_are_named():
    from kloros_tasks.cli.flower import missing_nodes

    replies = [{"knowledge@h1": {"ok": "pong"}}, {"exploration@h1": {"ok": "pong"}}]
    assert missing_nodes({"knowledge", "exploration", "capability"}, replies) == {"capability"}
    assert missing_nodes({"all"}, None) == {"all"}
