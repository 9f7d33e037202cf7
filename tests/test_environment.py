"""The environment probe: a real target interpreter in a subprocess, real PATH scans,
the Redis cache on the private test server, and the detector judged against a probe."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from kloros_tasks.detectors.capability.detector import CapabilityDetector, Environment
from kloros_tasks.detectors.capability.environment import (
    ProbeError,
    cached_environment,
    executables,
    fingerprint,
    is_fresh,
    probe_environment,
)
from kloros_tasks.state.index import MemoryIndex, RedisIndex

VENV_PYTHON = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python")
TARGET = VENV_PYTHON if Path(VENV_PYTHON).exists() else sys.executable
BASE_ENV = {"PATH": os.environ.get("PATH", os.defpath)}


@pytest.fixture(scope="module")
def probed() -> Environment:
    return probe_environment(TARGET, env=BASE_ENV)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_the_probe_lists_installed_packages_and_not_absent_ones(probed):
    assert {"celery", "redis"} <= probed.modules
    assert "no_such_mod_xyz" not in probed.modules
    assert not probed.importable("no_such_mod_xyz")
    assert {"os", "json", "tomllib"} <= probed.stdlib
    assert probed.dists_of("zmq") == {"pyzmq"}
    assert "kloros-tasks" in probed.installed
    assert probed.python == TARGET and probed.site_dirs


def test_the_probe_never_imports_what_it_lists(tmp_path):
    # A module whose import would leave a mark: listed, yet the mark never appears.
    marker = tmp_path / "imported.txt"
    (tmp_path / "loud_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    env = probe_environment(TARGET, env={**BASE_ENV, "PYTHONPATH": str(tmp_path)})
    assert "loud_module" in env.modules
    assert not marker.exists()


def test_the_probe_ignores_its_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_only_module.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert "cwd_only_module" not in probe_environment(TARGET, env=BASE_ENV).modules


def test_executables_are_the_executable_files_on_path(tmp_path):
    bin_a, bin_b = tmp_path / "a", tmp_path / "b"
    bin_a.mkdir()
    bin_b.mkdir()
    _script(bin_a / "tool-one", "true")
    (bin_a / "notes.txt").write_text("not a program")
    (bin_a / "subdir").mkdir()
    (bin_b / "dangling").symlink_to(tmp_path / "nowhere")
    _script(bin_b / "tool-two", "true")
    path = os.pathsep.join([str(bin_a), "", str(tmp_path / "missing"), str(bin_b)])
    assert executables(path) == {"tool-one", "tool-two"}


def test_the_environment_keeps_variable_names_but_never_values(tmp_path):
    env = probe_environment(TARGET, path=str(tmp_path),
                            env={**BASE_ENV, "API_TOKEN": "s3cret-value"})
    assert "API_TOKEN" in env.env_vars
    assert "s3cret-value" not in json.dumps(env.to_json())
    # Only the interpreter's own folder: a virtual environment keeps its commands there.
    assert env.executables == executables(os.path.dirname(TARGET))


def test_the_interpreters_folder_and_the_path_label_are_part_of_the_target(tmp_path):
    env = probe_environment(TARGET, path=str(tmp_path), env=BASE_ENV,
                            path_label="KLOROS_TARGET_PATH as seen on host w1")
    assert Path(TARGET).name in env.executables
    assert env.path_label == "KLOROS_TARGET_PATH as seen on host w1"


def test_plugins_and_command_line_tools_are_known_to_be_used_without_an_import(probed):
    # watchdog ships the watchmedo command, pytest-timeout a pytest11 entry point.
    assert {"watchdog", "pytest-timeout"} <= probed.unimported
    assert "pyzmq" not in probed.unimported and "redis" not in probed.unimported


def test_a_data_only_distribution_is_known_to_be_used_without_an_import(tmp_path):
    # tzdata's shape: packages of __init__.py files and data, read by zoneinfo.
    (tmp_path / "zonedata" / "zones").mkdir(parents=True)
    (tmp_path / "zonedata" / "__init__.py").write_text("")
    (tmp_path / "zonedata" / "zones" / "__init__.py").write_text("")
    (tmp_path / "zonedata" / "zones" / "UTC").write_bytes(b"TZif")
    info = tmp_path / "zonedata-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zonedata\nVersion: 1.0\n")
    (info / "RECORD").write_text("zonedata/__init__.py,,\nzonedata/zones/__init__.py,,\n"
                                 "zonedata/zones/UTC,,\nzonedata-1.0.dist-info/METADATA,,\n")
    env = probe_environment(TARGET, env={**BASE_ENV, "PYTHONPATH": str(tmp_path)})
    assert "zonedata" in env.installed and "zonedata" in env.unimported
    assert env.dists_of("zonedata") == {"zonedata"}


def test_the_probe_round_trips_through_json(probed):
    assert Environment.from_json(json.loads(json.dumps(probed.to_json()))) == probed


def test_the_fingerprint_follows_site_dirs_path_and_variables(tmp_path):
    site, bindir = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bindir.mkdir()
    env = {"PATH": str(bindir)}
    first = fingerprint(TARGET, [str(site)], str(bindir), env)
    assert fingerprint(TARGET, [str(site)], str(bindir), env) == first
    os.utime(site, ns=(1_000_000_000, 1_000_000_000))  # as installing a package would
    second = fingerprint(TARGET, [str(site)], str(bindir), env)
    assert second != first
    assert fingerprint(TARGET, [str(site)], str(bindir) + ":/usr/bin", env) != second
    assert fingerprint(TARGET, [str(site)], str(bindir), {**env, "NEW": "1"}) != second


def test_a_fresh_probe_is_fresh_until_path_changes(probed):
    assert is_fresh(probed, env=BASE_ENV)
    assert not is_fresh(probed, path=BASE_ENV["PATH"] + os.pathsep + "/nonexistent",
                        env=BASE_ENV)


def test_a_relative_or_bare_interpreter_name_is_resolved_before_probing(tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(Path(TARGET).parent)
    assert probe_environment("./" + Path(TARGET).name, env=BASE_ENV).python == TARGET
    env = {"PATH": str(Path(TARGET).parent)}
    assert probe_environment(Path(TARGET).name, env=env).python == TARGET


def test_an_interpreter_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(ProbeError, match="cannot run target interpreter"):
        probe_environment(str(tmp_path / "python-nope"), env=BASE_ENV)


def test_an_interpreter_that_fails_is_a_clear_error(tmp_path):
    python = _script(tmp_path / "python", "echo 'boom: broken install' >&2\nexit 3")
    with pytest.raises(ProbeError, match="exit status 3: boom: broken install"):
        probe_environment(python, env=BASE_ENV)


def test_an_interpreter_that_answers_nonsense_is_a_clear_error(tmp_path):
    with pytest.raises(ProbeError, match="printed no JSON"):
        probe_environment(_script(tmp_path / "python", "echo hello"), env=BASE_ENV)
    with pytest.raises(ProbeError, match="unexpected answer"):
        probe_environment(_script(tmp_path / "python2", "echo '{}'"), env=BASE_ENV)


def test_a_hanging_interpreter_times_out_with_a_clear_error(tmp_path):
    python = _script(tmp_path / "python", "exec sleep 30")
    with pytest.raises(ProbeError, match="timed out after 0.5 s"):
        probe_environment(python, env=BASE_ENV, timeout=0.5)


def test_the_cache_probes_once_and_reports_a_change_only_when_contents_change(r, tmp_path):
    key = "kloros:test:env"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {"PATH": f"{bindir}{os.pathsep}{BASE_ENV['PATH']}"}
    first, changed_first = cached_environment(r, key, TARGET, env=env)
    again, changed_again = cached_environment(r, key, TARGET, env=env)
    assert (changed_first, changed_again) == (True, False)
    assert again == first
    os.utime(bindir, ns=(1_000_000_000, 1_000_000_000))  # a new fingerprint, same contents
    touched, changed_touched = cached_environment(r, key, TARGET, env=env)
    assert touched.fingerprint != first.fingerprint and changed_touched is False
    _script(bindir / "brand-new-tool", "true")
    grown, changed_grown = cached_environment(r, key, TARGET, env=env)
    assert changed_grown and "brand-new-tool" in grown.executables
    with_var, changed_var = cached_environment(r, key, TARGET, env={**env, "NEW_VAR": "1"})
    assert changed_var and "NEW_VAR" in with_var.env_vars
    r.set(key, "{not json")
    assert cached_environment(r, key, TARGET, env=env)[1] is True


# --- the detector against a real probe, on a temp project ---------------------------------

PROJECT = {
    "pyproject.toml": """
        [project]
        name = "demo-app"
        dependencies = ["redis>=5", "celery>=5", "watchdog", "pyzmq"]
    """,
    "demo_app/__init__.py": "",
    "demo_app/core.py": """
        import os
        import subprocess
        import redis
        import celery
        import kombu
        import no_such_mod_xyz
        from demo_app import helpers
        try:
            import also_missing_xyz
        except ImportError:
            also_missing_xyz = None

        def run():
            subprocess.run(["ls", "-l"])
            subprocess.run(["no-such-prog-xyz"])
            return os.environ["DEMO_SECRET_XYZ"], os.environ["PATH"]
    """,
    "demo_app/helpers.py": "",
}


def test_a_temp_project_is_judged_against_the_probed_environment(probed, tmp_path):
    for rel, text in PROJECT.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    detector, index = CapabilityDetector(probed), MemoryIndex()
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            rel = path.relative_to(tmp_path).as_posix()
            index.update(rel, detector.extract(rel, path.read_text()))
    got = {(q.rule, q.subject, q.severity)
           for rel in index.paths() for q in detector.evaluate(rel, index)}
    assert got == {
        ("missing_module", "demo_app/core.py:no_such_mod_xyz", "high"),
        ("undeclared_dependency", "demo_app/core.py:kombu", "medium"),
        ("undeclared_dependency", "pyproject.toml:unused:pyzmq", "low"),
        ("missing_executable", "demo_app/core.py:no-such-prog-xyz", "medium"),
        ("missing_env", "demo_app/core.py:DEMO_SECRET_XYZ", "low"),
    }


def test_the_detector_gives_the_same_questions_through_the_redis_index(r, probed):
    files = {rel: textwrap.dedent(text) for rel, text in PROJECT.items()}
    detector = CapabilityDetector(probed)
    memory, redis_index = MemoryIndex(), RedisIndex(r, "capability", "demo")
    for rel, text in files.items():
        facts = detector.extract(rel, text)
        memory.update(rel, facts)
        redis_index.update(rel, facts)

    def ids(index):
        return sorted(q.id for rel in index.paths() for q in detector.evaluate(rel, index))

    assert ids(redis_index) == ids(memory) and len(ids(memory)) == 5
