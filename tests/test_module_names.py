"""Module names come from the import root; files this Python cannot parse are opaque."""

from __future__ import annotations

from pathlib import Path

import pytest

from kloros_tasks import settings
from kloros_tasks.cli.scan import scan_root
from kloros_tasks.detectors.capability.paths import module_of, nodes_of
from kloros_tasks.detectors.integration.detector import IntegrationDetector
from kloros_tasks.detectors.integration.keys import directories, module_names, resolve_relative
from kloros_tasks.detectors.knowledge.detector import PYTHON_VERSION, KnowledgeDetector
from kloros_tasks.detectors.layout import Layout, module_name, using
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.work import engine
from kloros_tasks.work.registry import scan_detector

CFG = settings.from_env({})


def layout_of(*packages: str, root_package: str = "") -> Layout:
    return Layout(lambda d: d in packages, root_package)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def questions(root: Path, detector: str) -> list:
    return scan_root(root, scan_detector(detector, CFG), CFG, warn=lambda m: None)


# --- the naming rule, pure --------------------------------------------------------------

def test_a_package_root_names_its_modules_from_the_directory_above():
    django = layout_of("", "http", root_package="django")
    assert module_name("http/response.py", django) == "django.http.response"
    assert module_name("__init__.py", django) == "django"
    assert module_name("http/__init__.py", django) == "django.http"


def test_the_import_root_is_the_nearest_directory_without_init():
    sdist = layout_of("django", "django/http", "src/pkg")
    assert module_name("django/http/response.py", sdist) == "django.http.response"
    assert module_name("src/pkg/mod.py", sdist) == "pkg.mod"
    # scripts/ holds no __init__.py: its own import root, and a namespace from the top
    with using(sdist):
        assert module_names("scripts/tool.py") == ("tool", "scripts.tool")
        assert module_names("src/pkg/mod.py") == ("pkg.mod", "src.pkg.mod")
        assert directories("src/pkg/mod.py") == ["pkg", "src", "src.pkg"]
        assert module_of("src/pkg/__init__.py") == ("pkg", True)
        assert nodes_of("src/pkg/mod.py") == {"pkg", "pkg/mod", "src", "src/pkg", "src/pkg/mod"}
        assert resolve_relative("src/pkg/mod.py", 1, "other") == "pkg.other"


def test_a_directory_above_a_non_package_does_not_join_the_name():
    layout = layout_of("a", "a/b/c")  # a/b has no __init__.py: c is a top-level package
    assert module_name("a/b/c/mod.py", layout) == "c.mod"


def test_without_a_known_layout_the_historical_names_hold():
    assert module_name("a/b/c.py") == "a.b.c"
    assert module_name("src/a/b.py") == "a.b"
    assert module_names("pkg/_c.cpython-311-x86_64-linux-gnu.so") == ("pkg._c",)
    assert module_name("my-dir/x.py") is None


# --- through the scan ------------------------------------------------------------------

DJANGO_LIKE = {
    "__init__.py": "from django.utils.version import get_version\n",
    "http/__init__.py": "from django.http.response import HttpResponse\n",
    "http/response.py": "import http.client\nfrom django.utils import version\n\n"
                        "class HttpResponse:\n    pass\n",
    "utils/__init__.py": "",
    "utils/version.py": "def get_version():\n    return '5.2'\n",
}


def test_scanning_a_package_directory_does_not_shadow_the_standard_library(tmp_path):
    root = write(tmp_path / "django", DJANGO_LIKE)
    assert questions(root, "integration") == []
    assert [q for q in questions(root, "capability") if q.rule == "missing_module"] == []


def test_a_src_layout_is_named_without_src(tmp_path):
    root = write(tmp_path / "proj", {
        "src/pkg/__init__.py": "from pkg.core import run\n",
        "src/pkg/core.py": "def run():\n    pass\n",
        "src/pkg/cli.py": "from pkg.core import walk\n",
    })
    found = questions(root, "integration")
    assert [q.hypothesis for q in found] == ["BROKEN_IMPORT: pkg.core.walk"]


# --- the index is incremental ----------------------------------------------------------

def mods(index: MemoryIndex, path: str) -> list[str]:
    return index.facts(path).data["mods"]


def test_an_init_appearing_or_going_renames_the_modules_below_it(tmp_path):
    root = write(tmp_path / "tree", {"pkg/mod.py": "X = 1\n", "pkg/sub/deep.py": "Y = 2\n"})
    detector, index = IntegrationDetector(), MemoryIndex()

    def reread(rel: str) -> str | None:
        return (root / rel).read_text() if (root / rel).is_file() else None

    for rel in ("pkg/mod.py", "pkg/sub/deep.py"):
        engine.apply_change(detector, index, rel, reread(rel), reread=reread)
    assert mods(index, "pkg/mod.py") == ["mod", "pkg.mod"]

    applied = engine.apply_change(detector, index, "pkg/__init__.py", "", reread=reread)
    assert mods(index, "pkg/mod.py") == ["pkg.mod"]
    assert mods(index, "pkg/sub/deep.py") == ["deep", "pkg.sub.deep"]  # pkg/sub: no init
    assert {"pkg/mod.py", "pkg/sub/deep.py"} <= applied.owners

    engine.apply_change(detector, index, "pkg/__init__.py", None, reread=reread)
    assert mods(index, "pkg/mod.py") == ["mod", "pkg.mod"]


def test_modules_that_cannot_be_read_again_are_reported_stale():
    detector, index = IntegrationDetector(), MemoryIndex()
    engine.apply_change(detector, index, "pkg/mod.py", "X = 1\n")
    applied = engine.apply_change(detector, index, "pkg/__init__.py", "")
    assert applied.stale == {"pkg/mod.py"}
    assert mods(index, "pkg/mod.py") == ["mod", "pkg.mod"]  # kept until it changes


def test_facts_extracted_before_the_layout_changed_are_named_again():
    detector, index = IntegrationDetector(), MemoryIndex()
    early = engine.extract(detector, index, "pkg/mod.py", "X = 1\n")  # outside the lock
    engine.apply_change(detector, index, "pkg/__init__.py", "")
    engine.apply_change(detector, index, "pkg/mod.py", "X = 1\n", facts=early)
    assert mods(index, "pkg/mod.py") == ["pkg.mod"]


# --- files this Python cannot parse ------------------------------------------------------

NEWER = "type Alias = int\ndef f[T](x: T) -> T:\n    return x\n"  # 3.12 syntax
BROKEN = "def helper(:\n"  # stands for any syntax this interpreter refuses


@pytest.mark.parametrize("text", [BROKEN, NEWER][: 1 if PYTHON_VERSION >= "3.12" else 2])
def test_an_unparsable_module_is_opaque_not_absent(tmp_path, text):
    root = write(tmp_path / "proj", {
        "app/__init__.py": "",
        "app/main.py": '"""Main."""\nfrom app.modern import helper, Other\n',
        "app/modern.py": text,
        "tools/__init__.py": "",
        "tools/use.py": "from app.modern import capability\n",
    })
    assert questions(root, "integration") == []
    assert [q for q in questions(root, "capability")
            if q.rule in ("missing_module", "missing_capability")] == []
    found = questions(root, "knowledge")
    assert [(q.rule, q.severity, q.owner) for q in found] == [
        ("unparsable_module", "low", "app/modern.py")]
    assert f"Python {PYTHON_VERSION}" in found[0].question


def test_a_half_typed_save_keeps_the_previous_facts_and_asks_nothing():
    detector, index = KnowledgeDetector(), MemoryIndex()
    engine.apply_change(detector, index, "pkg/mod.py", '"""Doc."""\nX = 1\n')
    before = index.facts("pkg/mod.py")
    applied = engine.apply_change(detector, index, "pkg/mod.py", BROKEN)
    assert applied.error and applied.owners == frozenset()
    assert index.facts("pkg/mod.py") == before
    assert detector.evaluate("pkg/mod.py", index) == []


def test_a_document_extracted_outside_the_lock_is_not_parsed_again():
    class Counting(KnowledgeDetector):
        calls = 0

        def extract(self, path, text):
            Counting.calls += 1
            return super().extract(path, text)

    detector, index = Counting(), MemoryIndex()
    early = engine.extract(detector, index, "docs/a.md", "# A\n")
    engine.apply_change(detector, index, "docs/a.md", "# A\n", facts=early)
    assert Counting.calls == 1
