"""The owner of a missing module's question (its first needer in path order) found from
the index's first holders only: the same question, evidence and count as from every
needer, when the owner goes, and when a smaller path comes; in memory and in Redis."""

from __future__ import annotations

import pytest

from kloros_tasks import names
from kloros_tasks.detectors.capability.detector import CapabilityDetector
from kloros_tasks.detectors.capability.target import Environment
from kloros_tasks.state.index import MemoryIndex, RedisIndex

ENV = Environment(modules={"redis"}, stdlib={"os", "sys", "json"},
                  distributions={"redis": ["redis"]}, installed={"redis"})
NEEDERS = [f"app/m{i:02d}.py" for i in range(25)]
IMPORT = "import os\nimport asgiref.sync\n"


@pytest.fixture(params=["memory", "redis"])
def index(request):
    if request.param == "memory":
        return MemoryIndex()
    return RedisIndex(request.getfixturevalue("r"), names.CAPABILITY, "repo")


def put(detector, index, path: str, text: str | None) -> set[str]:
    """Store ``path`` (None: delete it); the other files ``affected`` names."""
    facts = None if text is None else detector.extract(path, text)
    return detector.affected(path, index.update(path, facts), index)


def missing(detector, index) -> dict[str, object]:
    """owner -> its missing_module question about asgiref."""
    return {q.owner: q for p in index.paths() for q in detector.evaluate(p, index)
            if q.rule == "missing_module"}


def test_the_owner_lists_the_first_needers_and_counts_the_rest(index):
    detector = CapabilityDetector(ENV)
    for path in reversed(NEEDERS):
        put(detector, index, path, IMPORT)
    (owner, question), = missing(detector, index).items()
    assert owner == "app/m00.py"
    assert question.question.startswith("app/m00.py and 24 other modules import asgiref,")
    # As if every needer were listed and the list then cut at ten entries.
    assert question.evidence == ("app/m00.py:2 import asgiref.sync",
                                 *(f"app/m{i:02d}.py imports asgiref too" for i in range(1, 10)),
                                 "... and 15 more")


def test_the_question_moves_when_its_owner_goes_and_when_a_smaller_path_comes(index):
    detector = CapabilityDetector(ENV)
    for path in NEEDERS:
        put(detector, index, path, IMPORT)

    # The owner's file is deleted: the next needer is re-evaluated and owns it.
    assert put(detector, index, "app/m00.py", None) == {"app/m01.py"}
    (owner, question), = missing(detector, index).items()
    assert (owner, question.subject) == ("app/m01.py", "app/m01.py:asgiref")
    assert question.question.startswith("app/m01.py and 23 other modules")

    # The owner stops needing the name: the same.
    assert put(detector, index, "app/m01.py", "import os\n") == {"app/m02.py"}
    assert list(missing(detector, index)) == ["app/m02.py"]

    # A smaller path needs it: the old owner is re-evaluated and loses it.
    assert "app/m02.py" in put(detector, index, "app/a.py", IMPORT)
    (owner, question), = missing(detector, index).items()
    assert owner == "app/a.py"
    assert question.question.startswith("app/a.py and 23 other modules")
    assert question.evidence[1] == "app/m02.py imports asgiref too"


def test_a_standard_library_name_has_no_owner_to_find(index):
    detector = CapabilityDetector(ENV)
    for path in NEEDERS[:3]:
        put(detector, index, path, "import json\n")
    # json is needed by all three, but never missing: nothing else changes.
    assert put(detector, index, "app/m00.py", None) == set()
