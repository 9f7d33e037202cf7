"""``.pre-commit-hooks.yaml``: the hook pre-commit would run, run as pre-commit runs it
(the entry followed by the staged file names, from the repository's root)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kloros_tasks.routing import route

HOOKS = Path(__file__).parent.parent / ".pre-commit-hooks.yaml"


def hook() -> dict[str, str]:
    """The one hook's ``key: value`` lines (the file is flat on purpose)."""
    fields = {}
    for line in HOOKS.read_text().splitlines():
        match = re.match(r"^(?:- |  )(\w+): (.*)$", line)
        if match:
            fields[match[1]] = match[2].strip().strip("'\"")
    return fields


def test_the_hook_runs_the_scan_as_a_python_hook_on_file_names():
    h = hook()
    assert h["id"] == "kloros-tasks-scan" and h["language"] == "python"
    assert h["pass_filenames"] == "true" and h["require_serial"] == "true"
    assert shlex.split(h["entry"]) == ["kloros-tasks", "scan", "--fail-on", "high"]


@pytest.mark.parametrize("path", ["pkg/mod.py", "README.md", "docs/x.rst", "notes.txt",
                                  "pyproject.toml", "requirements-dev.txt", ".env.example",
                                  "svc/prod.env.example", "setup.cfg", "pkg/tox.ini", ".flake8",
                                  "ruff.toml", ".ruff.toml", ".pydocstyle", ".env", ".env.local",
                                  "deploy/prod.env", "deploy/app.service", "run.sh",
                                  "docker-compose.yml", "compose.yaml", "Dockerfile",
                                  "img/base.dockerfile"])
def test_the_hook_selects_every_file_a_detector_reads(path):
    assert route(path)
    assert re.search(hook()["files"], path)


@pytest.mark.parametrize("path", ["image.png", "Makefile", "mkdocs.yml", "docs.toml",
                                  "app.yml"])
def test_the_hook_skips_files_no_detector_reads(path):
    assert not route(path)
    assert not re.search(hook()["files"], path)


def test_the_entry_with_staged_file_names_gates_the_commit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "app.py").write_text("import surely_not_installed_module\n")
    (tmp_path / "README.md").write_text("# Demo\n")
    entry = shlex.split(hook()["entry"])
    command = [sys.executable, "-m", "kloros_tasks.cli", *entry[1:]]
    failing = subprocess.run(command + ["app.py", "README.md"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert failing.returncode == 1, failing.stderr
    assert "capability.missing_module" in failing.stdout
    passing = subprocess.run(command + ["README.md"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert passing.returncode == 0, passing.stdout + passing.stderr
