"""The systemd units: rendered for one installation, accepted by systemd, run as written."""

from __future__ import annotations

import base64
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from procs import Proc, service_env, wait_for

from kloros_tasks import names
from kloros_tasks.celery_app import create_app
from kloros_tasks.cli import units
from kloros_tasks.connections import redis_client
from kloros_tasks.settings import from_env

VENV = Path(sys.prefix)  # the virtualenv running the tests has celery and kloros-tasks
SERVICE_USER = "curio"
LAYOUTS = {"per-queue": False, "single-unit": True}
PER_QUEUE_FILES = {
    "kloros-integration-monitor.service", "kloros-capability-discovery.service",
    "kloros-knowledge-discovery.service", "kloros-exploration-scanner.service",
    "kloros-beat.service", "kloros-watcher.service", "kloros-chembus-bridge.service",
    "kloros-flower.service", "kloros-curiosity.target",
}
SINGLE_UNIT_FILES = {
    "kloros-curiosity-all.service", "kloros-watcher.service", "kloros-chembus-bridge.service",
    "kloros-flower.service", "kloros-curiosity.target",
}
MAX_EXPOSURE = 2.0  # `systemd-analyze security`: 0 is locked down, 10 fully exposed


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}, continuation lines joined as systemd does."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def render(tmp_path: Path, single_unit: bool = False, env: Mapping[str, str] | None = None,
           state_dir: Path | None = None) -> dict[str, dict[str, dict[str, list[str]]]]:
    settings = from_env(env or {})
    options = units.options_for(settings, venv=VENV, user=SERVICE_USER, single_unit=single_unit,
                                state_dir=state_dir or tmp_path / "state")
    written = units.install_units(options, tmp_path / "units")
    return {path.name: parse_unit(path.read_text()) for path in written}


def service(unit) -> dict[str, list[str]]:
    return unit["Service"]


def exec_argv(command: str, env: Mapping[str, str]) -> list[str]:
    """The argv systemd execs for an Exec*= value, for the syntax our units use:
    %H and %%, quotes, ${VAR} (from the unit's environment) and $$ for a literal $."""
    leftover = re.sub(r"%[H%]|\$\$|\$\{\w+\}", "", command)
    assert "%" not in leftover and "$" not in leftover, f"unsupported syntax in {command!r}"
    command = re.sub(r"%[H%]", lambda m: socket.gethostname() if m[0] == "%H" else "%", command)
    return [re.sub(r"\$\$|\$\{(\w+)\}", lambda m: "$" if m[0] == "$$" else env.get(m[1], ""), w)
            for w in shlex.split(command)]


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """``systemd-analyze``, installed with apt-get when missing and we are root."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("systemd-analyze is missing and cannot be installed (needs root and apt-get)")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"]
    if subprocess.run(install, env=apt_env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=apt_env, capture_output=True)
        subprocess.run(install, env=apt_env, capture_output=True)
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze is missing and `apt-get install systemd` failed")
    return found


# --- what the units say ----------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_renders_the_contracted_unit_names(tmp_path, layout):
    expected = SINGLE_UNIT_FILES if LAYOUTS[layout] else PER_QUEUE_FILES
    assert set(render(tmp_path, LAYOUTS[layout])) == expected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_template_field_is_left_unfilled(tmp_path, layout):
    render(tmp_path, LAYOUTS[layout])
    for path in (tmp_path / "units").iterdir():
        assert not units.PLACEHOLDER.search(path.read_text()), path.name


def test_a_template_field_without_a_value_is_refused():
    with pytest.raises(units.UnitsError, match="@NO_SUCH@"):
        units.render("ExecStart=@VENV@/bin/celery @NO_SUCH@", {"VENV": "/opt/v"}, "x.service")


@pytest.mark.parametrize("queue, unit_name", units.DETECTOR_UNITS.items())
def test_each_detector_unit_runs_one_worker_on_its_own_queue(tmp_path, queue, unit_name):
    svc = service(render(tmp_path)[unit_name])
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[:4] == [f"{VENV}/bin/celery", "-A", "kloros_tasks.celery_app", "worker"]
    assert argv[argv.index("-Q") + 1] == queue
    assert argv[argv.index("-n") + 1] == f"{queue}@%H"
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("--max-memory-per-child") + 1] == "153600"
    assert (svc["MemoryMax"], svc["MemoryHigh"]) == (["150M"], ["120M"])
    assert (svc["KillMode"], svc["OOMPolicy"]) == (["mixed"], ["continue"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_service_runs_as_the_user_with_the_environment_file_and_hardening(tmp_path,
                                                                               layout):
    state = tmp_path / "state"
    for name, unit in render(tmp_path, LAYOUTS[layout]).items():
        if name == units.TARGET:
            continue
        svc = service(unit)
        assert svc["User"] == [SERVICE_USER], name
        assert svc["EnvironmentFile"] == ["-/etc/kloros/kloros.env"], name
        assert svc["Environment"] == [f"KLOROS_STATE_DIR={state}"], name
        assert svc["ReadWritePaths"] == [str(state)], name
        assert svc["Restart"] == ["on-failure"], name
        assert svc["SyslogIdentifier"] == [name.removesuffix(".service")], name
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "read-only"), ("PrivateTmp", "yes"),
                           ("ProtectKernelTunables", "yes"), ("ProtectControlGroups", "yes"),
                           ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes")):
            assert svc[key] == [value], (name, key)
        assert unit["Unit"]["PartOf"] == [units.TARGET], name
        assert unit["Install"]["WantedBy"] == [units.TARGET], name


def test_the_single_unit_worker_serves_every_queue_with_beat_embedded(tmp_path):
    svc = service(render(tmp_path, single_unit=True)[units.ALL_UNIT])
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[argv.index("-Q") + 1].split(",") == list(names.QUEUES)
    assert "-B" in argv
    assert argv[argv.index("-s") + 1] == str(tmp_path / "state" / "celerybeat-schedule.json")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exactly_one_unit_runs_beat(tmp_path, layout):
    def runs_beat(unit) -> bool:
        argv = shlex.split(service(unit)["ExecStart"][-1])
        return "beat" in argv or "-B" in argv

    rendered = render(tmp_path, LAYOUTS[layout])
    beats = [name for name, unit in rendered.items() if name != units.TARGET and runs_beat(unit)]
    assert beats == [units.ALL_UNIT if LAYOUTS[layout] else units.BEAT_UNIT]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_target_enables_its_layout_but_not_flower(tmp_path, layout):
    rendered = render(tmp_path, LAYOUTS[layout])
    also = rendered[units.TARGET]["Install"]["Also"][0].split()
    assert set(also) == set(rendered) - {units.TARGET, units.FLOWER_UNIT}
    assert rendered[units.TARGET]["Install"]["WantedBy"] == ["multi-user.target"]


def test_memory_ceiling_stop_timeout_and_flower_port_follow_the_settings(tmp_path):
    rendered = render(tmp_path, env={"KLOROS_WORKER_MAX_MEMORY_MB": "200",
                                     "KLOROS_TASK_TIME_LIMIT": "100",
                                     "KLOROS_FLOWER_PORT": "5601"})
    worker = service(rendered["kloros-knowledge-discovery.service"])
    assert "--max-memory-per-child 204800" in worker["ExecStart"][0]
    assert worker["TimeoutStopSec"] == [str(100 + units.STOP_MARGIN)]
    assert "--port=5601" in service(rendered[units.FLOWER_UNIT])["ExecStart"][0]


@pytest.mark.parametrize(("value", "pool"), [("2", "--concurrency 2"),
                                             ("2,1", "--autoscale 2,1")])
def test_the_workers_pool_follows_the_settings(tmp_path, value, pool):
    for single_unit in (False, True):
        rendered = render(tmp_path, single_unit, env={"KLOROS_WORKER_CONCURRENCY": value})
        workers = [service(text)["ExecStart"][0] for name, text in rendered.items()
                   if name != units.TARGET and " worker " in service(text).get(
                       "ExecStart", [""])[0]]
        assert workers and all(pool in w for w in workers)


def test_a_state_dir_under_var_lib_is_a_systemd_state_directory(tmp_path):
    rendered = render(tmp_path, state_dir=Path("/var/lib/kloros"))
    assert service(rendered[units.BEAT_UNIT])["StateDirectory"] == ["kloros"]
    elsewhere = render(tmp_path, state_dir=Path("/srv/kloros"))
    assert service(elsewhere[units.BEAT_UNIT])["StateDirectory"] == [""]


def test_the_flower_password_stays_off_its_command_line(tmp_path):
    svc = service(render(tmp_path)[units.FLOWER_UNIT])
    argv = exec_argv(svc["ExecStart"][0], {"KLOROS_FLOWER_AUTH": "ops:s3cret"})
    assert argv[:2] == ["/usr/bin/env", "FLOWER_BASIC_AUTH=ops:s3cret"]
    assert not any("s3cret" in word for word in argv[2:])
    assert "--address=127.0.0.1" in argv and "--max_tasks=10000" in argv


def test_flower_refuses_to_start_without_a_password(tmp_path):
    svc = service(render(tmp_path)[units.FLOWER_UNIT])
    argv = exec_argv(svc["ExecStartPre"][0], {})
    check = subprocess.run(argv, env={"PATH": os.defpath}, capture_output=True, text=True)
    assert check.returncode == 2 and "KLOROS_FLOWER_AUTH" in check.stderr
    ok = subprocess.run(argv, env={"KLOROS_FLOWER_AUTH": "ops:pw"}, capture_output=True)
    assert ok.returncode == 0


# --- install-units -----------------------------------------------------------------------

@pytest.mark.parametrize("options, problem", [
    ({"venv": Path("/nonexistent/venv")}, "celery is missing"),
    ({"venv": VENV, "user": "Root Admin"}, "not a valid system user"),
    ({"venv": VENV, "state_dir": Path("/srv/my state")}, "systemd would rewrite"),
    ({"venv": VENV, "state_dir": Path("/srv/100%")}, "systemd would rewrite"),
    ({"venv": VENV, "state_dir": Path("relative/state")}, "absolute path"),
])
def test_install_units_refuses_an_unusable_installation(tmp_path, options, problem):
    with pytest.raises(units.UnitsError, match=problem):
        units.install_units(units.UnitOptions(**options), tmp_path)
    assert not list(tmp_path.iterdir())


def test_install_units_writes_the_units_and_prints_the_systemctl_commands(tmp_path):
    out = io.StringIO()
    status = units.run_install_units(from_env({}), prefix=tmp_path / "system", venv=VENV,
                                     user=SERVICE_USER, out=out)
    written = sorted(p.name for p in (tmp_path / "system").iterdir())
    assert status == 0 and written == sorted(PER_QUEUE_FILES)
    assert all((tmp_path / "system" / n).stat().st_mode & 0o777 == 0o644 for n in written)
    text = out.getvalue()
    assert "systemctl daemon-reload && systemctl enable --now kloros-curiosity.target" in text
    assert f"wrote {tmp_path / 'system' / 'kloros-beat.service'}" in text


def fake_venv(parent: Path, mode: int) -> Path:
    """A virtualenv-shaped directory under ``parent`` (given ``mode``) with runnable stubs."""
    parent.mkdir(mode=mode)
    parent.chmod(mode)  # mkdir's mode is filtered by the umask
    bin_dir = parent / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("celery", "kloros-tasks", "python"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return parent / "venv"


@pytest.fixture
def open_dir() -> Path:
    """A directory every account can enter (pytest's own temporary directories are private)."""
    directory = Path(tempfile.mkdtemp(prefix="kloros-units-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def test_a_program_behind_a_private_directory_is_unreachable_for_the_service_account(open_dir):
    venv = fake_venv(open_dir / "private", 0o700)
    programs = [venv / "bin" / "celery", venv / "bin" / "python"]
    problems = units.unreachable("nobody", programs)
    assert len(problems) == 2
    assert all(f"nobody cannot enter {open_dir / 'private'}" in p for p in problems)
    assert units.unreachable("root", programs) == []
    # An account not created yet is judged by the "other" bits: blocked as well.
    assert len(units.unreachable("an-account-not-created-yet", programs)) == 2


def test_install_units_warns_when_the_account_cannot_run_the_virtualenv(tmp_path, open_dir):
    for mode, warned in ((0o700, True), (0o755, False)):
        venv = fake_venv(open_dir / f"mode{mode:o}", mode)
        out = io.StringIO()
        units.run_install_units(from_env({}), prefix=tmp_path / f"units{mode:o}", venv=venv,
                                user="nobody", out=out)
        assert ("status=203/EXEC" in out.getvalue()) is warned, out.getvalue()


def test_switching_layouts_names_the_units_left_over(tmp_path):
    prefix = tmp_path / "system"
    settings = from_env({})
    units.run_install_units(settings, prefix=prefix, venv=VENV, out=io.StringIO())
    out = io.StringIO()
    units.run_install_units(settings, prefix=prefix, venv=VENV, single_unit=True, out=out)
    leftover = next(line for line in out.getvalue().splitlines() if "disable --now" in line)
    assert units.BEAT_UNIT in leftover and "kloros-exploration-scanner.service" in leftover
    assert units.WATCHER_UNIT not in leftover


# --- what systemd says ---------------------------------------------------------------------

def verify(systemd_analyze: str, directory: Path) -> subprocess.CompletedProcess:
    paths = sorted(str(p) for p in directory.iterdir())
    return subprocess.run([systemd_analyze, "verify", "--man=no", *paths],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_systemd_accepts_every_rendered_unit_without_a_warning(tmp_path, systemd_analyze,
                                                               layout):
    render(tmp_path, LAYOUTS[layout])
    result = verify(systemd_analyze, tmp_path / "units")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_verify_catches_a_unit_whose_program_is_missing(tmp_path, systemd_analyze):
    render(tmp_path)
    beat = tmp_path / "units" / units.BEAT_UNIT
    beat.write_text(beat.read_text().replace(f"{VENV}/bin/celery", "/nonexistent/celery"))
    result = verify(systemd_analyze, tmp_path / "units")
    assert result.returncode != 0 and "/nonexistent/celery" in result.stderr


def exposure(systemd_analyze: str, path: Path) -> float:
    result = subprocess.run([systemd_analyze, "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


def test_every_service_keeps_a_low_security_exposure(tmp_path, systemd_analyze):
    help_text = subprocess.run([systemd_analyze, "security", "--help"],
                               capture_output=True, text=True).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    render(tmp_path / "a")
    render(tmp_path / "b", single_unit=True)
    paths = [*(tmp_path / "a" / "units").glob("*.service"),
             tmp_path / "b" / "units" / units.ALL_UNIT]
    scores = {path.name: exposure(systemd_analyze, path) for path in paths}
    assert len(scores) == 9
    assert {name: s for name, s in scores.items() if s > MAX_EXPOSURE} == {}


# --- the rendered command lines, run for real ----------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RenderedLayout:
    """Runs the rendered units' commands the way systemd would, minus the sandbox."""

    def __init__(self, tmp_path: Path, redis_url: str, procs, single_unit: bool) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()  # what StateDirectory= or `install -d` does on a host
        tree = tmp_path / "tree"
        tree.mkdir()
        self.flower_port = free_port()
        self.env_file = {"KLOROS_WATCH_ROOTS": str(tree), "KLOROS_FLOWER_AUTH": "ops:pw",
                         "KLOROS_FLOWER_PORT": str(self.flower_port),
                         "KLOROS_CHEM_XSUB": f"tcp://127.0.0.1:{free_port()}"}
        self.rendered = render(tmp_path, single_unit, self.env_file)
        self.redis_url, self.procs, self.logs = redis_url, procs, tmp_path

    def start(self, name: str) -> None:
        svc = service(self.rendered[name])
        env = service_env(self.redis_url, self.state, **self.env_file)
        env.update(line.split("=", 1) for line in svc["Environment"])
        for command in svc.get("ExecStartPre", []):
            subprocess.run(exec_argv(command, env), env=env, check=True)
        argv = exec_argv(svc["ExecStart"][0], env)
        # Workers, beat, watcher, bridge, Flower: nothing is checked after the test.
        self.procs.add(Proc(argv, env, self.logs / f"{name}.log", kill_at_teardown=True))

    def nodes(self) -> set[str]:
        app = create_app(from_env({"KLOROS_REDIS_URL": self.redis_url}))
        return {node for reply in app.control.ping(timeout=0.5) for node in reply}


def flower_status(port: int, auth: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.integration
def test_the_per_queue_units_commands_run_the_pipeline(tmp_path, redis_url, procs):
    layout = RenderedLayout(tmp_path, redis_url, procs, single_unit=False)
    for name in units.PER_QUEUE_MEMBERS + (units.FLOWER_UNIT,):
        layout.start(name)
    host = socket.gethostname()
    expected = {f"{queue}@{host}" for queue in names.QUEUES}
    wait_for(lambda: expected <= layout.nodes(), 60, 0.5, "the four detector workers")
    schedule = layout.state / "celerybeat-schedule.json"
    wait_for(schedule.exists, 30, 0.2, "beat's schedule in the state dir")
    r = redis_client(redis_url)
    wait_for(lambda: r.exists(names.WATCHER_HEARTBEAT, names.BRIDGE_HEARTBEAT) == 2, 30, 0.2,
             "watcher and bridge heartbeats")
    wait_for(lambda: flower_status(layout.flower_port, "ops:pw") == 200, 60, 0.5, "flower")
    assert flower_status(layout.flower_port, None) == 401


@pytest.mark.integration
def test_the_single_unit_command_runs_every_queue_and_beat(tmp_path, redis_url, procs):
    layout = RenderedLayout(tmp_path, redis_url, procs, single_unit=True)
    layout.start(units.ALL_UNIT)
    wait_for(lambda: f"all@{socket.gethostname()}" in layout.nodes(), 60, 0.5, "the worker")
    wait_for((layout.state / "celerybeat-schedule.json").exists, 30, 0.2, "embedded beat")
