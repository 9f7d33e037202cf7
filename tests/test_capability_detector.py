"""CapabilityDiscovery, pure: hand-built environments, in-memory index, no services."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import warnings

import pytest
from counting import evaluated_both_ways, project_files

from kloros_tasks.detectors.capability import deps
from kloros_tasks.detectors.capability.calls import shell_program
from kloros_tasks.detectors.capability.detector import CapabilityDetector, Environment, wants_path
from kloros_tasks.questions import question_id
from kloros_tasks.state.index import MemoryIndex

ENV = Environment(
    modules={"redis", "celery", "kombu", "yaml", "zmq", "ruff"},
    stdlib={"os", "sys", "subprocess", "shutil", "typing", "json", "importlib", "contextlib",
            "asyncio", "tomllib"},
    distributions={"redis": ["redis"], "celery": ["celery"], "kombu": ["kombu"],
                   "yaml": ["PyYAML"], "zmq": ["pyzmq"], "ruff": ["ruff"]},
    installed={"redis", "celery", "kombu", "PyYAML", "pyzmq", "ruff", "some-cli"},
    executables={"ls", "git", "sh"},
    env_vars={"HOME", "PATH"},
)


def build(files: dict[str, str], env: Environment = ENV, **kw) -> tuple[CapabilityDetector,
                                                                         MemoryIndex]:
    detector = CapabilityDetector(env, **kw)
    index = MemoryIndex()
    for path, text in files.items():
        facts = detector.extract(path, textwrap.dedent(text))
        assert facts.error is None, (path, facts.error)
        index.update(path, facts)
    return detector, index


def questions(files: dict[str, str], env: Environment = ENV, **kw):
    detector, index = build(files, env, **kw)
    return [q for path in index.paths() for q in detector.evaluate(path, index)]


def found(files: dict[str, str], rule: str, env: Environment = ENV, **kw) -> dict[str, str]:
    """subject -> severity of every question ``rule`` raises on ``files``."""
    return {q.subject: q.severity for q in questions(files, env, **kw) if q.rule == rule}


# --- missing_module ------------------------------------------------------------------------

def test_an_import_found_nowhere_is_a_high_missing_module():
    got = found({"app/main.py": "import os\nimport nosuchmod.sub\n"}, "missing_module")
    assert got == {"app/main.py:nosuchmod": "high"}


def test_a_new_module_concerns_only_the_importers_its_folder_resolves_for():
    detector, index = build({"other/x.py": "import mylib\n", "pkg/y.py": "import mylib\n",
                             "pkg/__init__.py": ""})
    facts = detector.extract("pkg/mylib.py", "")
    touched = index.update("pkg/mylib.py", facts)
    # An import of "mylib" resolves to pkg/mylib.py only from pkg/ or below it.
    assert detector.affected("pkg/mylib.py", touched, index) == {"pkg/y.py"}


def test_installed_stdlib_and_in_tree_imports_are_not_missing():
    files = {
        "app/main.py": "import os, redis, yaml\nimport app.helper\nfrom pkg import thing\n",
        "app/helper.py": "",
        "pkg/__init__.py": "thing = 1\n",
        "scripts/run.py": "import util\nimport __future__\n",
        "scripts/util.py": "",
    }
    assert found(files, "missing_module") == {}


def test_a_src_layout_package_resolves_by_its_import_name():
    files = {"src/mylib/__init__.py": "", "tests/test_x.py": "import mylib\n"}
    assert found(files, "missing_module") == {}


def test_a_sibling_module_resolves_only_beside_its_importer():
    files = {"scripts/util.py": "", "app/main.py": "import util\n"}
    assert found(files, "missing_module") == {"app/main.py:util": "high"}


@pytest.mark.parametrize("source", [
    "try:\n    import fancy\nexcept ImportError:\n    fancy = None\n",
    "try:\n    import fancy\nexcept (ValueError, ModuleNotFoundError):\n    pass\n",
    "try:\n    import fancy\nexcept:\n    pass\n",
    "import contextlib\nwith contextlib.suppress(ImportError):\n    import fancy\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fancy\n",
    "import sys\nif sys.version_info < (3, 11):\n    import fancy\n",
    "def load():\n    try:\n        import fancy\n    except ImportError:\n        return None\n",
    "import importlib\ntry:\n    importlib.import_module('fancy')\nexcept Exception:\n    pass\n",
    "import sys\nif sys.platform == 'win32':\n    import fancy\n",
    "import os\nif os.name == 'java':\n    from fancy.lang import System\n",
    "fancy = __import__('pytest').importorskip('fancy')\n",
    "from pytest import importorskip\nfancy = importorskip('fancy')\n",
])
def test_optional_imports_are_not_questions(source):
    # The code already handles the module's absence: nothing for a maintainer to do.
    got = found({"app/opt.py": source}, "missing_module")
    assert not [s for s in got if "fancy" in s]


@pytest.mark.parametrize("source", [
    "def f():\n    import fancy\n",
    "import os\nif os.environ.get('FANCY'):\n    import fancy\n",
])
def test_a_lazy_import_is_an_optional_feature_and_not_asked_about(source):
    assert found({"app/lazy.py": source}, "missing_module") == {}


def test_a_name_the_tree_imports_under_a_guard_elsewhere_is_optional_everywhere():
    files = {"app/backend.py": "try:\n    import psycopg2\nexcept ImportError:\n    pass\n",
             "app/adapter.py": "import psycopg2\n"}
    assert found(files, "missing_module") == {}
    files["app/backend.py"] = "import os\n"
    assert found(files, "missing_module") == {"app/adapter.py:psycopg2": "high"}


def test_an_import_in_an_import_error_handler_is_a_fallback():
    src = "try:\n    import psycopg\nexcept ImportError:\n    import psycopg2\n"
    assert found({"app/any.py": src}, "missing_module") == {}


def test_a_module_the_tree_imports_only_under_a_guard_has_optional_imports():
    files = {"pkg/__init__.py": ("try:\n    from ._cli import main\nexcept ImportError:\n"
                                 "    main = None\n"),
             "pkg/_cli.py": "import widgetlib\n"}
    assert found(files, "missing_module") == {}
    files["app.py"] = "import pkg._cli\n"
    assert found(files, "missing_module") == {"pkg/_cli.py:widgetlib": "high"}


def test_a_name_many_modules_need_is_one_question_owned_by_the_first():
    files = {f"app/m{i}.py": "import asgiref.sync\n" for i in range(5)}
    files["app/lazy.py"] = "def f():\n    import asgiref\n"
    got = [q for q in questions(files) if q.rule == "missing_module"]
    assert [q.subject for q in got] == ["app/m0.py:asgiref"]
    assert got[0].question.startswith("app/m0.py and 4 other modules import asgiref")
    assert "app/m4.py imports asgiref too" in got[0].evidence
    detector, index = build(files)
    touched = index.update("app/m0.py", None)
    assert detector.affected("app/m0.py", touched, index) == {"app/m1.py"}
    assert found_in(detector, index, "app/m1.py") == {"app/m1.py:asgiref"}


def test_a_file_that_changes_sys_path_is_not_judged_for_missing_modules():
    for change in ("sys.path.insert(0, 'vendor')", "sys.path.append(HERE)", "sys.path += ['x']",
                   "sys.path[0:0] = ['x']", "pkg_resources.working_set.add_entry('eggs')"):
        src = f"import sys\n{change}\nimport vendored_lib\n"
        assert found({"tools/run.py": src}, "missing_module") == {}, change


def test_an_import_resolves_from_any_folder_above_its_file():
    # Django's tests/runtests.py puts tests/ on sys.path: tests/a/tests.py imports b.
    files = {"tests/b/models.py": "", "tests/a/tests.py": "from b.models import X\n",
             "tests/a/deep/t.py": "import b\n", "other/c.py": "import b\n"}
    assert found(files, "missing_module") == {"other/c.py:b": "high"}


def test_a_declared_distribution_the_target_lacks_is_not_a_missing_module():
    files = {"pyproject.toml": ("[project]\nname='Demo-App'\ndependencies=['redis', 'Pillow']\n"
                                "[project.optional-dependencies]\nfast=['ujson']\n"),
             "requirements-test.txt": "hypothesis\n",
             "app/m.py": "import PIL, ujson, demo_app\n", "app/n.py": "import really_missing\n",
             "tests/test_m.py": "import hypothesis\nimport also_missing\n"}
    assert found(files, "missing_module") == {"app/n.py:really_missing": "high"}


def test_an_optional_integration_is_not_asked_about_undeclared_imports_either():
    # celery/concurrency/eventlet.py: eventlet is an extra the target lacks; the yaml it
    # also imports comes with the integration's own installation.
    files = {"pyproject.toml": ("[project]\nname='x'\ndependencies=['redis']\n"
                                "[project.optional-dependencies]\nev=['eventlet']\n"),
             "pkg/pool.py": "import yaml\nimport redis\n\n\ndef f():\n    import eventlet\n"}
    assert found(files, "undeclared_dependency") == {}
    files["pkg/pool.py"] = "import yaml\nimport redis\n"
    assert found(files, "undeclared_dependency") == {"pkg/pool.py:yaml": "medium"}


def test_an_examples_folder_named_like_the_extra_does_not_provide_it_to_the_library(tmp_path):
    # celery's examples/eventlet/ made a top-level "eventlet" (through namespace names)
    # for celery/concurrency/eventlet.py, which then looked like no optional integration.
    from kloros_tasks import settings  # noqa: PLC0415
    from kloros_tasks.cli.scan import scan_root  # noqa: PLC0415

    files = {"pyproject.toml": ("[project]\nname='x'\ndependencies=['redis']\n"
                                "[project.optional-dependencies]\nev=['eventlet']\n"),
             "pkg/__init__.py": "",
             "pkg/pool.py": "import yaml\nimport redis\n\n\ndef f():\n    import eventlet\n",
             "examples/eventlet/tasks.py": "import redis\n"}

    def undeclared() -> set[str]:
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
        found = scan_root(tmp_path, CapabilityDetector(ENV), settings.from_env({}),
                          warn=lambda m: None)
        return {q.subject.split(":", 1)[1] for q in found if q.rule == "undeclared_dependency"}

    assert undeclared() == set()
    files["eventlet/__init__.py"] = ""  # a top-level package of the tree does provide it
    assert undeclared() == {"pkg/pool.py:yaml"}


def test_a_module_needing_an_optional_dependency_is_an_optional_integration():
    # celery/contrib/sphinx.py: sphinx is declared for the docs, docutils comes with it.
    files = {"docs/requirements.txt": "sphinx\n",
             "pkg/contrib/sphinx.py": "import docutils\nfrom sphinx.domains import X\n"}
    assert found(files, "missing_module") == {}


@pytest.mark.parametrize("folder", ["tests", "t/smoke", "docs/_ext", "examples/app", "scripts"])
def test_tests_docs_examples_and_scripts_are_not_judged(folder):
    src = ("import os, subprocess, yaml, no_such_mod\nsubprocess.run(['no-such-prog'])\n"
           "os.environ['NO_SUCH_VAR']\n")
    files = {"requirements.txt": "redis\n", f"{folder}/x.py": src}
    assert [q.rule for q in questions(files) if q.owner == f"{folder}/x.py"] == []


def test_a_target_lacking_declared_runtime_dependencies_says_so_once():
    files = {"pyproject.toml": ("[project]\nname='d'\ndependencies=['redis', 'asgiref', "
                                "'sqlparse', \"tzdata; sys_platform == 'win32'\"]\n"
                                "[project.optional-dependencies]\nbcrypt=['bcrypt']\n"),
             "app/a.py": "import asgiref\n", "app/b.py": "import sqlparse\nimport redis\n"}
    got = [q for q in questions(files) if q.rule in ("target_environment", "missing_module")]
    assert [(q.rule, q.subject, q.severity) for q in got] == [
        ("target_environment", "pyproject.toml:environment", "medium")]
    assert "lacks 2 of the 3 runtime dependencies" in got[0].question
    assert got[0].extra["missing"] == ["asgiref", "sqlparse"]


def test_stub_only_modules_under_type_checking_are_fine():
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from _typeshed import X\n"
    assert found({"m.py": src}, "missing_module") == {}


def test_a_guard_that_reraises_makes_the_later_imports_of_the_module_optional_too():
    # django/db/backends/mysql/base.py: the guard raises ImproperlyConfigured, with help.
    src = ("try:\n    import fancy\nexcept ImportError as e:\n    raise RuntimeError('pip install "
           "fancy') from e\nfrom fancy.constants import FLAG\n")
    assert found({"app/m.py": src}, "missing_module") == {}


@pytest.mark.parametrize("path, source", [
    ("pkg/serializers/pyyaml.py", "import yaml\n"),
    ("pkg/backends/mysql/base.py", "import MySQLdb\n"),
    ("pkg/bin/amqp.py", "import amqp\n"),
    ("distutils/command/bdist_rpm.py", "import subprocess\nsubprocess.run(['rpm', '-q'])\n"),
])
def test_an_adapter_named_after_what_it_uses_is_not_asked_about(path, source):
    assert [q.rule for q in questions({"requirements.txt": "redis\n", path: source})
            if q.owner == path] == []


def test_tests_are_not_judged_for_missing_modules():
    # Test environments are the developers' business, and tests import missing modules
    # on purpose (Django's tests/utils_tests/test_module/bad_module.py).
    assert found({"tests/test_a.py": "import hypothesis\n"}, "missing_module") == {}


def test_relative_imports_are_not_judged_here():
    assert found({"pkg/a.py": "from . import nothing\nfrom .gone import x\n"},
                 "missing_module") == {}


def test_a_literal_dynamic_import_is_judged():
    src = "import importlib\nmod = importlib.import_module('plugin_x')\n"
    assert found({"app/m.py": src}, "missing_module") == {"app/m.py:plugin_x": "high"}


def test_the_question_id_is_stable_and_names_no_line():
    first = questions({"app/m.py": "import nosuchmod\n"})
    moved = questions({"app/m.py": "\n\n\nimport os\nimport nosuchmod\n"})
    assert [q.id for q in first] == [q.id for q in moved]
    assert first[0].id == question_id("capability", "missing_module", "app/m.py:nosuchmod")
    assert first[0].evidence == ("app/m.py:1 import nosuchmod",)
    assert moved[0].evidence == ("app/m.py:5 import nosuchmod",)


# --- undeclared_dependency -----------------------------------------------------------------

PYPROJECT = """
[project]
name = "demo-app"
dependencies = ["redis>=5", "celery[redis] ; python_version >= '3.8'"]
[project.optional-dependencies]
yaml = ["PyYAML"]
test = ["pytest", "demo-app[yaml]"]
"""


def test_an_import_no_declaration_provides_is_undeclared():
    files = {"pyproject.toml": "[project]\nname='x'\ndependencies=['redis']\n",
             "app/m.py": "import redis\nimport yaml\n"}
    assert found(files, "undeclared_dependency") == {"app/m.py:yaml": "medium"}


def test_extras_and_requirements_files_declare_too():
    files = {"pyproject.toml": PYPROJECT,
             "requirements-dev.txt": "-r requirements.txt\npyzmq==26.0 ; sys_platform == 'linux'\n",
             "app/m.py": "import redis, celery, yaml, zmq\n"}
    assert found(files, "undeclared_dependency") == {}


def test_a_transitive_dependency_must_be_declared_itself():
    files = {"pyproject.toml": PYPROJECT, "app/m.py": "import redis, celery, yaml, kombu\n"}
    assert found(files, "undeclared_dependency") == {"app/m.py:kombu": "medium"}


def test_an_optional_undeclared_import_is_not_asked_about():
    files = {"requirements.txt": "redis\n",
             "app/m.py": "import redis\ntry:\n    import yaml\nexcept ImportError:\n    pass\n"}
    assert found(files, "undeclared_dependency") == {}


def test_a_tree_without_declarations_is_not_judged():
    assert found({"app/m.py": "import redis, yaml\n"}, "undeclared_dependency") == {}


def test_a_pyproject_with_dynamic_dependencies_is_not_authoritative():
    files = {"pyproject.toml": "[project]\nname='x'\ndynamic=['dependencies']\n",
             "app/m.py": "import yaml\n"}
    assert found(files, "undeclared_dependency") == {}


def test_a_declared_runtime_dependency_nothing_imports_is_low():
    files = {"pyproject.toml": "[project]\nname='x'\ndependencies=['redis', 'celery']\n",
             "app/m.py": "import redis\n"}
    assert found(files, "undeclared_dependency") == {"pyproject.toml:unused:celery": "low"}


def test_an_extra_nothing_imports_is_not_unused():
    files = {"pyproject.toml": ("[project]\nname='x'\ndependencies=['redis']\n"
                                "[project.optional-dependencies]\nzeromq=['pyzmq']\n"),
             "requirements/extras/yaml.txt": "pyyaml\n", "app/m.py": "import redis\n"}
    assert found(files, "undeclared_dependency") == {}


def test_a_dependency_with_a_marker_is_conditional_and_never_unused():
    assert found({"pyproject.toml": PYPROJECT, "app/m.py": "import redis, yaml\n"},
                 "undeclared_dependency") == {}


def test_a_module_named_in_a_string_uses_its_distribution():
    files = {"requirements.txt": "celery\nredis\n",
             "settings.py": "BROKER = 'redis.connection.Connection'\nAPPS = ['celery']\n"}
    assert found(files, "undeclared_dependency") == {}


def test_plugins_data_packages_and_the_tree_itself_are_never_unused():
    env = Environment(**{**ENV.to_json(), "installed": [*ENV.installed, "tzdata", "pytest-cov"],
                         "distributions": {**ENV.to_json()["distributions"],
                                           "tzdata": ["tzdata"], "pytest_cov": ["pytest-cov"]},
                         "unimported": ["tzdata", "pytest-cov"]})
    files = {"pyproject.toml": ("[project]\nname='demo'\n"
                                "dependencies=['tzdata', 'pytest-cov', 'redis']\n"),
             "demo/__init__.py": "import redis\n", "scripts/x.py": "import demo\n"}
    assert found(files, "undeclared_dependency", env) == {}


def test_lock_files_and_developer_requirement_files_declare_but_are_never_unused():
    lock = "celery==5.4.0\n    # via -r requirements.in\nkombu==5.4.2\n    # via celery\n"
    frozen = "celery==5.4.0\nkombu==5.4.2\nredis==5.0.8\n"
    for path, text in (("requirements.txt", lock), ("requirements.txt", frozen),
                       ("docs/requirements.txt", "celery\n"),
                       ("requirements/test.txt", "celery\n"),
                       ("tests/requirements/py3.txt", "celery\n")):
        files = {path: text, "app/m.py": "import os\n"}
        assert found(files, "undeclared_dependency") == {}, path
    files = {"requirements.txt": lock, "app/m.py": "import kombu\n"}
    assert found(files, "undeclared_dependency") == {}
    assert deps.is_lock_file(frozen) and not deps.is_lock_file("celery>=5\nkombu==5\nredis\n")


def test_unused_is_not_said_of_dev_groups_tools_or_the_project_itself():
    pyproject = ("[project]\nname='demo'\ndependencies=['some-cli']\n"
                 "[project.optional-dependencies]\ndev=['ruff']\nall=['demo[x]']\n"
                 "[dependency-groups]\nlint=['celery']\n")
    files = {"pyproject.toml": pyproject, "app/m.py": "import os\n"}
    assert found(files, "undeclared_dependency") == {}


def test_unused_is_not_judged_for_a_distribution_the_target_lacks():
    # Its import names are unknown there (argon2-cffi provides argon2).
    files = {"requirements.txt": "argon2-cffi\n", "app/m.py": "import argon2\n"}
    assert found(files, "undeclared_dependency") == {}
    assert deps.import_names("argon2-cffi") == ("argon2",)
    assert deps.import_names("my-lib") == ("my", "my_lib")
    assert "paho" in deps.import_names("paho-mqtt")
    assert "graphitesend" in deps.name_prefixes("graphitesender")


def test_a_pyproject_change_affects_only_importers_of_the_changed_distributions():
    detector, index = build({
        "pyproject.toml": "[project]\nname='x'\ndependencies=['redis']\n",
        "app/uses_yaml.py": "import yaml\n", "app/uses_redis.py": "import redis\n",
        "app/uses_zmq.py": "import zmq\n", "app/plain.py": "import os\n",
    })
    facts = detector.extract("pyproject.toml",
                             "[project]\nname='x'\ndependencies=['redis', 'pyyaml>=6']\n")
    touched = index.update("pyproject.toml", facts)
    assert touched == {("declares", "pyyaml"), ("declares_top", "yaml"),
                       ("declares_top", "pyyam")}
    assert detector.affected("pyproject.toml", touched, index) == {"app/uses_yaml.py"}
    assert detector.evaluate("app/uses_yaml.py", index) == []


def test_a_version_bump_in_a_declaration_touches_nothing_else():
    detector, index = build({"requirements.txt": "redis==5.0\n", "app/m.py": "import redis\n"})
    touched = index.update("requirements.txt", detector.extract("requirements.txt", "redis>=6\n"))
    assert detector.affected("requirements.txt", touched, index) == set()


# --- missing_capability --------------------------------------------------------------------

TOOLS = {
    "tools/__init__.py": "from .web import search\n",
    "tools/web.py": "def search(q):\n    return q\n",
}


def test_a_tool_nothing_defines_is_a_missing_capability():
    files = {**TOOLS, "agent/loop.py": "from tools.web import search, fetch\n"}
    got = questions(files)
    gaps = [q for q in got if q.rule == "missing_capability"]
    assert [q.subject for q in gaps] == ["agent/loop.py:tools.web.fetch"]
    assert gaps[0].question.startswith("Should we implement tools.web.fetch")


def test_a_missing_tool_module_is_a_missing_capability():
    files = {**TOOLS, "agent/loop.py": "import tools.vision\nfrom tools.audio import hear\n"}
    assert set(found(files, "missing_capability")) == {
        "agent/loop.py:tools.vision", "agent/loop.py:tools.audio"}


def test_definitions_reexports_submodules_and_relative_imports_satisfy_a_tool():
    files = {**TOOLS, "tools/files.py": "from .web import search as find\nCONST = 1\n",
             "agent/loop.py": ("from tools import search, web\n"
                               "from tools.files import find, CONST\n"
                               "from tools.web import search\n")}
    assert found(files, "missing_capability") == {}


def test_a_capability_registered_under_another_spelling_is_not_a_gap():
    files = {"tools/__init__.py": "",
             "tools/registry.py": ("@tool(name='Fetch-Page')\ndef get_page(url):\n    pass\n"
                                   "@skills.skill\nclass SummariseText:\n    pass\n"),
             "agent/loop.py": "from tools.registry import fetch_page, summarise_text\n"}
    assert found(files, "missing_capability") == {}


def test_registering_the_capability_resolves_the_question_through_affected():
    detector, index = build({"tools/__init__.py": "", "tools/registry.py": "",
                             "tools/other.py": "",
                             "agent/loop.py": "from tools.registry import fetch_page\n"})
    assert detector.evaluate("agent/loop.py", index)
    new = detector.extract("tools/other.py", "@tool('fetch-page')\ndef get(u): pass\n")
    touched = index.update("tools/other.py", new)
    assert detector.affected("tools/other.py", touched, index) == {"agent/loop.py"}
    assert detector.evaluate("agent/loop.py", index) == []


def test_a_src_prefixed_import_finds_the_tool_under_src():
    files = {"src/tools/__init__.py": "", "src/tools/tracker.py": "def track_tool(x): pass\n",
             "src/agent.py": "from src.tools.tracker import track_tool, untracked\n"}
    assert found(files, "missing_capability") == {
        "src/agent.py:src.tools.tracker.untracked": "medium"}


def test_star_imports_and_module_getattr_define_everything():
    files = {"tools/__init__.py": "from .impl import *\n",
             "tools/lazy.py": "def __getattr__(name):\n    raise AttributeError(name)\n",
             "agent/loop.py": "from tools import anything\nfrom tools.lazy import whatever\n"}
    assert found(files, "missing_capability") == {}


def test_a_tool_package_outside_the_tree_is_not_judged_as_a_capability():
    got = found({"agent/loop.py": "from tools.web import fetch\n"}, "missing_capability")
    assert got == {}


def test_tool_packages_are_configurable():
    files = {"plugins/__init__.py": "", "agent/loop.py": "from plugins import ocr\n"}
    assert found(files, "missing_capability") == {}
    got = found(files, "missing_capability", tool_packages=("plugins",))
    assert got == {"agent/loop.py:plugins.ocr": "medium"}


def test_defining_the_tool_resolves_the_question_through_affected():
    detector, index = build({**TOOLS, "agent/loop.py": "from tools.web import fetch\n"})
    assert detector.evaluate("agent/loop.py", index)
    new = detector.extract("tools/web.py", "def search(q): pass\ndef fetch(u): pass\n")
    touched = index.update("tools/web.py", new)
    assert "agent/loop.py" in detector.affected("tools/web.py", touched, index)
    assert detector.evaluate("agent/loop.py", index) == []


# --- missing_executable --------------------------------------------------------------------

def test_a_program_not_on_path_is_missing_and_one_on_path_is_not():
    src = ("import subprocess\nsubprocess.run(['ls', '-l'])\n"
           "subprocess.run(['no-such-prog-xyz', '--flag'])\n")
    got = found({"app/run.py": src}, "missing_executable")
    assert got == {"app/run.py:no-such-prog-xyz": "medium"}


@pytest.mark.parametrize("source, program", [
    ("import os\nos.system('FOO=1 ffmpeg -i in.mp4 out.webm')\n", "ffmpeg"),
    ("import subprocess as sp\nsp.check_output('convert a.png b.jpg', shell=True)\n", "convert"),
    ("from subprocess import Popen as P\nP(('rsync', '-a'))\n", "rsync"),
    ("import asyncio\nasyncio.create_subprocess_exec('nvidia-smi')\n", "nvidia-smi"),
    ("import subprocess\nsubprocess.call(args=['docker', 'ps'])\n", "docker"),
])
def test_programs_are_found_through_every_spawning_call(source, program):
    assert found({"m.py": source}, "missing_executable") == {f"m.py:{program}": "medium"}


@pytest.mark.parametrize("source", [
    "import subprocess\nsubprocess.run(['/opt/bin/nope'])\n",
    "import os\nos.system('cd /tmp && ls')\n",
    "import os\nos.system('./build.sh --fast')\n",
    "import subprocess, sys\nsubprocess.run([sys.executable, '-V'])\n",
    "import subprocess\nsubprocess.run(['git', 'status'])\n",
    "def run(x):\n    pass\nrun(['nope-not-subprocess'])\n",
])
def test_paths_builtins_non_literals_and_other_functions_are_not_judged(source):
    assert found({"m.py": source}, "missing_executable") == {}


@pytest.mark.parametrize("source", [
    "import shutil\nif shutil.which('pandoc'):\n    pass\n",
    "import shutil, subprocess\nif shutil.which('pandoc'):\n    subprocess.run(['pandoc'])\n",
    "import subprocess\ntry:\n    subprocess.run(['latexmk'])\nexcept FileNotFoundError:\n"
    "    pass\n",
    "import subprocess\ntry:\n    subprocess.run(['latexmk'])\nexcept (OSError, ValueError):\n"
    "    pass\n",
    "import sys, os\nif sys.platform == 'darwin':\n    os.system('open x.html')\n",
    "import sys, subprocess\nif sys.platform == 'win32':\n    pass\n"
    "elif sys.platform == 'darwin':\n    subprocess.call(['osascript'])\n",
    "import sys, subprocess\ndarwin = sys.platform == 'darwin'\nif darwin:\n"
    "    subprocess.run(['osascript'])\n",
])
def test_lookups_handled_failures_and_platform_branches_are_not_questions(source):
    assert found({"m.py": source}, "missing_executable") == {}


def test_tests_and_docs_are_not_deployment():
    src = "import os, subprocess\nsubprocess.run(['no-such-prog-xyz'])\nos.environ['API_KEY']\n"
    for path in ("tests/test_x.py", "pkg/tests/helpers.py", "docs/conf.py"):
        got = {q.rule for q in questions({path: src})}
        assert not got & {"missing_executable", "missing_env"}, path
    assert {q.rule for q in questions({"app.py": src})} >= {"missing_executable", "missing_env"}


def test_an_adapter_class_named_after_the_program_is_chosen_by_configuration():
    # ranger/ext/img_display.py: UeberzugImageDisplayer runs ueberzug when configured.
    src = ("import subprocess\nclass UeberzugImageDisplayer:\n    def initialize(self):\n"
           "        subprocess.Popen(['ueberzug', 'layer'])\n"
           "class Other:\n    def go(self):\n        subprocess.Popen(['ueberzug'])\n")
    got = questions({"ext/img_display.py": src})
    assert [e for q in got for e in q.evidence] == ["ext/img_display.py:7 runs ueberzug"]


def test_the_question_names_the_path_it_was_judged_against():
    env = Environment(**{**ENV.to_json(), "path_label": "KLOROS_TARGET_PATH as seen on host w1"})
    got = questions({"m.py": "import subprocess\nsubprocess.run(['rsync'])\n"}, env)
    assert "not on KLOROS_TARGET_PATH as seen on host w1" in got[0].question


def test_shell_program_reads_the_first_real_word():
    assert shell_program("A=1 B=2 make -j4") == "make"
    assert shell_program("echo hi | tee x") is None
    assert shell_program("$EDITOR file") is None
    assert shell_program("'unterminated") is None


# --- missing_env ---------------------------------------------------------------------------

def test_variables_read_where_their_absence_raises_are_missing_env():
    src = ("import os\nfrom os import environ, getenv\nfrom pathlib import Path\n"
           "a = os.environ['API_KEY']\nb = os.getenv('TOKEN').strip()\n"
           "c = int(environ.get('PORT'))\nd = Path(getenv('DATA_DIR'))\n"
           "e = os.getenv('PREFIX') + '/bin'\n")
    assert found({"cfg.py": src}, "missing_env") == {
        "cfg.py:API_KEY": "low", "cfg.py:TOKEN": "low", "cfg.py:PORT": "low",
        "cfg.py:DATA_DIR": "low", "cfg.py:PREFIX": "low"}


@pytest.mark.parametrize("source", [
    "import os\nx = os.getenv('X')\n",
    "import os\nx = os.environ.get('X')\nif x is None:\n    x = 'd'\n",
    "import os\ncall(os.getenv('X'))\n",
    "import os\nprint(f\"{os.getenv('X')}\")\n",
    "import os\nwords = os.environ['COMP_WORDS'].split()\n",
    "import os\nflag = os.getenv('X') == '1'\n",
    "import os\nenv = os.environ\nif 'X' in env:\n    os.environ['X']\n",
    "import os, sys\nif sys.platform == 'darwin':\n    os.environ['__PYVENV_LAUNCHER__']\n",
    "import os\nos.environ['Path']\nos.environ['GITHUB_ACTION_PATH']\n",
])
def test_a_get_whose_none_is_handled_is_not_a_requirement(source):
    assert found({"cfg.py": source}, "missing_env") == {}


@pytest.mark.parametrize("path, text", [
    ("deploy/app.service", "[Service]\nEnvironment=API_KEY=x \"OTHER=1\"\n"),
    (".env", "API_KEY=abc\n"),
    (".env.production", "export API_KEY=abc\n"),
    ("docker-compose.yml", "services:\n  app:\n    environment:\n      - API_KEY=${API_KEY}\n"),
    ("Dockerfile", "FROM python:3.12\nENV API_KEY=none\n"),
    ("scripts/run.sh", "#!/bin/sh\nexport API_KEY\nexec python app.py\n"),
    ("docs/ref/settings.txt", "API_KEY\n  The key.\n"),
    ("README.txt", "Set API_KEY to your key before starting.\n"),
    ("README.md", "Set `API_KEY` to your key before starting.\n"),
    ("docs/configuration.rst", ".. envvar:: API_KEY\n\n   The key.\n"),
])
def test_a_variable_the_tree_sets_or_documents_is_not_missing(path, text):
    files = {"cfg.py": "import os\nos.environ['API_KEY']\n", path: text}
    assert found(files, "missing_env") == {}, path


@pytest.mark.parametrize("source", [
    "import os\nos.getenv('X', 'default')\n",
    "import os\nos.environ.get('X', None)\n",
    "import os\nos.environ['HOME']\n",
    "import os\nos.environ['X'] = '1'\nos.environ['X']\n",
    "import os\nif 'X' in os.environ:\n    os.environ['X']\n",
    "import os\nif os.environ.get('X'):\n    print(os.environ['X'])\n",
    "import os\nwhile not os.getenv('X'):\n    pass\n",
    "import os\nv = os.environ.get('X') or 'fallback'\n",
    "import os\nv = 1 if os.getenv('X') else 2\n",
    "import os\ntry:\n    os.environ['X']\nexcept KeyError:\n    pass\n",
    "environ = {}\nenviron['X']\n",
])
def test_defaults_service_variables_writes_and_checks_are_not_missing_env(source):
    assert found({"cfg.py": source}, "missing_env") == {}


def test_an_env_example_documents_a_variable_and_resolves_it_through_affected():
    detector, index = build({"cfg.py": "import os\nos.environ['API_KEY']\n"})
    assert [q.subject for q in detector.evaluate("cfg.py", index)] == ["cfg.py:API_KEY"]
    touched = index.update(".env.example", detector.extract(
        ".env.example", "# comment\nexport API_KEY=changeme\n# OPTIONAL_FLAG=\n"))
    assert detector.affected(".env.example", touched, index) == {"cfg.py"}
    assert detector.evaluate("cfg.py", index) == []


def test_a_variable_set_elsewhere_in_the_tree_is_not_missing():
    files = {"cfg.py": "import os\nos.environ['API_KEY']\n",
             "tests/conftest.py": ("def setup(monkeypatch):\n"
                                   "    monkeypatch.setenv('API_KEY', 'x')\n")}
    assert found(files, "missing_env") == {}


# --- robustness and plumbing ---------------------------------------------------------------

@pytest.mark.parametrize("path, text", [
    ("m.py", "def broken(:\n"),
    ("m.py", "x = 1\x00\n"),
    ("m.py", "x = " + "(" * 5000 + ")" * 5000 + "\n"),
    ("pyproject.toml", "[project\nname = 'x'\n"),
])
def test_unparseable_files_give_an_error_and_never_raise(path, text):
    facts = CapabilityDetector(ENV).extract(path, text)
    assert facts.error and not facts.relations


def test_warnings_while_parsing_never_make_valid_code_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        facts = CapabilityDetector(ENV).extract("m.py", "import os\npattern = '\\d+'\n")
    assert facts.error is None and facts.relations["imports"] == {"os"}


def test_a_readme_documenting_one_variable_leaves_another_missing():
    files = {"cfg.py": "import os\nos.environ['API_KEY']\nos.environ['API_SECRET']\n",
             "README.md": "Set `API_KEY` to your key before starting.\n"}
    assert set(found(files, "missing_env")) == {"cfg.py:API_SECRET"}


def test_the_detector_sees_code_declarations_and_what_sets_or_documents_variables():
    assert [p for p in ("a.py", "pyproject.toml", "requirements.txt", "requirements/dev.txt",
                        ".env.example", "prod.env.example", "docs/notes.txt", "setup.cfg",
                        "README.md", "other.toml", "data/words.txt", "a.service",
                        "image.png") if wants_path(p)] == [
        "a.py", "pyproject.toml", "requirements.txt", "requirements/dev.txt", ".env.example",
        "prod.env.example", "docs/notes.txt", "setup.cfg", "README.md", "a.service"]
    assert CapabilityDetector(ENV).extract("data/words.txt", "REDIS\n").relations == {}


def test_routing_sends_the_detector_every_file_it_wants():
    from kloros_tasks.routing import route  # noqa: PLC0415

    for path in (".env", ".env.local", "prod.env", "x/prod.env.example", "setup.cfg",
                 "deploy/app.service", "docker-compose.yml", "compose.yaml", "Dockerfile",
                 "run.sh", "docs/a.txt", "README.txt", "requirements-dev.txt",
                 "requirements/extras/zeromq.txt", "README.md", "docs/x.rst"):
        assert wants_path(path) and "capability" in route(path), path
    # Documents go to both: knowledge judges them, capability reads what they document.
    assert route("README.md") == route("docs/x.rst") == {"knowledge", "capability"}


def test_setup_cfg_declares_like_pyproject():
    text = ("[metadata]\nname = Demo_App\n[options]\ninstall_requires =\n    redis>=5\n"
            "    tzdata; sys_platform == 'win32'\n[options.extras_require]\nyaml = PyYAML\n")
    got = deps.parse_setup_cfg(text)
    assert got.project == "demo-app" and got.authoritative
    assert {(d.dist, d.main) for d in got.declared} == {
        ("redis", True), ("tzdata", False), ("pyyaml", False)}


def test_the_environment_round_trips_through_json_and_normalises_names():
    env = Environment.from_json(ENV.to_json())
    assert env == ENV
    assert env.dists_of("yaml") == {"pyyaml"}
    assert env.tops_of("PyYAML") == {"yaml"}
    assert env.tops_of("some-cli") == frozenset()
    assert env.tops_of("Not_Installed.Pkg") == {"not_installed_pkg"}
    with pytest.raises(ValueError):
        Environment.from_json({"modules": 3})


def test_requirement_lines_are_parsed_like_pip_reads_them():
    text = ("# comment\n-r base.txt\n-e .\n--index-url https://x\nhttps://h/p.whl\nlibs/local\n"
            "Django[bcrypt]>=4 ; python_version>'3' # why\nrequests \\\n    ==2.0\n"
            "name @ https://h/n.zip\nzope.interface\n")
    got = deps.parse_requirements("requirements.txt", text)
    assert [(d.dist, d.line) for d in got.declared] == [
        ("django", 7), ("requests", 8), ("name", 10), ("zope-interface", 11)]
    # A marker makes an entry conditional (django's), the others are runtime needs.
    assert [d.main for d in got.declared] == [False, True, True, True]
    assert not any(d.main for d in deps.parse_requirements("requirements-test.txt",
                                                           "x\n").declared)


def test_poetry_tables_declare_dependencies():
    text = ("[tool.poetry]\nname='p'\n[tool.poetry.dependencies]\npython='^3.11'\nRequests='*'\n"
            "[tool.poetry.group.dev.dependencies]\npytest='*'\n")
    got = deps.parse_pyproject(text)
    assert got.authoritative and got.project == "p"
    assert {(d.dist, d.main) for d in got.declared} == {("requests", True), ("pytest", False)}


# --- affected: only the files whose questions can change -----------------------------------

def test_a_submodule_beside_a_module_of_the_same_name_reaches_who_wants_it():
    # tools/web.py already makes tools/web exist, so tools/web/fetch.py changes only
    # tools/web/fetch: the location `from tools.web import fetch` asks for.
    detector, index = build({**TOOLS, "agent/loop.py": "from tools.web import fetch\n"})
    assert [q.subject for q in detector.evaluate("agent/loop.py", index)] == [
        "agent/loop.py:tools.web.fetch"]
    touched = index.update("tools/web/fetch.py", detector.extract("tools/web/fetch.py", "X = 1\n"))
    assert ("node", "tools/web") in touched
    assert detector.affected("tools/web/fetch.py", touched, index) == {"agent/loop.py"}
    assert detector.evaluate("agent/loop.py", index) == []
    touched = index.update("tools/web/fetch.py", None)
    assert detector.affected("tools/web/fetch.py", touched, index) == {"agent/loop.py"}
    assert detector.evaluate("agent/loop.py", index)


def test_a_module_joining_a_package_re_evaluates_none_of_its_importers():
    detector, index = build({"pkg/__init__.py": "", "pkg/a.py": "",
                             "app.py": "import pkg\nimport pkg.a\n"})
    touched = index.update("pkg/b.py", detector.extract("pkg/b.py", "import os\n"))
    assert ("node", "pkg") in touched
    assert detector.affected("pkg/b.py", touched, index) == set()
    for path in ("pkg/__init__.py", "pkg/a.py"):
        assert detector.affected(path, index.update(path, None), index) == set()
    # The last file of the package takes the location with it.
    assert detector.affected("pkg/b.py", index.update("pkg/b.py", None), index) == {"app.py"}
    assert found_in(detector, index, "app.py") == {"app.py:pkg"}


def test_an_in_tree_module_named_like_the_standard_library_re_evaluates_no_importer():
    detector, index = build({"app/m.py": "import os\n"})
    touched = index.update("os.py", detector.extract("os.py", ""))
    assert detector.affected("os.py", touched, index) == set()


def test_only_the_first_plain_import_makes_a_guarded_module_required():
    detector, index = build({
        "pkg/__init__.py": ("try:\n    from ._cli import main\nexcept ImportError:\n"
                            "    main = None\n"),
        "pkg/_cli.py": "import widgetlib\n"})
    touched = index.update("app.py", detector.extract("app.py", "import pkg._cli\n"))
    assert detector.affected("app.py", touched, index) == {"pkg/_cli.py"}
    assert found_in(detector, index, "pkg/_cli.py") == {"pkg/_cli.py:widgetlib"}
    touched = index.update("cli.py", detector.extract("cli.py", "import pkg._cli\n"))
    # Only app.py, the first module needing pkg (it owns any question about it).
    assert detector.affected("cli.py", touched, index) == {"app.py"}


def found_in(detector: CapabilityDetector, index: MemoryIndex, path: str) -> set[str]:
    return {q.subject for q in detector.evaluate(path, index) if q.rule == "missing_module"}


# --- incremental equals batch --------------------------------------------------------------

VARIANTS: dict[str, list[str | None]] = {
    "pyproject.toml": [None, "[project]\nname='d'\ndependencies=['redis', 'celery']\n",
                       "[project]\nname='d'\ndependencies=['pyyaml', 'gone-lib']\n",
                       "[project]\nname='d'\ndynamic=['dependencies']\n", "[broken\n"],
    "requirements.txt": [None, "kombu\n", "pyzmq\nredis\n"],
    "app/main.py": [None, "import redis, yaml, helper, util\nfrom tools.web import fetch\n",
                    "import os\nos.environ['API_KEY']\nimport gone_lib\n",
                    "import subprocess\nsubprocess.run(['nope-xyz'])\nfrom tools import web\n",
                    "def broken(:\n"],
    "app/util.py": [None, "import kombu\nimport not_here\n"],
    "app/__init__.py": [None, "try:\n    from . import util\nexcept ImportError:\n    pass\n",
                        "from app import util\n"],
    "helper.py": [None, "import zmq\n"],
    "scripts/helper/__init__.py": [None, "from tools.web import search\n"],
    "tools/__init__.py": [None, "", "from .web import *\n"],
    "tools/web.py": [None, "def search(q): pass\n", "@tool(name='fetch')\ndef get(u): pass\n"],
    "tools/web/fetch.py": [None, "X = 1\n"],
    "tools/agent.py": [None, "from .web import fetch\nfrom . import vision\n"],
    "tools/vision.py": [None, ""],
    ".env.example": [None, "API_KEY=\n"],
    "app/need1.py": [None, "import gone_lib\n", "import not_here\nimport util\n"],
    "app/need2.py": [None, "import gone_lib, not_here\n"],
    "app/opt.py": [None, "try:\n    import not_here\nexcept ImportError:\n    pass\n",
                   "try:\n    import os\nexcept ImportError:\n    import gone_lib\n"],
    "deploy/app.service": [None, "[Service]\nEnvironment=PORT_X=8000\n"],
    "app/settings.py": [None, "APPS = ['kombu', 'redis.client']\n", "APPS = []\n"],
    "docs/usage.txt": [None, "Set API_KEY first.\n", "Nothing here.\n"],
    "tests/helpers/__init__.py": [None, ""],
    "tests/sub/test_a.py": [None, "import helpers\nimport gone_lib\nimport PIL\n",
                            "import sys\nsys.path.insert(0, 'x')\nimport nowhere\n"],
    "setup.cfg": [None, "[metadata]\nname = gone-lib\n",
                  "[options]\ninstall_requires =\n    Pillow\n    kombu\n"],
    "PKG-INFO": [None, "Name: d\nRequires-Dist: gone-lib\nRequires-Dist: redis\n",
                 "Name: d\nRequires-Dist: pyyaml; extra == 'y'\nRequires-Dist: celery\n",
                 "Metadata-Version: 1.0\nName: d\n"],
    "src/tools/__init__.py": [None, ""],
    "src/tools/tracker.py": [None, "def track(x): pass\n"],
    "app/track.py": [None, "from src.tools.tracker import track\n",
                     "import os\nint(os.getenv('PORT_X'))\n"],
    "tests/conftest.py": [None, "import os\nos.environ['API_KEY'] = 'x'\nimport celery\n"],
}


def _full_build(contents: dict[str, str]) -> set[str]:
    detector, index = CapabilityDetector(ENV), MemoryIndex()
    for path, text in contents.items():
        index.update(path, detector.extract(path, text))
    return {q.id for p in index.paths() for q in detector.evaluate(p, index)}


@pytest.mark.parametrize("seed", range(8))
def test_incremental_updates_equal_a_full_rebuild(seed):
    rng = random.Random(seed)
    detector, index = CapabilityDetector(ENV), MemoryIndex()
    good: dict[str, str] = {}  # the last parseable content: what the index holds
    open_ids: dict[str, set[str]] = {}
    for _ in range(100):
        path = rng.choice(sorted(VARIANTS))
        text = rng.choice(VARIANTS[path])
        facts = None if text is None else detector.extract(path, text)
        if facts is not None and facts.error:
            continue  # the caller keeps the previous facts of a half-typed file
        touched = index.update(path, facts)
        if text is None:
            good.pop(path, None)
            open_ids.pop(path, None)
        else:
            good[path] = text
        for p in ({path} if text is not None else set()) | detector.affected(path, touched, index):
            open_ids[p] = {q.id for q in detector.evaluate(p, index)}
        assert set().union(*open_ids.values()) == _full_build(good)


def test_the_detector_imports_no_service_library():
    code = ("import sys, kloros_tasks.detectors.capability.detector\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} &"
            " {'celery', 'redis', 'kombu', 'zmq', 'watchdog'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_files_evaluated_together_ask_the_same_questions_with_fewer_lookups():
    # Real code: this project's own package and its declarations, judged against an
    # environment that lacks most of what it imports.
    detector, index = build(project_files("pyproject.toml", "kloros_tasks/**/*.py"))
    one_by_one, together, alone, lookups = evaluated_both_ways(detector, index)
    assert together == one_by_one
    assert {q.rule for qs in one_by_one.values() for q in qs} >= {"missing_module"}
    assert lookups * 3 <= alone
