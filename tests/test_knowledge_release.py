"""KnowledgeDiscovery and the tree as a release (an sdist's PKG-INFO), and documents
kept beside the code: false positives found on real trees, each in its smallest shape."""

from __future__ import annotations

from pathlib import Path

from kloros_tasks import settings
from kloros_tasks.cli.scan import scan_root
from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector
from kloros_tasks.detectors.knowledge.release import announcements, pkg_info_facts
from kloros_tasks.state.index import MemoryIndex
from kloros_tasks.work import engine

CFG = settings.from_env({})
PKG_INFO = "Metadata-Version: 2.1\nName: celery\nVersion: 5.5.3\n\nCelery.\nVersion: 9\n"
CELERY_CODE = {
    "celery/__init__.py": '"""Celery."""\n',
    "celery/result.py": '"""Results."""\n\n\nclass AsyncResult:\n    """A result."""\n',
}
CONTRIBUTING = ".. include:: ../CONTRIBUTING.rst\n"
# celery's docs/internals/app-overview.rst, the design notes of the 2.x refactor.
APP_OVERVIEW = ("Deprecated\n==========\n\n* ``celery.task.ping``\n\n"
                "  Inferior to the ping remote control command.\n"
                "  Will be removed in Celery 2.3.\n\n"
                "* ``celery.result.TaskSetResult``\n\nSee `the guide <guide.rst>`_.\n")


def questions(tmp_path: Path, files: dict[str, str]) -> list:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return scan_root(tmp_path, KnowledgeDetector(), CFG, warn=lambda m: None)


def rules(found: list) -> list[str]:
    return [q.rule for q in found]


def evidence(tmp_path: Path, files: dict[str, str]) -> list[str]:
    return [e for q in questions(tmp_path, files) if q.rule == "stale_doc" for e in q.evidence]


def test_pkg_info_gives_the_release_name_and_version():
    facts = pkg_info_facts("PKG-INFO", PKG_INFO)
    assert facts.relations["release"] == {"celery"}
    assert facts.relations["release_at"] == {"celery==5.5.3"}  # not the description's


def test_a_future_removal_is_an_announcement_and_a_past_one_is_not():
    lines = ["Will be removed in Celery 2.3.", "It was removed in Celery 2.3.",
             "is going to be deprecated in django-rest 3.10"]
    assert announcements(lines) == [[1, "celery", "2.3"], [3, "django-rest", "3.10"]]


# --- an sdist leaves top-level files out (celery's docs/contributing.rst) ---------------

def test_an_include_of_a_top_level_file_an_sdist_left_out_is_not_stale(tmp_path):
    found = evidence(tmp_path, {"PKG-INFO": PKG_INFO, "docs/contributing.rst": CONTRIBUTING})
    assert found == []


def test_the_same_include_outside_an_sdist_is_stale(tmp_path):
    found = evidence(tmp_path, {"docs/contributing.rst": CONTRIBUTING})
    assert found == ["docs/contributing.rst:1 ../CONTRIBUTING.rst (broken link)"]


def test_in_an_sdist_a_link_below_the_top_level_is_still_judged(tmp_path):
    page = ".. include:: ../extra/CONTRIBUTING.rst\n"
    found = evidence(tmp_path, {"PKG-INFO": PKG_INFO, "docs/contributing.rst": page})
    assert found == ["docs/contributing.rst:1 ../extra/CONTRIBUTING.rst (broken link)"]


def test_pkg_info_appearing_re_evaluates_the_include():
    detector, index = KnowledgeDetector(), MemoryIndex()
    engine.apply_change(detector, index, "docs/contributing.rst", CONTRIBUTING)
    assert "stale_doc" in rules(detector.evaluate("docs/contributing.rst", index))
    applied = engine.apply_change(detector, index, "PKG-INFO", PKG_INFO)
    assert "docs/contributing.rst" in applied.owners
    assert "stale_doc" not in rules(detector.evaluate("docs/contributing.rst", index))


# --- a page that dates itself (celery's docs/internals/app-overview.rst) ----------------

def test_a_page_announcing_a_release_the_tree_is_past_judges_only_its_links(tmp_path):
    found = evidence(tmp_path, {**CELERY_CODE, "PKG-INFO": PKG_INFO,
                                "docs/app-overview.rst": APP_OVERVIEW})
    assert found == ["docs/app-overview.rst:11 guide.rst (broken link)"]


def test_the_same_page_in_a_tree_older_than_the_announced_release_is_judged(tmp_path):
    older = PKG_INFO.replace("5.5.3", "2.2.1")
    found = evidence(tmp_path, {**CELERY_CODE, "PKG-INFO": older,
                                "docs/app-overview.rst": APP_OVERVIEW})
    assert "docs/app-overview.rst:9 celery.result.TaskSetResult" in found


def test_an_announcement_of_another_project_does_not_date_the_page(tmp_path):
    page = APP_OVERVIEW.replace("Celery 2.3", "Kombu 2.3")
    found = evidence(tmp_path, {**CELERY_CODE, "PKG-INFO": PKG_INFO,
                                "docs/app-overview.rst": page})
    assert "docs/app-overview.rst:9 celery.result.TaskSetResult" in found


def test_a_new_version_in_pkg_info_re_evaluates_the_pages_announcing_one():
    detector, index = KnowledgeDetector(), MemoryIndex()
    for path, text in {**CELERY_CODE, "PKG-INFO": PKG_INFO.replace("5.5.3", "2.2.1"),
                       "docs/index.rst": "See `app <app-overview.rst>`_.\n",
                       "docs/app-overview.rst": APP_OVERVIEW}.items():
        engine.apply_change(detector, index, path, text)
    assert [q.rule for q in detector.evaluate("docs/app-overview.rst", index)] == ["stale_doc"]
    applied = engine.apply_change(detector, index, "PKG-INFO", PKG_INFO)
    assert "docs/app-overview.rst" in applied.owners
    [stale] = detector.evaluate("docs/app-overview.rst", index)
    assert stale.evidence == ("docs/app-overview.rst:11 guide.rst (broken link)",)


# --- notes beside the code (the standard library's email/architecture.rst) --------------

NOTES = {"email/__init__.py": '"""Email."""\n', "email/architecture.rst": "Notes\n=====\n"}
SPHINX_CONF = 'extensions = ["sphinx.ext.autodoc"]\n'


def test_a_document_in_a_package_with_no_docs_project_is_not_unindexed(tmp_path):
    assert [q.rule for q in questions(tmp_path, NOTES)] == []


def test_a_document_in_a_package_under_a_sphinx_project_is_unindexed(tmp_path):
    found = questions(tmp_path, {**NOTES, "conf.py": SPHINX_CONF})
    assert [(q.rule, q.owner) for q in found] == [("unindexed_doc", "email/architecture.rst")]


def test_a_document_outside_any_package_is_still_unindexed(tmp_path):
    found = questions(tmp_path, {"email/architecture.rst": "Notes\n=====\n"})
    assert [(q.rule, q.owner) for q in found] == [("unindexed_doc", "email/architecture.rst")]


def test_a_sphinx_project_appearing_re_evaluates_the_notes_below_it():
    detector, index = KnowledgeDetector(), MemoryIndex()
    for path, text in NOTES.items():
        engine.apply_change(detector, index, path, text)
    assert detector.evaluate("email/architecture.rst", index) == []
    applied = engine.apply_change(detector, index, "conf.py", SPHINX_CONF)
    assert "email/architecture.rst" in applied.owners
    assert [q.rule for q in detector.evaluate("email/architecture.rst", index)] == [
        "unindexed_doc"]


def test_the_package_init_going_re_evaluates_the_notes_beside_it():
    detector, index = KnowledgeDetector(), MemoryIndex()
    for path, text in NOTES.items():
        engine.apply_change(detector, index, path, text)
    applied = engine.apply_change(detector, index, "email/__init__.py", None)
    assert "email/architecture.rst" in applied.owners
    assert [q.rule for q in detector.evaluate("email/architecture.rst", index)] == [
        "unindexed_doc"]
