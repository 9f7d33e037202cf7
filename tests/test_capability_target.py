"""Which environment CapabilityDiscovery judges a tree against, by default and when set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kloros_tasks.settings import SettingsError, from_env
from kloros_tasks.work.registry import path_label, root_venv_python, scan_detector, target_python


def _venv(root: Path, folder: str) -> str:
    python = root / folder / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    return str(python)


def test_a_virtual_environment_in_the_root_is_the_default_target(tmp_path):
    settings = from_env({})
    assert target_python(settings, tmp_path) == sys.executable
    venv = _venv(tmp_path, "venv")
    assert root_venv_python(tmp_path) == venv
    dot_venv = _venv(tmp_path, ".venv")  # preferred over venv/
    assert target_python(settings, tmp_path) == dot_venv
    chosen = Path(sys.executable).resolve()
    assert target_python(from_env({"KLOROS_TARGET_PYTHON": str(chosen)}), tmp_path) == str(chosen)


def test_the_scan_probes_the_trees_own_environment(tmp_path):
    venv = _venv(tmp_path, ".venv")
    detector = scan_detector("capability", from_env({"KLOROS_HOSTNAME": "box1"}), tmp_path)
    assert detector.environment.python == venv
    assert detector.environment.path_label == "the PATH of host box1"


def test_the_target_path_is_validated_and_named_in_questions(tmp_path):
    (tmp_path / "bin").mkdir()
    settings = from_env({"KLOROS_TARGET_PATH": f"{tmp_path}/bin:/nonexistent-dir",
                         "KLOROS_HOSTNAME": "w1"})
    assert settings.target_path == f"{tmp_path}/bin:/nonexistent-dir"
    assert path_label(settings) == "KLOROS_TARGET_PATH as seen on host w1"
    (tmp_path / "bin" / "deploy-tool").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "deploy-tool").chmod(0o755)
    detector = scan_detector("capability", settings, tmp_path)
    assert "deploy-tool" in detector.environment.executables


@pytest.mark.parametrize("value", ["bin:/usr/bin", "/no/such/dir:/nor/this"])
def test_a_bad_target_path_names_the_variable_in_one_line(value):
    with pytest.raises(SettingsError) as info:
        from_env({"KLOROS_TARGET_PATH": value})
    assert "KLOROS_TARGET_PATH" in str(info.value) and "\n" not in str(info.value)
