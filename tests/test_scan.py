"""``kloros-tasks scan``: in-process, no broker, the workers' questions, usable as a CI gate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kloros_tasks.questions import loads

CLI = [sys.executable, "-m", "kloros_tasks.cli", "scan"]
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(UNDOCUMENTED)
    (tmp_path / "README.md").write_text("See [the guide](docs/guide.md) and `pkg.mod.gone`.\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Nobody links here\n")
    (tmp_path / "bin.py").write_bytes(b"\x00\x01binary")
    return tmp_path


def scan(*args, env=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, env=env)


def rules(stdout: str) -> set[str]:
    return {json.loads(line)["facts"]["metadata"]["rule"] for line in stdout.splitlines()}


def test_jsonl_prints_one_contract_envelope_per_question(tree):
    done = scan(str(tree), "--detector", "knowledge", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    for line in done.stdout.splitlines():
        loads(line)
    assert rules(done.stdout) == {"missing_docstrings", "unindexed_doc", "stale_doc"}
    assert "bin.py: not analysed: binary content" in done.stderr


def test_fail_on_turns_findings_into_exit_status_1(tree):
    assert scan(str(tree), "--detector", "knowledge", "--fail-on", "medium").returncode == 1
    assert scan(str(tree), "--detector", "knowledge", "--fail-on", "high").returncode == 0


def test_a_clean_tree_passes_and_an_unknown_detector_is_a_usage_error(tmp_path):
    (tmp_path / "README.md").write_text("# Clean\n")
    assert scan(str(tmp_path), "--fail-on", "low").returncode == 0
    done = scan(str(tmp_path), "--detector", "astrology")
    assert done.returncode == 2 and "unknown file detector astrology" in done.stderr


def test_text_output_is_quiet_about_progress_in_a_pipe(tree):
    done = scan(str(tree), "--detector", "knowledge")
    assert "analysed " not in done.stderr.replace("not analysed", "")
    assert "\r" not in done.stderr
    assert "pkg/mod.py" in done.stdout
