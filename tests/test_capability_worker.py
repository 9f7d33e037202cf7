"""CapabilityDiscovery through a real prefork worker: a temp project's imports and
programs against this machine's real environment."""

from __future__ import annotations

import json
import socket
import venv

import pytest
from procs import wait_for
from test_worker import module_pipeline

from kloros_tasks import names

pytestmark = pytest.mark.integration

PYPROJECT = b"""[project]
name = "demo"
version = "1"
dependencies = ["redis>=5"]
"""
CODE = b'''"""Demo."""
import subprocess

import celery
import redis
import no_such_module_xyz

try:
    import another_missing_xyz
except ImportError:
    another_missing_xyz = None


def run():
    """Run things."""
    subprocess.run(["ls", "-l"])
    subprocess.run(["no-such-program-xyz", "--help"])
'''


@pytest.fixture(scope="module")
def pipe():
    yield from module_pipeline(names.CAPABILITY)


def subjects(envelopes) -> dict[str, set[str]]:
    """Rule -> hypotheses of the questions still open after these envelopes.  (A file
    analysed before the one it depends on may open a question that the next one
    resolves, e.g. "unused dependency" until the importing module arrives.)"""
    resolved = {e["facts"]["question_id"] for e in envelopes
                if e["signal"] == names.CHANNEL_RESOLVED}
    out: dict[str, set[str]] = {}
    for env in envelopes:
        if env["signal"] == names.CHANNEL[names.CAPABILITY] \
                and env["facts"]["question_id"] not in resolved:
            out.setdefault(env["facts"]["metadata"]["rule"], set()).add(env["facts"]["hypothesis"])
    return out


def test_a_projects_missing_capabilities_are_asked_about_and_fixes_resolve_them(pipe):
    root = pipe.new_root()
    pipe.change(root, "pyproject.toml", PYPROJECT)
    pipe.change(root, "demo/app.py", CODE)
    wait_for(lambda: pipe.drained() and not pipe.r.exists(names.deferred(names.CAPABILITY, root)),
             60, message="both files analysed and judged")
    envelopes = pipe.envelopes(root)
    found = subjects(envelopes)
    hypotheses = " ".join(h for hs in found.values() for h in hs)
    assert "no_such_module_xyz" in hypotheses and "no-such-program-xyz" in hypotheses
    assert "celery" in " ".join(found.get("undeclared_dependency", ()))
    assert "redis" not in " ".join(found.get("undeclared_dependency", ()))
    assert "missing_executable" in found and "ls" not in " ".join(found["missing_executable"])
    # The code handles the guarded import's absence: nothing to ask.
    assert "another_missing_xyz" not in hypotheses

    # Declaring celery resolves the undeclared-dependency question without touching app.py.
    pipe.change(root, "pyproject.toml", PYPROJECT.replace(b'["redis>=5"]',
                                                          b'["redis>=5", "celery"]'))
    count = len(envelopes)
    later = pipe.wait_envelopes(root, count + 1, timeout=60)[count:]
    assert any(e["signal"] == names.CHANNEL_RESOLVED
               and e["facts"]["metadata"]["rule"] == "undeclared_dependency" for e in later)


def test_a_virtual_environment_in_a_local_root_is_the_workers_default_target(pipe):
    root = pipe.new_root()
    tree = pipe.directory / root
    venv.create(tree / ".venv", with_pip=False)  # a clean interpreter: no redis in it
    pipe.r.hset(names.ROOTS, root, json.dumps({"path": str(tree), "host": socket.gethostname()}))
    pipe.change(root, "pyproject.toml", PYPROJECT)
    pipe.change(root, "demo/app.py", b"import redis\n")
    wait_for(lambda: pipe.drained() and not pipe.r.exists(names.deferred(names.CAPABILITY, root)),
             60, message="both files analysed and judged")
    found = subjects(pipe.envelopes(root))
    # Judged against the root's .venv, not the worker's own (which has redis).
    assert found.get("target_environment") == {"TARGET_ENVIRONMENT_INCOMPLETE: 1/1"}

