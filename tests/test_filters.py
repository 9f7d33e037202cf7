"""The producer's pure decisions: skip rules, routing, debouncing, pending changes."""

from __future__ import annotations

import errno

import pytest

from kloros_tasks import names
from kloros_tasks.watch.filters import (
    CHANGED,
    DELETED,
    DIR_CHANGED,
    DIR_DELETED,
    RESTAT,
    SAME,
    SEND,
    Backoff,
    Debouncer,
    PendingChanges,
    SeenEntry,
    decide,
    dir_is_excluded,
    event_changes,
    inotify_advice,
    is_suffix_entry,
    reconcile_plan,
    relative,
    root_name,
    route,
    should_enqueue,
)

TABLE = {
    "knowledge": (".py", ".md"),
    "integration": (".py", "pyproject.toml", "requirements*.txt", ".env.example"),
}


# --- skip rules --------------------------------------------------------------------------
@pytest.mark.parametrize("relpath", [
    ".git/config.py", "pkg/.hg/x.py", ".svn/a.py",
    "pkg/__pycache__/mod.py",
    ".venv/lib/x.py", "venv/x.py", ".tox/py311/x.py", ".nox/x.py",
    "lib/python3.11/site-packages/requests/api.py",
    "web/node_modules/pkg/index.md",
    "build/lib/pkg/mod.py", "dist/x.py", "kloros_tasks.egg-info/x.md",
    ".mypy_cache/x.py", ".pytest_cache/x.py", ".ruff_cache/x.py",
])
def test_paths_under_tool_and_build_directories_are_not_enqueued(relpath):
    assert should_enqueue(relpath) == set()


@pytest.mark.parametrize("name", [".mod.py.swp", "mod.py.swo", "mod.py~", ".#mod.py", "4913"])
def test_editor_temp_files_are_not_enqueued(name):
    assert should_enqueue(f"pkg/{name}", table={"knowledge": ("*",)}) == set()


def test_an_ordinary_source_file_is_enqueued_for_its_detectors():
    assert should_enqueue("pkg/mod.py", table=TABLE) == {"knowledge", "integration"}
    assert should_enqueue("docs/guide.md", table=TABLE) == {"knowledge"}


def test_a_file_merely_named_like_a_skipped_directory_is_still_enqueued():
    assert should_enqueue("build.py", table=TABLE) == {"knowledge", "integration"}
    assert should_enqueue("pkg/venv.py", table=TABLE) == {"knowledge", "integration"}


def test_a_directory_whose_name_only_contains_a_skip_word_is_walked():
    assert not dir_is_excluded("rebuild/tools")
    assert not dir_is_excluded("my_venv_helpers")


def test_exclude_globs_match_the_whole_relpath():
    assert should_enqueue("generated/api.py", ["generated/*"], TABLE) == set()
    assert should_enqueue("src/generated.py", ["generated/*"], TABLE) != set()


def test_exclude_globs_match_any_single_component():
    assert should_enqueue("a/b/snapshots/c.py", ["snap*"], TABLE) == set()
    assert should_enqueue("a/test_x.py", ["test_*.py"], TABLE) == set()
    assert should_enqueue("a/x_test.py", ["test_*.py"], TABLE) == {"knowledge", "integration"}


def test_exclude_globs_prune_directories_while_walking():
    assert dir_is_excluded("vendor", ["vendor"])
    assert dir_is_excluded("src/vendor/deep", ["vendor"])
    assert not dir_is_excluded("src/vendored", ["vendor"])


def test_builtin_skip_directories_are_pruned_at_any_depth():
    assert dir_is_excluded("a/b/.git")
    assert dir_is_excluded("pkg/foo.egg-info")
    assert not dir_is_excluded("pkg/egg-info-notes")


def test_the_root_itself_is_never_excluded():
    assert not dir_is_excluded("", ["*"])
    assert should_enqueue("", table=TABLE) == set()


# --- routing ------------------------------------------------------------------------------
def test_an_entry_is_a_suffix_only_when_it_has_a_single_leading_dot():
    assert is_suffix_entry(".py")
    assert not is_suffix_entry(".env.example")
    assert not is_suffix_entry("pyproject.toml")
    assert not is_suffix_entry("requirements*.txt")


def test_suffix_entries_compare_with_the_last_suffix_only():
    assert route("pkg/mod.py", TABLE) == {"knowledge", "integration"}
    assert route("pkg/mod.pyc", TABLE) == set()
    assert route("pkg/mod.py.orig", TABLE) == set()
    assert route("pkg/.py", TABLE) == set()  # a dotfile has no suffix


def test_other_entries_are_basename_globs():
    assert route("pyproject.toml", TABLE) == {"integration"}
    assert route("sub/pyproject.toml", TABLE) == {"integration"}
    assert route("requirements-dev.txt", TABLE) == {"integration"}
    assert route("svc/.env.example", TABLE) == {"integration"}
    assert route("svc/.env", TABLE) == set()
    assert route("notpyproject.toml.bak", TABLE) == set()


def test_routing_is_case_sensitive():
    assert route("README.MD", TABLE) == set()


def test_the_live_table_routes_python_files_to_the_knowledge_detector():
    assert names.KNOWLEDGE in should_enqueue("pkg/mod.py")
    assert should_enqueue("pkg/image.png") == set()


# --- root names and paths ---------------------------------------------------------------------
def test_a_root_is_named_after_its_directory():
    assert root_name("/home/kloros/src/kloros") == "kloros"
    assert root_name("/srv/my-app_2.0/") == "my-app_2.0"


def test_root_names_replace_characters_outside_the_allowed_set():
    assert root_name("/srv/my app:ü") == "my_app__"
    assert root_name("/") == "root"
    assert len(root_name("/x/" + "a" * 300)) == 128


def test_relative_paths_stay_inside_their_root():
    assert relative("/srv/app", "/srv/app/pkg/mod.py") == "pkg/mod.py"
    assert relative("/srv/app", "/srv/app") is None
    assert relative("/srv/app", "/srv/apple/mod.py") is None
    assert relative("/srv/app", "/srv/app/a\\b.py") is None


# --- event translation ----------------------------------------------------------------------
def test_file_events_become_changes_or_deletions():
    for kind in ("created", "modified", "closed", "attrib"):
        assert event_changes(kind, "/r/a.py", "", False) == [("/r/a.py", CHANGED)]
    assert event_changes("deleted", "/r/a.py", "", False) == [("/r/a.py", DELETED)]


def test_reads_and_directory_modifications_carry_no_change():
    assert event_changes("opened", "/r/a.py", "", False) == []
    assert event_changes("closed_no_write", "/r/a.py", "", False) == []
    assert event_changes("modified", "/r/pkg", "", True) == []


def test_a_move_deletes_its_source_and_changes_its_destination():
    assert event_changes("moved", "/r/a.tmp", "/r/a.py", False) == [
        ("/r/a.tmp", DELETED), ("/r/a.py", CHANGED)]
    assert event_changes("moved", "/r/old", "/r/new", True) == [
        ("/r/old", DIR_DELETED), ("/r/new", DIR_CHANGED)]


def test_directory_creation_and_deletion_are_directory_kinds():
    assert event_changes("created", "/r/pkg", "", True) == [("/r/pkg", DIR_CHANGED)]
    assert event_changes("deleted", "/r/pkg", "", True) == [("/r/pkg", DIR_DELETED)]


# --- debouncer ----------------------------------------------------------------------------------
def test_a_path_is_due_only_after_its_quiet_window():
    d = Debouncer(quiet=0.05)
    d.feed("a.py", "created", now=10.0)
    assert d.due(10.04) == []
    assert d.due(10.05) == [("a.py", CHANGED)]
    assert d.due(10.2) == []


def test_each_event_restarts_the_quiet_window():
    d = Debouncer(quiet=0.05)
    for t in (0.0, 0.03, 0.06, 0.09):
        d.feed("a.py", "modified", now=t)
    assert d.due(0.13) == []
    assert d.due(0.14) == [("a.py", CHANGED)]


def test_created_then_modified_is_one_change():
    d = Debouncer(quiet=0.05)
    d.feed("a.py", "created", 0.0)
    d.feed("a.py", "modified", 0.01)
    assert d.due(1.0) == [("a.py", CHANGED)]


def test_changed_then_deleted_is_a_deletion():
    d = Debouncer(quiet=0.05)
    d.feed("a.py", CHANGED, 0.0)
    d.feed("a.py", DELETED, 0.01)
    assert d.due(1.0) == [("a.py", DELETED)]


def test_deleted_then_created_is_a_change():
    d = Debouncer(quiet=0.05)
    d.feed("a.py", DELETED, 0.0)
    d.feed("a.py", "created", 0.01)
    assert d.due(1.0) == [("a.py", CHANGED)]


def test_paths_are_debounced_independently_and_in_arrival_order():
    d = Debouncer(quiet=0.05)
    d.feed("b.py", CHANGED, 0.0)
    d.feed("a.py", CHANGED, 0.01)
    d.feed("c.py", CHANGED, 0.08)
    assert d.due(0.1) == [("b.py", CHANGED), ("a.py", CHANGED)]
    assert len(d) == 1


def test_a_path_written_without_pause_is_still_due_after_the_maximum_delay():
    d = Debouncer(quiet=0.05, max_delay=1.0)
    t = 0.0
    while t < 1.0:
        d.feed("log.md", CHANGED, t)
        assert d.due(t) == []
        t += 0.01
    d.feed("log.md", CHANGED, 1.0)
    assert d.due(1.0) == [("log.md", CHANGED)]


def test_next_in_says_how_long_until_the_next_path_is_due():
    d = Debouncer(quiet=0.05)
    assert d.next_in(0.0) is None
    d.feed("a.py", CHANGED, 1.0)
    assert d.next_in(1.02) == pytest.approx(0.03)
    assert d.next_in(2.0) == 0.0


def test_flush_returns_everything_waiting():
    d = Debouncer(quiet=10)
    d.feed("a.py", CHANGED, 0.0)
    d.feed("b.py", DELETED, 0.0)
    assert d.flush() == [("a.py", CHANGED), ("b.py", DELETED)]
    assert len(d) == 0


# --- pending changes and backoff ---------------------------------------------------------------
def test_pending_changes_coalesce_per_path():
    p = PendingChanges(limit=10)
    p.add("a.py", CHANGED)
    p.add("a.py", DELETED)
    p.add("b.py", CHANGED)
    assert p.take(10) == [("a.py", DELETED), ("b.py", CHANGED)]
    assert len(p) == 0


def test_pending_changes_past_the_limit_set_overflow_instead_of_growing():
    p = PendingChanges(limit=2)
    for name in ("a.py", "b.py", "c.py"):
        p.add(name, CHANGED)
    assert len(p) == 2
    assert p.overflow
    p.add("a.py", DELETED)  # a path already held is still updated
    assert p.take(1) == [("a.py", DELETED)]


def test_restored_changes_do_not_override_newer_ones():
    p = PendingChanges(limit=10)
    batch = [("a.py", CHANGED), ("b.py", CHANGED)]
    p.add("a.py", DELETED)  # arrived while the batch was being sent
    p.restore(batch)
    assert dict(p.take(10)) == {"a.py": DELETED, "b.py": CHANGED}


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_five_seconds():
    b = Backoff()
    assert [b.next() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    b.reset()
    assert b.next() == 0.1


# --- seen entries and reconciliation -------------------------------------------------------------
def test_seen_entries_round_trip():
    entry = SeenEntry("ab" * 32, 1_700_000_000_123_456_789, 42)
    assert SeenEntry.parse(entry.format()) == entry
    assert SeenEntry.parse(entry.format().encode()) == entry
    assert SeenEntry.parse(SeenEntry(None, 5, 9).format()) == SeenEntry(None, 5, 9)
    assert SeenEntry.parse(None) is None


def test_a_malformed_seen_value_matches_nothing():
    assert SeenEntry.parse("garbage").stat == (-1, -1)


def test_decide_sends_new_and_changed_content_only():
    new = SeenEntry("aa" * 32, 2, 10)
    assert decide(None, new) == SEND
    assert decide(SeenEntry("bb" * 32, 2, 10), new) == SEND
    assert decide(SeenEntry("aa" * 32, 1, 10), new) == RESTAT
    assert decide(new, new) == SAME


def test_decide_judges_a_file_too_large_to_read_by_its_stat():
    large = SeenEntry(None, 2, 10_000_000)
    assert decide(None, large) == SEND
    assert decide(SeenEntry(None, 1, 10_000_000), large) == SEND
    assert decide(large, large) == SAME


def test_reconcile_plan_checks_new_and_restated_files_and_deletes_gone_ones():
    walked = {"same.py": (1, 10), "touched.py": (2, 10), "new.py": (1, 1)}
    seen = {"same.py": "x 1 10", "touched.py": "y 1 10", "gone.py": "z 1 1"}
    assert reconcile_plan(walked, seen) == (["new.py", "touched.py"], ["gone.py"])


def test_inotify_advice_names_the_sysctl_to_raise():
    assert "fs.inotify.max_user_watches" in inotify_advice(errno.ENOSPC, "limit reached")
    assert "fs.inotify.max_user_instances" in inotify_advice(errno.EMFILE, "limit reached")
    assert inotify_advice(errno.EACCES, "denied") is None


def test_names_that_are_not_utf8_are_never_enqueued():
    undecodable = b"caf\xe9.py".decode("utf-8", "surrogateescape")
    assert should_enqueue(undecodable) == set()
    assert should_enqueue(f"{undecodable[:-3]}/x.py") == set()
    assert should_enqueue("café.py") != set()
