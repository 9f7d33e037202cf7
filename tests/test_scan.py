"""``kloros-tasks scan``: in-process, no broker, the workers' questions, usable as a CI gate."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from kloros_tasks.questions import loads

CLI = [sys.executable, "-m", "kloros_tasks.cli", "scan"]
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))
# The tree declares a docstring policy: missing_docstrings asks only in such a tree.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["D"]\n'


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pyproject.toml").write_text(DOC_POLICY)
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


# --- a file as PATH (pyflakes and ruff accept files) ------------------------------------
def test_a_file_is_judged_within_its_tree_and_only_its_questions_are_printed(tree):
    (tree / ".git").mkdir()  # the tree's root, though the file is given from deeper down
    done = scan(str(tree / "README.md"), "--detector", "knowledge", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    (only,) = [json.loads(line) for line in done.stdout.splitlines()]
    # Stale: judged against the whole tree (pkg/mod.py exists, pkg.mod.gone does not).
    assert only["facts"]["metadata"]["rule"] == "stale_doc"
    assert only["facts"]["metadata"]["paths"] == ["README.md"]
    assert only["facts"]["metadata"]["root"] == tree.name
    # The binary file elsewhere in the tree is not this scan's business.
    assert "bin.py" not in done.stderr


def test_files_of_one_tree_are_indexed_once_and_a_directory_covers_its_files(tree):
    (tree / "pyproject.toml").write_text("[project]\nname = 'demo'\n" + DOC_POLICY)
    done = scan(str(tree / "pkg" / "mod.py"), str(tree / "docs" / "orphan.md"),
                "--detector", "knowledge", "--format", "jsonl")
    assert rules(done.stdout) == {"missing_docstrings", "unindexed_doc"}
    both = scan(str(tree), str(tree / "README.md"), "--detector", "knowledge",
                "--format", "jsonl")
    assert rules(both.stdout) == {"missing_docstrings", "unindexed_doc", "stale_doc"}


def test_the_tree_of_a_file_is_the_nearest_marked_ancestor_else_its_directory(tmp_path):
    from kloros_tasks.cli.scan import scan_targets, tree_root

    (tmp_path / "repo" / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "repo" / "setup.cfg").write_text("")
    (tmp_path / "repo" / "sub" / "deep" / "a.py").write_text("")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "b.py").write_text("")
    assert tree_root(tmp_path / "repo" / "sub" / "deep" / "a.py") == tmp_path / "repo"
    (target,) = scan_targets([str(tmp_path / "repo" / "sub" / "deep" / "a.py")])
    assert (target.root, target.only) == ((tmp_path / "repo").resolve(), {"sub/deep/a.py"})
    if not any((p / m).exists() for p in tmp_path.parents for m in (".git", "setup.cfg",
                                                                   "pyproject.toml", ".hg")):
        assert tree_root(tmp_path / "loose" / "b.py") == tmp_path / "loose"


# --- statistics and progress ------------------------------------------------------------
def test_statistics_count_questions_per_rule_instead_of_listing_them(tree):
    (tree / "docs" / "other.md").write_text("# Also unlinked\n")
    done = scan(str(tree), "--detector", "knowledge", "--statistics")
    assert done.returncode == 0
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows[0] == ["2", "knowledge.unindexed_doc", "low"]
    assert sorted(rows[1:]) == [["1", "knowledge.missing_docstrings", "low"],
                                ["1", "knowledge.stale_doc", "medium"]]


def test_every_scan_ends_with_the_count_by_severity_on_stderr(tree):
    done = scan(str(tree), "--detector", "knowledge")
    assert done.stderr.splitlines()[-1] == "3 questions (1 medium, 2 low)"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only_once_a_scan_runs_for_a_few_seconds():
    from kloros_tasks.cli.scan import ScanProgress

    now = [0.0]
    term = Terminal()
    progress = ScanProgress(term, delay=2.0, clock=lambda: now[0])
    show = progress.callback("repo knowledge")
    show(10, 100)
    assert term.getvalue() == ""  # a short scan stays quiet
    now[0] = 2.5
    show(20, 100)
    assert "repo knowledge: indexed 20 of 100 files" in term.getvalue()
    progress.clear()
    assert term.getvalue().endswith("\r")
    assert ScanProgress(io.StringIO(), delay=0).callback("x") is None  # not a terminal
