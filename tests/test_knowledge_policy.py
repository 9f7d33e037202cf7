"""missing_docstrings asks only where the tree declares a docstring policy, within its scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.detectors.knowledge.policy import enforced, read_policies
from kloros_tasks.routing import route
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.work import engine

UNDOCUMENTED = '"""M."""\n\n' + "".join(f"def f{i}():\n    pass\n\n" for i in range(5))
METHODS = '"""M."""\n\n\nclass C:\n    """C."""\n\n' + "".join(
    f"    def m{i}(self):\n        pass\n\n" for i in range(5))


def asked(files: dict[str, str], detector: KnowledgeDetector | None = None) -> set[str]:
    """Owners of the missing_docstrings questions of the tree, every file indexed."""
    detector = detector or KnowledgeDetector()
    index = MemoryIndex()
    for path, text in files.items():
        engine.apply_change(detector, index, path, text)
    return {q.owner for p in index.paths() for q in detector.evaluate(p, index)
            if q.rule == "missing_docstrings"}


DECLARING = {
    "ruff lint": ("pyproject.toml", '[tool.ruff.lint]\nselect = ["E", "F", "D"]\n'),
    "ruff legacy": ("pyproject.toml", '[tool.ruff]\nextend-select = ["D1"]\n'),
    "ruff.toml": ("ruff.toml", 'line-length = 88\n[lint]\nselect = ["D103"]\n'),
    ".ruff.toml": (".ruff.toml", 'select = ["ALL"]\nignore = ["ANN"]\n'),
    "pydocstyle pyproject": ("pyproject.toml", '[tool.pydocstyle]\nconvention = "google"\n'),
    "pydocstyle setup.cfg": ("setup.cfg", "[metadata]\nname = x\n\n[pydocstyle]\n"
                                          "add-ignore = D203\n"),
    ".pydocstyle": (".pydocstyle", "[pydocstyle]\nselect = D1\n"),
    "flake8-docstrings tox.ini": ("tox.ini", "[flake8]\nmax-line-length = 99\n"
                                             "docstring-convention = pep257\n"),
    "flake8-docstrings .flake8": (".flake8", "[flake8]\ndocstring-convention = google\n"),
    "interrogate": ("pyproject.toml", "[tool.interrogate]\nfail-under = 100\n"),
}


@pytest.mark.parametrize("name", sorted(DECLARING))
def test_a_declared_policy_makes_undocumented_functions_a_question(name):
    config, text = DECLARING[name]
    assert route(config) >= {"knowledge"}
    assert asked({config: text, "pkg/mod.py": UNDOCUMENTED}) == {"pkg/mod.py"}


NOT_DECLARING = {
    "no configuration at all": {},
    "ruff without D (this project's own rules)": {
        "pyproject.toml": '[tool.ruff.lint]\nselect = ["E", "F", "W", "I", "B", "UP"]\n'},
    "ruff ALL with D ignored (structlog)": {
        "pyproject.toml": '[tool.ruff.lint]\nselect = ["ALL"]\nignore = ["A", "D"]\n'},
    "ruff D with the missing-docstring codes ignored (pytest)": {
        "pyproject.toml": '[tool.ruff.lint]\nselect = ["D", "E"]\n'
                          'ignore = ["D100", "D101", "D102", "D103", "D104", "D105", '
                          '"D106", "D107"]\n'},
    "flake8 without flake8-docstrings": {"setup.cfg": "[flake8]\nmax-line-length = 99\n"},
    "a configuration that does not parse": {"pyproject.toml": "[tool.ruff.lint\nselect = ["},
    "an INI that does not parse": {"setup.cfg": "select = D\n[pydocstyle"},
    "TOML nested past the parser's recursion limit": {
        "pyproject.toml": "[tool.ruff]\nselect = " + "[" * 100_000 + "]" * 100_000 + "\n"},
}


@pytest.mark.parametrize("name", sorted(NOT_DECLARING))
def test_without_a_declared_policy_nothing_is_asked(name):
    assert asked({**NOT_DECLARING[name], "pkg/mod.py": UNDOCUMENTED}) == set()


def test_this_projects_own_configuration_declares_no_docstring_policy():
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    assert read_policies("pyproject.toml", pyproject.read_text()) == []


def test_ruff_per_file_ignores_and_excludes_are_honoured():
    pyproject = ('[tool.ruff]\nextend-exclude = ["pkg/v1"]\n\n[tool.ruff.lint]\n'
                 'select = ["D"]\n\n[tool.ruff.lint.per-file-ignores]\n'
                 '"pkg/deprecated/*" = ["D"]\n"pkg/json_schema.py" = ["D103"]\n')
    files = {"pyproject.toml": pyproject, "pkg/mod.py": UNDOCUMENTED,
             "pkg/v1/old.py": UNDOCUMENTED, "pkg/deprecated/x.py": UNDOCUMENTED,
             "pkg/json_schema.py": UNDOCUMENTED}
    assert asked(files) == {"pkg/mod.py"}


def test_an_ignored_method_code_leaves_methods_out():
    # celery's shape: pydocstyle with D102 ignored
    files = {"setup.cfg": "[pydocstyle]\nignore = D102,D104,D203\n", "pkg/mod.py": METHODS,
             "pkg/funcs.py": UNDOCUMENTED}
    assert asked(files) == {"pkg/funcs.py"}


def test_the_numpy_convention_does_not_ask_for_init_docstrings_but_for_the_rest():
    assert read_policies("setup.cfg", "[flake8]\ndocstring-convention = numpy\n")[0][
        "codes"] == ["D100", "D101", "D102", "D103", "D104", "D105", "D106"]


def test_pydocstyles_default_match_leaves_test_modules_out():
    (policy,) = read_policies(".pydocstyle", "[pydocstyle]\nconvention = pep257\n")
    assert enforced(policy, "pkg/mod.py") and not enforced(policy, "pkg/test_mod.py")
    assert not enforced(policy, ".hidden/mod.py")


def test_interrogate_excludes_and_fail_under_are_honoured():
    half = '"""M."""\n\n' + "".join(f"def f{i}():\n    pass\n\n" for i in range(5)) + "".join(
        f'def g{i}():\n    """G."""\n\n' for i in range(10))
    files = {"pyproject.toml": '[tool.interrogate]\nfail-under = 60\nexclude = ["scripts"]\n',
             "pkg/low.py": UNDOCUMENTED, "pkg/covered.py": half,
             "scripts/__init__.py": "", "scripts/tool.py": UNDOCUMENTED}
    # covered.py: 11 of 16 definitions documented (69 %), above the 60 % asked for
    assert asked(files) == {"pkg/low.py"}


def test_a_noqa_on_the_definition_line_silences_it():
    source = '"""M."""\n\n' + "".join(
        f"def f{i}():  # noqa: D103\n    pass\n\n" for i in range(3)) + "".join(
        f"def g{i}():\n    pass\n\n" for i in range(2))
    strict = KnowledgeDetector(docstring_threshold=0)
    files = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["D"]\n', "pkg/mod.py": source}
    index = MemoryIndex()
    for path, text in files.items():
        engine.apply_change(strict, index, path, text)
    (q,) = strict.evaluate("pkg/mod.py", index)
    assert [e.split()[-1] for e in q.evidence] == ["g0", "g1"]
    file_wide = {**files, "pkg/mod.py": "# ruff: noqa\n" + UNDOCUMENTED}
    assert asked(file_wide, strict) == set()


def test_the_nearest_declaring_directory_governs():
    files = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["D"]\n',
             "sub/pyproject.toml": '[tool.ruff.lint]\nselect = ["D"]\nignore = ["D103"]\n',
             "pkg/mod.py": UNDOCUMENTED, "sub/pkg/mod.py": UNDOCUMENTED}
    assert asked(files) == {"pkg/mod.py"}


def test_the_threshold_still_applies_under_a_policy():
    files = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["D"]\n', "pkg/mod.py": UNDOCUMENTED}
    assert asked(files, KnowledgeDetector(docstring_threshold=5)) == set()
    assert asked(files, KnowledgeDetector(docstring_threshold=4)) == {"pkg/mod.py"}


def test_a_policy_appearing_changing_and_going_re_evaluates_the_modules_it_governs():
    detector, index = KnowledgeDetector(), MemoryIndex()
    engine.apply_change(detector, index, "pkg/mod.py", UNDOCUMENTED)
    assert detector.evaluate("pkg/mod.py", index) == []
    applied = engine.apply_change(detector, index, "pyproject.toml",
                                  '[tool.ruff.lint]\nselect = ["D"]\n')
    assert "pkg/mod.py" in applied.owners
    assert [q.rule for q in detector.evaluate("pkg/mod.py", index)] == ["missing_docstrings"]
    applied = engine.apply_change(detector, index, "pyproject.toml",
                                  '[tool.ruff.lint]\nselect = ["D"]\nignore = ["D103"]\n')
    assert "pkg/mod.py" in applied.owners
    assert detector.evaluate("pkg/mod.py", index) == []
    engine.apply_change(detector, index, "pyproject.toml", '[tool.ruff.lint]\nselect = ["D"]\n')
    applied = engine.apply_change(detector, index, "pyproject.toml", None)
    assert "pkg/mod.py" in applied.owners
    assert detector.evaluate("pkg/mod.py", index) == []


CELERY_SETUP_CFG = ("[flake8]\nmax-line-length = 117\nextend-ignore = \n\tE203,\n\tD102,\n"
                    "\tD104,\n\tD105,\n\tD107,\n\tD401,\n\tE741,\nper-file-ignores = \n"
                    "\tt/*,setup.py,examples/*,docs/*,extra/*:\n\tD,\n")


def test_a_flake8_section_ignoring_some_d_codes_declares_flake8_docstrings():
    # celery's shape: no docstring-convention, the plugin's codes named in the ignores
    (policy,) = read_policies("setup.cfg", CELERY_SETUP_CFG)
    assert policy["codes"] == ["D100", "D101", "D103", "D106"]
    assert enforced(policy, "celery/utils/text.py") == {"D100", "D101", "D103", "D106"}
    assert enforced(policy, "t/unit/test_app.py") == set()
    assert enforced(policy, "examples/app/tasks.py") == set()
    files = {"setup.cfg": CELERY_SETUP_CFG, "celery/__init__.py": '"""C."""\n',
             "celery/text.py": UNDOCUMENTED, "celery/methods.py": METHODS,
             "extra/tool.py": UNDOCUMENTED}
    assert asked(files) == {"celery/text.py"}


def test_flake8_per_file_ignores_on_one_line_hold_several_groups():
    cfg = "[flake8]\ndocstring-convention = google\nper-file-ignores = a.py:D103 b/*:E501,D1\n"
    (policy,) = read_policies("tox.ini", cfg)
    assert enforced(policy, "a.py") == set(policy["codes"]) - {"D103"}
    assert enforced(policy, "b/c.py") == set()
    assert enforced(policy, "c.py") == set(policy["codes"])
