"""docs/architecture.md says what holds under each fault and names the test that shows
it: every test it names exists, and what it says about redelivery is what the settings
make true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kloros_tasks.settings import DEFAULT_VISIBILITY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def section(title: str) -> str:
    start = ARCHITECTURE.index(f"## {title}\n")
    end = ARCHITECTURE.find("\n## ", start + 1)
    return ARCHITECTURE[start:end if end != -1 else None]


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_guarantees_table_names_exists():
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", section("Guarantees under faults"))
    assert len(named) >= 10
    missing = [f"{file}::{name}" for file, name in named
               if name not in defined_tests(ROOT / file)]
    assert missing == []


def test_the_document_gives_the_redelivery_delay_the_settings_give():
    delivery = " ".join(section("Delivery and limits (Celery on Redis)").split())  # lines joined
    assert f"only after the visibility timeout, {DEFAULT_VISIBILITY_TIMEOUT} s" in delivery
    # A dead worker's tasks do not come back after a few seconds: Redis has no acks.
    assert "dead worker's unacknowledged tasks after 5 s" not in delivery
