"""IntegrationMonitor through a real prefork worker: cross-file questions open and resolve
as files arrive, change and go."""

from __future__ import annotations

import pytest
from test_worker import module_pipeline

from kloros_tasks import names

pytestmark = pytest.mark.integration

PUBLISHER = b'''"""Publishes progress."""


class Reporter:
    """Sends progress on the bus."""

    def __init__(self, bus):
        self.bus = bus

    def report(self):
        """Publish one progress event."""
        self.bus.publish("jobs.progress", {"done": 1})
'''
SUBSCRIBER = b'''"""Listens for progress."""


class Listener:
    """Receives progress from the bus."""

    def __init__(self, bus):
        self.bus = bus
        self.bus.subscribe("jobs.")
'''
CORE = b'''"""Core."""


def run():
    """Run."""
    return 1
'''
USER = b'''"""Uses the core."""
from pkg.core import run

VALUE = run()
'''


@pytest.fixture(scope="module")
def pipe():
    yield from module_pipeline(names.INTEGRATION)


def rule_events(envelopes) -> list[tuple[str, str]]:
    return [("resolved" if e["signal"] == names.CHANNEL_RESOLVED else "open",
             e["facts"]["metadata"]["rule"]) for e in envelopes]


def test_a_topic_published_with_no_subscriber_is_asked_about_until_one_appears(pipe):
    root = pipe.new_root()
    pipe.change(root, "reporter.py", PUBLISHER)
    (opened,) = pipe.wait_envelopes(root, 1)
    assert opened["facts"]["metadata"]["rule"] == "orphaned_channel"
    assert "jobs.progress" in opened["facts"]["hypothesis"]
    pipe.change(root, "listener.py", SUBSCRIBER)  # subscribes by prefix
    _, resolved = pipe.wait_envelopes(root, 2)
    assert resolved["signal"] == names.CHANNEL_RESOLVED
    assert resolved["facts"]["question_id"] == opened["facts"]["question_id"]


def test_removing_an_imported_definition_breaks_its_importer_and_restoring_it_resolves(pipe):
    root = pipe.new_root()
    pipe.change(root, "pkg/__init__.py", b'"""Package."""\n')
    pipe.change(root, "pkg/core.py", CORE)
    pipe.change(root, "app.py", USER)
    pipe.change(root, "pkg/core.py", CORE.replace(b"def run", b"def walk"))
    (opened,) = pipe.wait_envelopes(root, 1)
    assert opened["facts"]["metadata"]["rule"] == "broken_import"
    assert opened["facts"]["metadata"]["paths"] == ["app.py"]
    pipe.change(root, "pkg/core.py", CORE)
    envelopes = pipe.wait_envelopes(root, 2)
    assert rule_events(envelopes) == [("open", "broken_import"), ("resolved", "broken_import")]
