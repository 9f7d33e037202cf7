"""KnowledgeDiscovery false positives found on real trees, each in its smallest real shape.

The trees are indexed as ``kloros-tasks scan`` indexes them (packages first, names from
the import root), through ``scan_root`` on a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

from kloros_tasks import settings
from kloros_tasks.cli.scan import scan_root
from kloros_tasks.detectors.knowledge.context import (
    declared_objects,
    is_generated,
    is_historical,
    sphinx_suffixes,
)
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.work import engine

CFG = settings.from_env({})
SPHINX_TXT_CONF = 'project = "Django"\nsource_suffix = {".txt": "restructuredtext"}\n'
# A tree that declares a docstring policy: missing_docstrings asks only in one.
RUFF_D = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["E", "D"]\n'}
DJANGO_CODE = {
    "django/__init__.py": '"""Django."""\n',
    "django/utils/__init__.py": "",
    "django/utils/text.py": '"""Text."""\n\ndef slugify(value):\n    """Slug."""\n',
}


def scan(tmp_path: Path, files: dict[str, str]) -> list:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return scan_root(tmp_path, KnowledgeDetector(), CFG, warn=lambda m: None)


def asked(tmp_path: Path, files: dict[str, str]) -> set[tuple[str, str]]:
    return {(q.rule, q.owner) for q in scan(tmp_path, files)}


def evidence(tmp_path: Path, files: dict[str, str]) -> list[str]:
    return [e for q in scan(tmp_path, files) if q.rule == "stale_doc" for e in q.evidence]


# --- Sphinx .txt sources (Django: docs/ref/index.txt:34 lists validators) ---------------

def test_a_toctree_entry_resolves_to_a_txt_source(tmp_path):
    found = asked(tmp_path, {**RUFF_D,
        "docs/conf.py": SPHINX_TXT_CONF,
        "docs/index.txt": "Django\n======\n\n.. toctree::\n\n   ref/index\n",
        "docs/ref/index.txt": "API\n===\n\n.. toctree::\n\n   validators\n",
        "docs/ref/validators.txt": "Validators\n==========\n\nSee :doc:`/ref/index`.\n",
    })
    assert found == set()


def test_a_txt_file_is_a_document_source_only_where_conf_py_says_so(tmp_path):
    found = asked(tmp_path, {**RUFF_D,
        "docs/conf.py": SPHINX_TXT_CONF,
        "docs/index.txt": "Index\n=====\n",
        "docs/orphaned.txt": "Nobody lists me\n===============\n",
        "django/forms/templates/errors/list/text.txt": "{% for error in errors %}\n",
        "requirements/extras/redis.txt": "redis>=4\n",
    })
    assert found == {("unindexed_doc", "docs/orphaned.txt")}


def test_source_suffix_is_read_without_executing_conf_py():
    import ast  # noqa: PLC0415

    assert sphinx_suffixes(ast.parse(SPHINX_TXT_CONF)) == {".txt"}
    assert sphinx_suffixes(ast.parse('source_suffix = [".rst", ".md"]\n')) == {".rst", ".md"}
    assert sphinx_suffixes(ast.parse("import os\nsource_suffix = os.environ['X']\n")) == set()


def test_a_conf_py_arriving_later_makes_its_txt_sources_judged():
    detector, index = KnowledgeDetector(), MemoryIndex()
    engine.apply_change(detector, index, "docs/index.txt", "Index\n=====\n")
    engine.apply_change(detector, index, "docs/orphaned.txt", "Orphan\n======\n")
    assert detector.evaluate("docs/orphaned.txt", index) == []
    applied = engine.apply_change(detector, index, "docs/conf.py", SPHINX_TXT_CONF)
    assert "docs/orphaned.txt" in applied.owners
    assert [q.rule for q in detector.evaluate("docs/orphaned.txt", index)] == ["unindexed_doc"]


def test_myst_toctree_options_are_not_entries(tmp_path):
    found = asked(tmp_path, {**RUFF_D,
        "docs/index.md": "# Black\n\n```{toctree}\n---\nmaxdepth: 3\nincludehidden:\n"
                         "caption: User Guide\n---\n\nfaq\n```\n",
        "docs/faq.md": "# FAQ\n",
    })
    assert found == set()


# --- history is not stale (Django: docs/releases/1.8.7.txt:9 names django.utils.six) ----

def test_release_notes_and_deprecation_timelines_name_removed_code_on_purpose(tmp_path):
    found = asked(tmp_path, {**RUFF_D,
        **DJANGO_CODE,
        "docs/releases/1.8.7.txt": "1.8.7\n=====\n\nFixed :mod:`django.utils.six`.\n",
        "docs/internals/deprecation.txt": "Timeline\n========\n\n``django.utils.six`` goes.\n",
        "CHANGES.md": "# Changes\n\n- removed `django.utils.six`\n",
        "docs/ref/utils.txt": "Utils\n=====\n\n:mod:`django.utils.six` helps.\n",
    })
    assert ("stale_doc", "docs/ref/utils.txt") in found
    assert not {owner for rule, owner in found if rule == "stale_doc"} - {"docs/ref/utils.txt"}


def test_historical_documents_are_recognised_by_place_or_name():
    for path in ("docs/releases/1.8.7.txt", "docs/history/changelog-1.0.rst", "CHANGES.md",
                 "docs/change_log.md", "docs/internals/deprecation.txt", "NEWS.rst"):
        assert is_historical(path), path
    assert not is_historical("docs/ref/request-response.txt")


# --- names and paths outside code context or outside the tree ---------------------------

def test_a_logger_name_in_a_literal_is_not_a_reference(tmp_path):
    found = evidence(tmp_path, {**DJANGO_CODE, "docs/logging.rst": (
        "Loggers\n=======\n\n``django.utils.request``\n~~~~~~~~~~~~~~~~~~~~~~~~\n\n"
        "Errors go to the ``django.utils.security`` logger, not ``django.utils.gone``.\n")})
    assert found == ["docs/logging.rst:7 django.utils.gone"]


def test_a_tutorial_path_names_the_readers_project_not_this_tree(tmp_path):
    found = evidence(tmp_path, {**DJANGO_CODE, "docs/intro/tutorial01.rst": (
        "Tutorial\n========\n\nEdit ``mysite/settings.py`` and ``django/utils/gone.py``.\n")})
    assert found == ["docs/intro/tutorial01.rst:4 django/utils/gone.py"]


def test_a_bare_literal_below_the_top_level_package_is_not_judged(tmp_path):
    # ``django.jQuery`` (a JavaScript namespace) stays quiet; a role is still judged.
    found = evidence(tmp_path, {**DJANGO_CODE, "docs/admin.rst": (
        "Admin\n=====\n\nUse ``django.jQuery`` and :func:`django.jQuery`.\n")})
    assert found == ["docs/admin.rst:4 django.jQuery"]


def test_a_module_importable_only_from_a_subdirectory_is_no_top_level_module(tmp_path):
    found = evidence(tmp_path, {
        **DJANGO_CODE,
        "examples/proj/__init__.py": "", "examples/proj/celery.py": "app = None\n",
        "docs/next-steps.rst": "Steps\n=====\n\nStart :mod:`proj.app` first.\n",
    })
    assert found == []


def test_a_reference_to_a_declared_object_resolves_to_the_declaration(tmp_path):
    code = {**DJANGO_CODE, "django/utils/text.py": '"""Text."""\n\n\nclass Sitemap:\n'
            '    """Sitemap."""\n\n    location = None\n'}
    page = ("Sitemaps\n========\n\n.. module:: django.utils.text\n\n.. class:: Sitemap\n\n"
            "    .. attribute:: Sitemap.location\n\n    .. attribute:: Sitemap.lastmod\n\n"
            "See :attr:`~django.utils.text.Sitemap.lastmod` and "
            ":attr:`django.utils.text.Sitemap.priority`.\n")
    assert declared_objects(page.splitlines()) == [
        (6, "django.utils.text.Sitemap"), (8, "django.utils.text.Sitemap.location"),
        (10, "django.utils.text.Sitemap.lastmod")]
    assert evidence(tmp_path, {**code, "docs/sitemaps.rst": page}) == [
        "docs/sitemaps.rst:12 django.utils.text.Sitemap.priority"]


def test_runtime_dunder_names_are_not_judged(tmp_path):
    found = evidence(tmp_path, {**DJANGO_CODE, "docs/unicode.rst": (
        "Unicode\n=======\n\nA :class:`django.utils.text.__proxy__` object.\n")})
    assert found == []


# --- missing_docstrings ------------------------------------------------------------------

UNDOCUMENTED_FUNCTIONS = "".join(f"def f{i}(x):\n    return x\n\n" for i in range(5))


def test_generated_modules_are_not_asked_for_docstrings(tmp_path):
    codec = ('""" Python Character Mapping Codec cp1252 generated from '
             "'MAPPINGS/VENDORS/MICSFT/WINDOWS/CP1252.TXT' with gencodec.py.\n\n\"\"\"\n")
    migration = "# Generated by Django 5.2 on 2025-04-02 10:00\n"
    assert is_generated(codec + UNDOCUMENTED_FUNCTIONS)
    assert asked(tmp_path, {**RUFF_D, "app/__init__.py": "", "encodings/__init__.py": "",
                            "encodings/cp1252.py": codec + UNDOCUMENTED_FUNCTIONS,
                            "app/migrations/0001_initial.py": migration + UNDOCUMENTED_FUNCTIONS,
                            "app/plain.py": UNDOCUMENTED_FUNCTIONS}) == {
        ("missing_docstrings", "app/plain.py")}


def test_overrides_and_declarative_subclasses_are_not_counted(tmp_path):
    source = ('"""Commands."""\nfrom django.core.management import BaseCommand\n\n\n'
              "class Command(BaseCommand):\n"
              + "".join(f"    def hook{i}(self):\n        pass\n" for i in range(5))
              + "\n\nclass RemovedInDjango60Warning(DeprecationWarning):\n    pass\n"
              + "\n\nclass Contains(Lookup):\n    lookup_name = 'contains'\n")
    found = scan(tmp_path, {**RUFF_D, "app/__init__.py": "", "app/commands.py": source})
    assert [(q.rule, q.evidence) for q in found] == []


def test_a_definition_the_docs_declare_needs_no_docstring(tmp_path):
    code = '"""Sessions."""\n\n\nclass SessionBase:\n    """Base."""\n\n' + "".join(
        f"    def m{i}(self):\n        pass\n\n" for i in range(5))
    page = ("Sessions\n========\n\n.. currentmodule:: pkg.sessions\n\n"
            ".. class:: SessionBase\n\n" + "".join(
                f"    .. method:: m{i}()\n\n" for i in range(3)))
    files = {**RUFF_D, "pkg/__init__.py": "", "pkg/sessions.py": code}
    assert ("missing_docstrings", "pkg/sessions.py") in asked(tmp_path / "a", files)
    # 2 left undocumented: at the threshold of 3, not above it
    assert asked(tmp_path / "b", {**files, "docs/index.rst": page}) == set()


def test_a_page_declaring_the_definitions_resolves_the_question_incrementally():
    detector, index = KnowledgeDetector(), MemoryIndex()
    code = '"""M."""\n\n' + "".join(f"def f{i}():\n    pass\n\n" for i in range(5))
    engine.apply_change(detector, index, "pyproject.toml", RUFF_D["pyproject.toml"])
    engine.apply_change(detector, index, "pkg/__init__.py", "")
    engine.apply_change(detector, index, "pkg/mod.py", code)
    assert [q.rule for q in detector.evaluate("pkg/mod.py", index)] == ["missing_docstrings"]
    page = ".. module:: pkg.mod\n\n" + "".join(f".. function:: f{i}()\n\n" for i in range(5))
    applied = engine.apply_change(detector, index, "docs/index.rst", page)
    assert "pkg/mod.py" in applied.owners
    assert detector.evaluate("pkg/mod.py", index) == []


def test_codec_boilerplate_and_scripts_outside_the_library_are_not_asked(tmp_path):
    codec = ("import codecs\n\nclass Codec(codecs.Codec):\n    def encode(self, s):\n"
             "        return s\n\n" + UNDOCUMENTED_FUNCTIONS
             + "def getregentry():\n    return codecs.CodecInfo(name='x')\n")
    assert asked(tmp_path, {**RUFF_D, "encodings/__init__.py": "", "encodings/koi8_t.py": codec,
                            "scripts/release.py": UNDOCUMENTED_FUNCTIONS,
                            "examples/app/tasks.py": UNDOCUMENTED_FUNCTIONS,
                            "lib.py": UNDOCUMENTED_FUNCTIONS}) == {
        ("missing_docstrings", "lib.py")}


def test_a_sphinx_projects_contents_page_is_its_root(tmp_path):
    assert asked(tmp_path, {**RUFF_D, "t/unit/contrib/proj/conf.py": "master_doc = 'contents'\n",
                            "t/unit/contrib/proj/contents.rst": "Contents\n========\n"}) == set()


def test_private_and_deprecated_modules_are_not_asked(tmp_path):
    deprecated = ('"""Old."""\nimport warnings\n'
                  "warnings._deprecated(__name__, remove=(3, 12))\n" + UNDOCUMENTED_FUNCTIONS)
    warned = ('"""Old."""\nimport warnings\nwarnings.warn("gone soon", DeprecationWarning, '
              "stacklevel=2)\n" + UNDOCUMENTED_FUNCTIONS)
    assert asked(tmp_path, {**RUFF_D, "_markupbase.py": "class ParserBase:\n" + "".join(
        f"    def m{i}(self):\n        pass\n" for i in range(5)),
        "asyncore.py": deprecated, "imp.py": warned, "lib.py": UNDOCUMENTED_FUNCTIONS}) == {
        ("missing_docstrings", "lib.py")}


def test_toctree_globs_index_what_they_match_like_sphinx(tmp_path):
    found = asked(tmp_path, {**RUFF_D,
        "docs/index.rst": "Docs\n====\n\n.. toctree::\n   :glob:\n\n   api/*\n",
        "docs/api/models.rst": "Models\n======\n",
        "docs/api/deep/fields.rst": "Fields\n======\n",  # * stays within a directory
        "docs/other.rst": "Other\n=====\n",
    })
    assert found == {("unindexed_doc", "docs/api/deep/fields.rst"),
                     ("unindexed_doc", "docs/other.rst")}


def test_a_glob_added_later_indexes_the_documents_it_matches():
    detector, index = KnowledgeDetector(), MemoryIndex()
    engine.apply_change(detector, index, "docs/api/models.rst", "Models\n======\n")
    assert [q.rule for q in detector.evaluate("docs/api/models.rst", index)] == [
        "unindexed_doc"]
    applied = engine.apply_change(detector, index, "docs/index.rst",
                                  ".. toctree::\n   :glob:\n\n   api/*\n")
    assert "docs/api/models.rst" in applied.owners
    assert detector.evaluate("docs/api/models.rst", index) == []


def test_a_namespace_package_at_the_root_is_library_code(tmp_path):
    found = asked(tmp_path, {**RUFF_D, "pkg/mod.py": UNDOCUMENTED_FUNCTIONS,
                             "README.md": "Use `pkg.mod.gone`.\n"})
    assert found == {("missing_docstrings", "pkg/mod.py"), ("stale_doc", "README.md")}


def test_a_definition_documented_under_its_public_package_path_needs_no_docstring(tmp_path):
    code = '"""Engine."""\n\n\nclass Engine:\n' + "".join(
        f"    def m{i}(self):\n        pass\n\n" for i in range(5))
    page = (".. module:: pkg\n\n.. class:: Engine\n\n"
            + "".join(f"    .. method:: m{i}()\n\n" for i in range(5)))
    assert asked(tmp_path, {**RUFF_D, "pkg/__init__.py": "from pkg.engine import Engine\n",
                            "pkg/engine.py": code, "docs/index.rst": page}) == set()


# --- stale_doc: celery ---------------------------------------------------------------------

CELERY_CODE = {
    "celery/__init__.py": '"""Celery."""\n',
    "celery/app/__init__.py": '"""App."""\n',
    "celery/app/builtins.py": (
        '"""Built-in tasks."""\n\n\ndef add_map_task(app):\n    """Map."""\n'
        "    from celery.canvas import signature\n\n"
        "    @app.task(name='celery.map', shared=False, lazy=False)\n"
        "    def xmap(task, it):\n        return [task(item) for item in it]\n"
        "    return xmap\n"),
    "celery/utils/__init__.py": '"""Utils."""\n',
    "celery/utils/time.py": '"""Time."""\n\n\ndef humanize_seconds(secs):\n    """H."""\n',
}


def test_a_name_a_decorator_registers_a_task_under_is_not_stale(tmp_path):
    page = (":class:`~celery.map` and :class:`~celery.starmap` are built-in tasks\n"
            "that call the provided calling task for every element in a sequence.\n")
    found = evidence(tmp_path, {**CELERY_CODE, "docs/canvas.rst": page})
    assert found == ["docs/canvas.rst:1 celery.starmap"]  # starmap is not registered here


def test_a_registered_task_name_going_re_evaluates_the_documents_naming_it():
    detector, index = KnowledgeDetector(), MemoryIndex()
    for path, text in CELERY_CODE.items():
        engine.apply_change(detector, index, path, text)
    engine.apply_change(detector, index, "docs/index.rst", ":class:`~celery.map`\n")
    assert detector.evaluate("docs/index.rst", index) == []
    renamed = CELERY_CODE["celery/app/builtins.py"].replace("celery.map", "celery.xmap")
    applied = engine.apply_change(detector, index, "celery/app/builtins.py", renamed)
    assert "docs/index.rst" in applied.owners
    assert [q.rule for q in detector.evaluate("docs/index.rst", index)] == ["stale_doc"]


def test_the_old_names_of_a_migration_table_are_not_stale_and_its_new_names_are(tmp_path):
    page = ("Aliases\n=======\n\n"
            "* ``celery.utils.info``\n"
            "    * ``.humanize_seconds`` -> ``celery.utils.time.humanize_seconds``\n"
            "    * ``.textindent`` -> ``celery.utils.textindent``\n\n"
            "* ``celery.utils.conf`` -> {``app.conf``}\n")
    assert evidence(tmp_path, {**CELERY_CODE, "docs/app-overview.rst": page}) == [
        "docs/app-overview.rst:6 celery.utils.textindent"]
