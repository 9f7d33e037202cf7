"""``kloros-tasks scan --format sarif``: a SARIF 2.1.0 log, valid against the published
OASIS schema kept in tests/data (see tests/data/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the [test] extra")

SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
CLI = [sys.executable, "-m", "kloros_tasks.cli", "scan", "--format", "sarif"]
UNDOCUMENTED = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(5))
# The tree declares a docstring policy: missing_docstrings asks only in such a tree.
DOC_POLICY = '[tool.ruff.lint]\nselect = ["D"]\n'


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n" + DOC_POLICY)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text(UNDOCUMENTED + "import not_installed_anywhere\n")
    (tmp_path / "README.md").write_text("See [the guide](docs/gone.md) and `pkg.mod.gone`.\n")
    return tmp_path


def sarif(*args) -> dict:
    done = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def validate(log: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(log)


def test_the_sarif_log_is_valid_against_the_sarif_2_1_0_schema(tree):
    log = sarif(str(tree))
    validate(log)
    assert log["version"] == "2.1.0"


def test_every_result_names_a_rule_with_help_a_level_and_a_location(tree):
    (run,) = sarif(str(tree))["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert {r["id"] for r in rules} >= {"knowledge.missing_docstrings", "knowledge.stale_doc",
                                       "capability.missing_module"}
    assert all(r["help"]["text"] and r["shortDescription"]["text"] for r in rules)
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] in {"note", "warning", "error"}
        assert result["message"]["text"].endswith("?")
        (location,) = result["locations"]
        artifact = location["physicalLocation"]["artifactLocation"]
        assert (tree / artifact["uri"]).is_file()
        assert run["originalUriBaseIds"][artifact["uriBaseId"]]["uri"] == tree.as_uri() + "/"
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["knowledge.missing_docstrings"] == "note"  # low
    assert levels["capability.missing_module"] == "error"  # high
    missing = next(r for r in run["results"] if r["ruleId"] == "capability.missing_module")
    assert missing["locations"][0]["physicalLocation"]["region"]["startLine"] == 16


def test_a_clean_tree_is_a_valid_log_with_no_results(tmp_path):
    (tmp_path / "README.md").write_text("# Clean\n")
    log = sarif(str(tmp_path))
    validate(log)
    assert log["runs"][0]["results"] == []


def test_a_log_missing_what_the_schema_requires_is_refused():
    # The schema check itself can fail: a result without a message is not SARIF.
    bad = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
                                         "results": [{"ruleId": "a"}]}]}
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
