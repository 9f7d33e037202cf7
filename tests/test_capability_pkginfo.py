"""CapabilityDiscovery and an sdist's root PKG-INFO: its Requires-Dist declare, pure."""

from __future__ import annotations

import pytest
from test_capability_detector import ENV, build, questions

from kloros_tasks.detectors.capability import deps
from kloros_tasks.detectors.capability.detector import CapabilityDetector, wants_path
from kloros_tasks.routing import route
from kloros_tasks.state.index import MemoryIndex

# interrogate 1.7.0's, shortened: setup.py (not read) declares, PKG-INFO says the same.
PKG_INFO = """\
Metadata-Version: 2.1
Name: interrogate
Version: 1.7.0
Summary: Interrogate a codebase for docstring coverage.
Requires-Python: >=3.8
Requires-Dist: attrs
Requires-Dist: colorama
Requires-Dist: tabulate
Requires-Dist: tomli; python_version < "3.11"
Provides-Extra: png
Requires-Dist: cairosvg; extra == "png"
Provides-Extra: dev
Requires-Dist: cairosvg; extra == "dev"
Requires-Dist: pytest; extra == "dev"

interrogate: explain yourself
=============================
Requires-Dist: not-a-header
"""
CODE = {
    "setup.py": "from setuptools import setup\nsetup(install_requires=['colorama', 'tabulate'])\n",
    "src/interrogate/__init__.py": "",
    "src/interrogate/badge_gen.py": "import os\n\n\ndef png():\n    import cairosvg\n",
    "src/interrogate/cli.py": "import colorama\nimport tabulate\nimport attr\n",
    "src/interrogate/utils.py": "import colorama\nimport tabulate\n",
}
WITH_ATTRS = ENV.__class__(**{**ENV.to_json(), "modules": [*ENV.modules, "attr"],
                              "installed": [*ENV.installed, "attrs"],
                              "distributions": {**ENV.to_json()["distributions"],
                                                "attr": ["attrs"]}})
PYPROJECT = ("[project]\nname='interrogate'\ndependencies=['attrs', 'colorama', 'tabulate']\n"
             "[project.optional-dependencies]\npng=['cairosvg']\n")


def asked(files: dict[str, str]) -> set[tuple[str, str]]:
    return {(q.rule, q.subject) for q in questions(files, WITH_ATTRS)}


def test_an_sdist_declaring_only_in_setup_py_gets_one_target_environment_question():
    got = [q for q in questions({**CODE, "PKG-INFO": PKG_INFO}, WITH_ATTRS)]
    assert [(q.rule, q.subject, q.severity) for q in got] == [
        ("target_environment", "PKG-INFO:environment", "medium")]
    assert "lacks 2 of the 3 runtime dependencies PKG-INFO declares (colorama, tabulate)" \
        in got[0].question
    assert got[0].evidence == ("PKG-INFO:7 declares colorama", "PKG-INFO:8 declares tabulate")
    # Without it, each missing name is a missing module of its first importer.
    assert asked(CODE) == {("missing_module", "src/interrogate/cli.py:colorama"),
                           ("missing_module", "src/interrogate/cli.py:tabulate")}


def test_pkg_info_with_the_file_it_was_built_from_asks_what_that_file_asks_alone():
    for source, text in (("pyproject.toml", PYPROJECT),
                         ("setup.cfg", "[options]\ninstall_requires =\n    attrs\n    colorama\n"
                                       "    tabulate\n"),
                         ("requirements.txt", "attrs\ncolorama\ntabulate\n")):
        alone = asked({**CODE, source: text})
        assert alone == asked({**CODE, source: text, "PKG-INFO": PKG_INFO}), source
        assert ("target_environment", f"{source}:environment") in alone


def test_a_nested_or_developer_declaration_leaves_the_questions_to_pkg_info():
    for source, text in (("docs/requirements.txt", "sphinx\n"),
                         ("requirements-dev.txt", "pytest\n"),
                         ("pyproject.toml", "[build-system]\nrequires=['setuptools']\n"),
                         ("sub/pyproject.toml", PYPROJECT)):
        got = asked({**CODE, source: text, "PKG-INFO": PKG_INFO})
        assert ("target_environment", "PKG-INFO:environment") in got, source


def test_markers_make_a_requirement_optional_and_extras_are_deduplicated():
    got = deps.parse_pkg_info(PKG_INFO)
    assert got.project == "interrogate" and got.authoritative
    assert [(d.dist, d.line, d.main, d.required) for d in got.declared] == [
        ("attrs", 6, True, True), ("colorama", 7, True, True), ("tabulate", 8, True, True),
        ("tomli", 9, False, False), ("cairosvg", 11, False, False),
        ("pytest", 14, False, False)]


def test_a_requirement_both_plain_and_with_a_marker_is_required():
    text = "Name: x\nRequires-Dist: six; extra == 'old'\nRequires-Dist: Six>=1\n"
    assert [(d.dist, d.line, d.required) for d in deps.parse_pkg_info(text).declared] == [
        ("six", 2, True)]


def test_metadata_without_requires_dist_is_not_authoritative():
    got = deps.parse_pkg_info("Metadata-Version: 1.0\nName: Old_Project\nVersion: 0.1\n")
    assert got == deps.Declarations((), "old-project", False)
    # ... so the tree is not judged for undeclared imports on its word.
    files = {"PKG-INFO": "Metadata-Version: 1.0\nName: old\n", "app/m.py": "import yaml\n"}
    assert asked(files) == set()


def test_an_installed_import_pkg_info_does_not_declare_is_undeclared():
    files = {"PKG-INFO": "Name: x\nRequires-Dist: redis\n", "app/m.py": "import redis, yaml\n"}
    assert asked(files) == {("undeclared_dependency", "app/m.py:yaml")}


def test_only_the_root_pkg_info_is_read():
    assert deps.file_kind("PKG-INFO") == deps.PKG_INFO
    for path in ("src/interrogate.egg-info/PKG-INFO", "vendor/PKG-INFO", "PKG-INFO.txt"):
        assert deps.file_kind(path) is None and not wants_path(path), path
    got = asked({**CODE, "src/interrogate.egg-info/PKG-INFO": PKG_INFO})
    assert got == asked(CODE)
    assert "capability" in route("PKG-INFO") and "knowledge" in route("PKG-INFO")


@pytest.mark.parametrize("text", [
    "", "\n\n", "not a header at all\n", "Requires-Dist:\nName:\n",
    "Requires-Dist: https://example.com/x.whl\n", "Requires-Dist: \x00\xff\ud800\n",
    ": no key\nRequires-Dist: ok-dist\n  folded; extra == 'x'\n",
    "Name: " + "x" * 100_000 + "\n", "Requires-Dist: a\n" * 5000,
])
def test_a_malformed_pkg_info_never_raises(text):
    detector = CapabilityDetector(ENV)
    facts = detector.extract("PKG-INFO", text)
    assert facts.error is None
    index = MemoryIndex()
    index.update("PKG-INFO", facts)
    assert isinstance(detector.evaluate("PKG-INFO", index), list)


def test_a_folded_requires_dist_reads_as_one_requirement():
    text = "Name: x\nRequires-Dist: ok-dist\n  ; extra == 'x'\n"
    assert [(d.dist, d.required) for d in deps.parse_pkg_info(text).declared] == [
        ("ok-dist", False)]


def test_the_declaration_it_was_built_from_coming_and_going_re_evaluates_pkg_info():
    detector, index = build({**CODE, "PKG-INFO": PKG_INFO}, WITH_ATTRS)
    assert detector.evaluate("PKG-INFO", index)
    touched = index.update("pyproject.toml", detector.extract("pyproject.toml", PYPROJECT))
    assert "PKG-INFO" in detector.affected("pyproject.toml", touched, index)
    assert detector.evaluate("PKG-INFO", index) == []
    # A second one changes nothing for PKG-INFO.
    touched = index.update("requirements.txt", detector.extract("requirements.txt", "attrs\n"))
    assert "PKG-INFO" not in detector.affected("requirements.txt", touched, index)
    touched = index.update("requirements.txt", None)
    assert "PKG-INFO" not in detector.affected("requirements.txt", touched, index)
    # The last one going hands the questions back.
    touched = index.update("pyproject.toml", None)
    assert "PKG-INFO" in detector.affected("pyproject.toml", touched, index)
    assert [q.rule for q in detector.evaluate("PKG-INFO", index)] == ["target_environment"]
