"""The rendered units under a real systemd, sandbox and all.

systemd runs as PID 1 of a private PID and mount namespace (``unshare``), with its own
``/run`` and a cgroup2 hierarchy, so the host is left alone: the units are installed
into that private ``/run/systemd/system`` and the units that would touch the host
(``systemd-tmpfiles``, which empties ``/tmp`` at boot, clocks, sysctls, mounts, timers)
are masked before it starts; ``/etc/systemd/system`` and ``/etc/kloros`` are private
tmpfs mounts there, so the units are installed and enabled where the manual says
without writing to the host's.  The test then does what docs/operations.md tells an
operator to do: render, ``systemctl enable --now kloros-curiosity.target``, stop a unit,
read the journal; and checks what the sandbox could break (``SystemCallFilter=``,
``ProtectSystem=``, ``PrivateTmp=``): every unit runs, the bridge delivers to a real
ZeroMQ subscriber, and ``kloros-tasks status`` tells the truth.

The units run as root here (``install-units --user root``): the virtualenv running the
tests usually lives under a home directory that a service account cannot read.  When it
lies under /tmp, ``PrivateTmp=`` would hide it, so a drop-in turns that one setting off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import wait_for

from kloros_tasks.cli.embedded import find_redis_server

pytestmark = pytest.mark.integration

VENV = Path(sys.prefix)
SYSTEMD = Path("/lib/systemd/systemd")
UNITS = Path("/run/systemd/system")  # inside the namespace: a private tmpfs
INSTALLED = Path("/etc/systemd/system")  # where install-units writes; also private there
DETECTOR_UNITS = ["kloros-integration-monitor.service", "kloros-capability-discovery.service",
                  "kloros-knowledge-discovery.service", "kloros-exploration-scanner.service"]
SERVICES = DETECTOR_UNITS + ["kloros-beat.service", "kloros-watcher.service",
                             "kloros-chembus-bridge.service"]
# Pulled in by sysinit.target/basic.target, and each would act on the shared host.
MASKED = [
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.timer", "systemd-sysusers.service", "systemd-sysctl.service",
    "systemd-modules-load.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "systemd-remount-fs.service",
    "systemd-timesyncd.service", "systemd-random-seed.service", "systemd-firstboot.service",
    "systemd-machine-id-commit.service", "systemd-repart.service", "systemd-pstore.service",
    "systemd-update-utmp.service", "kmod-static-nodes.service", "tmp.mount",
    "dev-hugepages.mount", "dev-mqueue.mount", "sys-kernel-config.mount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
    "timers.target", "epmd.socket",
]
BOOT_TARGET = "[Unit]\nDescription=Private boot target of the systemd test\n"
BOOT_SCRIPT = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p {units} /run/lock
cp {staging}/* {units}/
for unit in {masked}; do ln -s /dev/null {units}/$unit; done
mount -t tmpfs -o mode=0755 tmpfs /etc/systemd/system
if [ -d /etc/kloros ]; then mount -t tmpfs tmpfs /etc/kloros; fi
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
umount -R /sys/fs/cgroup 2>/dev/null || true
mount -t cgroup2 none /sys/fs/cgroup
export container=kloros-test
exec {systemd} --system --unit=kloros-boot.target --log-target=console
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a PID and mount namespace"
    for program in ("unshare", "nsenter", "systemctl", "journalctl"):
        if not shutil.which(program):
            return f"{program} is missing"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing (Debian package systemd)"
    return None


class Namespace:
    """systemd as PID 1 of a private namespace, and ways to run commands inside it."""

    def __init__(self, staging: Path, log: Path) -> None:
        script = BOOT_SCRIPT.format(units=UNITS, staging=staging, masked=" ".join(MASKED),
                                    systemd=SYSTEMD)
        with open(log, "wb") as out:
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--mount-proc",
                 "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.log = log
        self.pid = wait_for(self._child, 10, 0.05, "the namespace's PID 1")

    def _child(self) -> int | None:
        if self.unshare.poll() is not None:
            raise AssertionError(f"unshare exited:\n{self.log.read_text(errors='replace')}")
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        return int(pids[0]) if pids else None

    def run(self, *argv: str, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", *argv], env=env,
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def wait_booted(self) -> None:
        def booted():
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for(booted, 60, 0.2, "systemd to finish booting its private target")

    def kill(self) -> None:
        # SIGKILL of a PID namespace's init kills every process in the namespace.
        with _ignored(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with _ignored(subprocess.TimeoutExpired):
            self.unshare.wait(timeout=20)


class _ignored:
    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


class Deployment:
    """What a host running the per-queue units has: Redis, the ChemBus proxy, a tree."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = Path("/var/lib") / f"kloros-boot-{uuid.uuid4().hex[:8]}"
        self.tree = self.base / "tree"  # not under /tmp: each unit has its own (PrivateTmp)
        self.tree.mkdir(parents=True)
        self.state = self.base / "state"
        (self.tree / "documented.py").write_text('"""A module that says what it is."""\n')
        # A declared docstring policy: only then does missing_docstrings ask.
        (self.tree / "pyproject.toml").write_text('[tool.ruff.lint]\nselect = ["D"]\n')
        self.redis_port, self.xsub, self.xpub = free_port(), free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLOROS_")}
        self.env.update({"KLOROS_REDIS_URL": self.redis_url,
                         "KLOROS_CHEM_XSUB": f"tcp://127.0.0.1:{self.xsub}",
                         "KLOROS_CHEM_XPUB": f"tcp://127.0.0.1:{self.xpub}",
                         "KLOROS_WATCH_ROOTS": str(self.tree)})
        self.logs = tmp_path
        self.children: list[subprocess.Popen] = []

    def start_services(self) -> None:
        redis_argv = [find_redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no", "--dir", str(self.base)]
        self._spawn(redis_argv, "redis.log")
        self._spawn([str(VENV / "bin" / "kloros-tasks"), "chem-proxy"], "proxy.log")
        wait_for(lambda: self.status()[0] != 2, 20, 0.2, "the private redis-server")

    def _spawn(self, argv: list[str], log: str) -> None:
        with open(self.logs / log, "wb") as out:
            self.children.append(subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True))

    def drop_in(self) -> str:
        """The environment file's settings, as a drop-in (the host's file stays untouched)."""
        settings = " ".join(f'"{k}={v}"' for k, v in self.env.items() if k.startswith("KLOROS_")
                            and k != "KLOROS_CHEM_XPUB")
        lines = ["[Service]", f"Environment={settings}"]
        if any(str(p).startswith(("/tmp/", "/var/tmp/")) for p in (VENV, Path(__file__))):
            lines.append("PrivateTmp=no")
        return "\n".join(lines) + "\n"

    def status(self) -> tuple[int, dict]:
        done = subprocess.run([str(VENV / "bin" / "kloros-tasks"), "status", "--json"],
                              env=self.env, capture_output=True, text=True, timeout=60)
        return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else {})

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                with _ignored(subprocess.TimeoutExpired):
                    child.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Iterator[tuple[Namespace, Deployment]]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("systemd-boot")
    staging = tmp / "staging"
    staging.mkdir()
    (staging / "kloros-boot.target").write_text(BOOT_TARGET)
    deployment = Deployment(tmp)
    namespace = None
    try:
        deployment.start_services()
        namespace = Namespace(staging, tmp / "systemd.log")
        namespace.wait_booted()
        _install(namespace, deployment)
        yield namespace, deployment
    finally:
        if namespace is not None:
            namespace.systemctl("stop", "kloros-curiosity.target", check=False)
            namespace.kill()
        deployment.stop()


def _install(namespace: Namespace, deployment: Deployment) -> None:
    """docs/operations.md, "systemd": render, daemon-reload, enable --now the target."""
    namespace.run(str(VENV / "bin" / "kloros-tasks"), "install-units",
                  "--user", "root", "--state-dir", str(deployment.state), "--venv", str(VENV),
                  env=deployment.env)
    for unit in SERVICES:
        drop_in = INSTALLED / f"{unit}.d" / "env.conf"
        namespace.run("sh", "-c", f"mkdir -p {drop_in.parent} && cat > {drop_in}"
                      f" <<'EOF'\n{deployment.drop_in()}EOF")
    namespace.systemctl("daemon-reload")
    namespace.systemctl("enable", "--now", "kloros-curiosity.target")


def active(namespace: Namespace, units: list[str]) -> dict[str, str]:
    done = namespace.systemctl("is-active", *units, check=False)
    return dict(zip(units, done.stdout.split(), strict=True))


def diagnose(namespace: Namespace) -> str:
    """systemd's own account of the units that are not active, for a failure message."""
    down = [u for u, state in active(namespace, SERVICES).items() if state != "active"]
    if not down:
        return "every unit is active"
    status = namespace.systemctl("status", "-n", "15", *down, check=False)
    return status.stdout + status.stderr


def wait_healthy(namespace: Namespace, deployment: Deployment, timeout: float = 90) -> dict:
    """The report of ``kloros-tasks status --json`` once it exits 0 (healthy)."""
    last: dict = {}

    def healthy():
        code, report = deployment.status()
        last.update(report)
        return report if code == 0 else None

    try:
        return wait_for(healthy, timeout, 1.0, "kloros-tasks status to report healthy")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last.get('problems')}\n{diagnose(namespace)}") from None


def test_the_target_starts_every_unit_and_the_pipeline_is_healthy(booted):
    namespace, deployment = booted
    try:
        wait_for(lambda: set(active(namespace, SERVICES).values()) == {"active"}, 60, 0.5,
                 "every unit of the target to be active")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(namespace)}") from None

    report = wait_healthy(namespace, deployment)
    host = socket.gethostname()
    queues = ("integration", "capability", "knowledge", "exploration")
    # Each worker also consumes its own direct queue (worker_direct), for the scan fan-out.
    assert {node: queue in report["workers"].get(node, []) for queue in queues
            for node in [f"{queue}@{host}"]} == {f"{q}@{host}": True for q in queues}
    assert len(report["workers"]) == len(queues)
    assert report["watcher"]["roots"]
    assert report["bridge"]["heartbeat"]
    # Units that exited and were restarted would show up as a new main PID; none did.
    assert {unit: namespace.systemctl("show", "-p", "NRestarts", "--value", unit).stdout.strip()
            for unit in SERVICES} == dict.fromkeys(SERVICES, "0")


def subscribed_through_the_proxy(context, sub, xsub: int) -> None:
    """Return once ``sub``'s subscription has reached the proxy's publisher side: a probe
    published there until one arrives (no fixed sleep that a loaded machine outlasts).
    The proxy passes a subscription to every publisher connected to it, the bridge too."""
    probe = context.socket(zmq.PUB)
    probe.connect(f"tcp://127.0.0.1:{xsub}")
    try:
        def arrived() -> bool:
            probe.send_multipart([b"curiosity.knowledge_probe", b"{}"])
            return bool(sub.poll(200))

        wait_for(arrived, 60, 0, "the subscription to reach the proxy")
        while sub.poll(500):  # the probes sent before the first one arrived
            sub.recv_multipart()
    finally:
        probe.close(linger=0)


def test_a_question_reaches_a_chembus_subscriber_through_the_sandboxed_bridge(booted):
    namespace, deployment = booted
    wait_healthy(namespace, deployment)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    try:
        sub.connect(f"tcp://127.0.0.1:{deployment.xpub}")
        sub.setsockopt(zmq.SUBSCRIBE, b"curiosity.knowledge")
        subscribed_through_the_proxy(context, sub, deployment.xsub)
        # Four public functions without a docstring: over the threshold of three.
        (deployment.tree / "undocumented.py").write_text(
            "".join(f"def helper_{n}():\n    return {n}\n\n" for n in range(4)))
        assert sub.poll(60_000), "no envelope from the bridge within 60 s"
        topic, body = sub.recv_multipart()
    finally:
        sub.close(linger=0)
        context.term()
    assert topic.startswith(b"curiosity.knowledge")
    assert json.loads(body)["facts"]["question_id"].startswith("knowledge.")
    assert active(namespace, ["kloros-chembus-bridge.service"]) == {
        "kloros-chembus-bridge.service": "active"}


def test_a_stopped_detector_unit_is_reported_and_its_restart_clears_it(booted):
    namespace, deployment = booted
    unit = "kloros-integration-monitor.service"
    wait_healthy(namespace, deployment)
    namespace.systemctl("stop", unit)
    assert active(namespace, [unit]) == {unit: "inactive"}
    code, report = deployment.status()
    assert code == 1
    assert "no worker consumes the integration queue" in report["problems"]
    namespace.systemctl("start", unit)
    wait_healthy(namespace, deployment)


def test_each_unit_logs_to_the_journal_under_its_own_identifier(booted):
    namespace, _ = booted
    host = socket.gethostname()
    expected = {"kloros-integration-monitor": f"integration@{host} ready",
                "kloros-beat": "beat: Starting",
                "kloros-chembus-bridge": "bridging kloros:questions to ChemBus"}

    def logged():
        return {ident: text in namespace.run("journalctl", "--no-pager", "-t", ident).stdout
                for ident, text in expected.items()}

    wait_for(lambda: all(logged().values()), 30, 0.5, f"journal lines {expected}")
