"""A batch task that claims its batch's Python files applies them for every file
detector its worker serves, parsing each once; the other detectors' tasks of the same
batch hand it back while the claim is held and find those files done afterwards
(work/claims.py).  On a real Redis, with the three real file detectors."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import Counter

import pytest
from procs import wait_for

from kloros_tasks import names
from kloros_tasks.detectors import _treecache
from kloros_tasks.detectors.capability.target import Environment
from kloros_tasks.routing import route
from kloros_tasks.settings import Settings
from kloros_tasks.state.index import facts_json
from kloros_tasks.state.publish import Publisher
from kloros_tasks.work import blobs, claims, deferral, engine
from kloros_tasks.work.analysis import Context
from kloros_tasks.work.batch import HANDED_OVER, handle_batch
from kloros_tasks.work.payload import Change, batch_json
from kloros_tasks.work.registry import build

DETECTORS = (names.CAPABILITY, names.INTEGRATION, names.KNOWLEDGE)
ENV = Environment(modules={"requests"}, stdlib={"os"}, distributions={"requests": ["requests"]},
                  installed={"requests"}, executables=set(), env_vars=set())


def tree(tag: str) -> dict[str, str]:
    """A small package (texts made unique by ``tag``, so no parse is served from an
    earlier test's cache), a README and a requirements file."""
    return {
        "pkg/__init__.py": f'"""The package {tag}."""\n',
        "pkg/core.py": f'"""Core {tag}."""\nimport os\nfrom pkg.util import gone\n\n\n'
                       'def run():\n    return os.environ["PKG_HOME"]\n',
        "pkg/util.py": f"# {tag}\ndef helper():\n    return 1\n",
        "README.md": f"# Pkg {tag}\n\nCall `pkg.core.run`.\n",
        "requirements.txt": "requests\n",
    }


@pytest.fixture
def detectors():
    settings = Settings()
    return {name: build(name, settings, ENV if name == names.CAPABILITY else None)
            for name in DETECTORS}


def context(r, detectors, claimant: str | None) -> Context:
    def companions(detector: str, root: str):
        return [(detectors[name], False) for name in DETECTORS if name != detector]

    return Context(r, Publisher(r, host="test"), 1 << 20,
                   companions=companions if claimant else None, claimant=claimant)


def shares(r, root: str, files: dict[str, str]) -> dict[str, dict]:
    """Each detector's share of one batch of ``files`` (cut once, as the watcher cuts
    it), with one blob reference per share, and the root registered."""
    r.hset(names.ROOTS, root, json.dumps({"path": "/nowhere", "host": "elsewhere"}))
    changes = []
    for path, text in files.items():
        sha = hashlib.sha256(text.encode()).hexdigest()
        blobs.store(r, sha, text.encode(), refs=0, ttl=600)
        changes.append(Change(root, path, "modified", sha, ts=1.0))
    out = {}
    for detector in DETECTORS:
        mine = [c for c in changes if detector in route(c.path)]
        blobs.take_many(r, [c.sha256 for c in mine])
        out[detector] = batch_json(root, mine)
    return out


def stored(r, detector: str, root: str) -> dict[str, dict]:
    out = {}
    for path, raw in r.hgetall(names.facts(detector, root)).items():
        out[path.decode()] = json.loads(facts_json(raw))
    return out


@pytest.fixture
def parses(monkeypatch):
    counted: Counter = Counter()
    real = _treecache._parse

    def counting(text, filename):
        counted[text] += 1
        return real(text, filename)

    monkeypatch.setattr(_treecache, "_parse", counting)
    return counted


def test_a_claim_is_held_by_one_task_again_on_its_redelivery_then_done(r):
    key = names.batch_claim("repo", "ab" * 16)
    nobody = frozenset()
    assert claims.claim(r, key, "task-1", 60) == (claims.OURS, nobody)
    assert claims.claim(r, key, "task-2", 60) == (claims.HELD, nobody)
    assert claims.claim(r, key, "task-1", 60) == (claims.OURS, nobody)  # redelivered
    claims.drop(r, key, "task-2")  # not the holder's: kept
    assert claims.claim(r, key, "task-2", 60) == (claims.HELD, nobody)
    claims.done(r, key, [names.KNOWLEDGE, names.CAPABILITY])
    assert claims.claim(r, key, "task-2", 60) == \
        (claims.DONE, {names.CAPABILITY, names.KNOWLEDGE})
    assert 0 < r.ttl(key) <= claims.CLAIM_DONE_TTL


def test_a_claim_dropped_or_expired_is_free_for_the_next_task(r):
    key = names.batch_claim("repo", "cd" * 16)
    assert claims.claim(r, key, "task-1", 60)[0] == claims.OURS
    claims.drop(r, key, "task-1")
    assert claims.claim(r, key, "task-2", 0.05)[0] == claims.OURS
    assert r.pttl(key) <= 50
    r.pexpire(key, 1)  # a killed claimant's claim outlives it by its TTL only
    wait_for(lambda: not r.exists(key), 5, message="the claim expired")
    assert claims.claim(r, key, "task-3", 60)[0] == claims.OURS


def test_every_detectors_share_of_a_batch_names_the_same_claim():
    files = tree("x")
    changes = [Change("repo", p, "modified", "0" * 64, ts=1.0) for p in files]
    digests = set()
    for detector in DETECTORS:
        share = claims.common([c for c in changes if detector in route(c.path)])
        assert [c.path for c in share] == ["pkg/__init__.py", "pkg/core.py", "pkg/util.py"]
        digests.add(claims.digest("repo", share))
    assert len(digests) == 1
    later = [Change(c.root, c.path, c.event, c.sha256, ts=2.0) for c in changes]
    assert claims.digest("repo", claims.common(later)) not in digests


def test_the_claimant_parses_each_python_file_once_for_every_detector(r, detectors, parses):
    tag = uuid.uuid4().hex
    files = tree(tag)
    alone = shares(r, "alone", files)
    for detector in DETECTORS:  # each detector for itself: what the claim must equal
        handle_batch(context(r, detectors, None), detectors[detector], alone[detector])
        for text in files.values():  # batches of a cold scan come far apart
            _treecache.forget_tree(text)
    assert parses[files["pkg/core.py"]] == 3
    parses.clear()

    batch = shares(r, "claimed", files)
    first = handle_batch(context(r, detectors, "task-k"), detectors[names.KNOWLEDGE],
                         batch[names.KNOWLEDGE])
    assert first == "5 analysed"
    assert {p: parses[files[p]] for p in files if p.endswith(".py")} == \
        {"pkg/__init__.py": 1, "pkg/core.py": 1, "pkg/util.py": 1}
    python = {p for p in files if p.endswith(".py")}
    for detector in DETECTORS:
        assert stored(r, detector, "claimed").keys() == \
            (stored(r, detector, "alone").keys() if detector == names.KNOWLEDGE else python)
    # The other detectors' tasks of the batch find the claim done and leave their
    # Python files out; only their own other files are analysed.
    parses.clear()
    capability = handle_batch(context(r, detectors, "task-c"), detectors[names.CAPABILITY],
                              batch[names.CAPABILITY])
    integration = handle_batch(context(r, detectors, "task-i"), detectors[names.INTEGRATION],
                               batch[names.INTEGRATION])
    assert capability == "2 analysed, 3 claimed" and integration == "3 claimed"
    assert not any(parses[files[p]] for p in files if p.endswith(".py"))
    for detector in DETECTORS:
        assert strip(stored(r, detector, "claimed")) == strip(stored(r, detector, "alone"))
    # Every reference the shares held is released, none twice.
    for text in files.values():
        assert not r.exists(names.blob_refs(hashlib.sha256(text.encode()).hexdigest()))


def strip(facts: dict[str, dict]) -> dict[str, dict]:
    """Facts without the stamps of when they were applied."""
    return {p: {**f, "data": {k: v for k, v in f.get("data", {}).items() if k != engine.STAMP}}
            for p, f in facts.items()}


def test_a_batch_whose_claim_another_task_holds_is_handed_back_untouched(r, detectors):
    files = tree(uuid.uuid4().hex)
    batch = shares(r, "held", files)
    share = claims.common(Change("held", e["path"], e["event"], e["sha256"], ts=e["ts"])
                          for e in batch[names.INTEGRATION]["changes"])
    key = names.batch_claim("held", claims.digest("held", share))
    assert claims.claim(r, key, "someone-else", 60)[0] == claims.OURS
    outcome = handle_batch(context(r, detectors, "task-i"), detectors[names.INTEGRATION],
                           batch[names.INTEGRATION])
    assert outcome == HANDED_OVER
    assert not r.exists(names.facts(names.INTEGRATION, "held"))
    # Its blob references travel with the batch sent again.
    sha = hashlib.sha256(files["pkg/core.py"].encode()).hexdigest()
    assert int(r.get(names.blob_refs(sha))) == 3


def test_a_claimant_that_fails_gives_its_claim_up(r, detectors, monkeypatch):
    files = tree(uuid.uuid4().hex)
    batch = shares(r, "failing", files)
    capability = detectors[names.CAPABILITY]

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in a detector")

    monkeypatch.setattr(capability, "extract", broken)
    with pytest.raises(RuntimeError):
        handle_batch(context(r, detectors, "task-k"), detectors[names.KNOWLEDGE],
                     batch[names.KNOWLEDGE])
    assert not list(r.scan_iter(names.batch_claim("failing", "*")))
    assert not r.exists(names.claiming("failing"))  # its burst is over
    monkeypatch.undo()
    # The next task of the batch claims it and applies it for all.
    assert handle_batch(context(r, detectors, "task-i"), detectors[names.INTEGRATION],
                        batch[names.INTEGRATION]) == "3 analysed"
    assert stored(r, names.CAPABILITY, "failing").keys() >= {"pkg/core.py", "pkg/util.py"}


def test_a_worker_serving_one_file_detector_claims_nothing(r, detectors):
    claims.serve([names.KNOWLEDGE, names.EXPLORATION])
    assert not claims.sharing()
    claims.serve([names.KNOWLEDGE, names.INTEGRATION, names.EXPLORATION])
    assert claims.sharing() and claims.others(names.KNOWLEDGE) == [names.INTEGRATION]
    claims.serve([])
    batch = shares(r, "single", tree(uuid.uuid4().hex))
    assert handle_batch(context(r, detectors, None), detectors[names.KNOWLEDGE],
                        batch[names.KNOWLEDGE]) == "5 analysed"
    assert not list(r.scan_iter(names.batch_claim("single", "*")))
    assert not r.exists(names.facts(names.INTEGRATION, "single"))


def test_a_detector_the_claimant_did_not_serve_applies_the_files_itself(r, detectors):
    # The claimant's worker serves knowledge and integration; capability's worker is
    # another, which finds the claim done without it.
    files = tree(uuid.uuid4().hex)
    batch = shares(r, "apart", files)
    two = Context(r, Publisher(r, host="test"), 1 << 20, claimant="task-k",
                  companions=lambda detector, root: [(detectors[names.INTEGRATION], False)])
    assert handle_batch(two, detectors[names.KNOWLEDGE], batch[names.KNOWLEDGE]) == \
        "5 analysed"
    assert handle_batch(context(r, detectors, "task-i"), detectors[names.INTEGRATION],
                        batch[names.INTEGRATION]) == "3 claimed"
    assert handle_batch(context(r, detectors, "task-c"), detectors[names.CAPABILITY],
                        batch[names.CAPABILITY]) == "5 analysed"
    assert stored(r, names.CAPABILITY, "apart").keys() == set(files)


def test_a_claimant_applies_first_the_shares_whose_lock_is_free(r, detectors):
    batch = shares(r, "busy", tree(uuid.uuid4().hex))
    ctx = context(r, detectors, "task-k")
    held = deferral.root_lock(ctx, names.KNOWLEDGE, "busy")  # another task applies
    assert held.acquire(blocking=False)
    done: list[str] = []
    thread = threading.Thread(target=lambda: done.append(
        handle_batch(ctx, detectors[names.KNOWLEDGE], batch[names.KNOWLEDGE])))
    thread.start()
    try:
        wait_for(lambda: all(r.hlen(names.facts(d, "busy")) == 3
                             for d in (names.CAPABILITY, names.INTEGRATION)), 30,
                 message="the other detectors' shares applied while knowledge's lock is held")
        assert not r.exists(names.facts(names.KNOWLEDGE, "busy"))
    finally:
        held.release()
        thread.join(60)
    assert done == ["5 analysed"]


def test_a_claimant_waits_for_earlier_batches_package_markers_only(r):
    first, second = names.batch_claim("lay", "01" * 16), names.batch_claim("lay", "02" * 16)
    assert claims.claim(r, first, "task-1", 60)[0] == claims.OURS
    claims.hold_layout(r, "lay", "task-1", first, 10.0, 60)
    # A batch sent before the markers' does not wait for them, nor does their own
    # (waiting would last the whole 10 s: nobody releases them meanwhile).
    assert claims.await_layout(r, "lay", "task-0", 9.0, 10) < 10
    assert claims.await_layout(r, "lay", "task-1", 10.0, 10) < 10
    # A later batch waits until the markers are applied.
    released = threading.Timer(0.3, claims.release_layout, (r, "lay", "task-1", first))
    released.start()
    assert claims.await_layout(r, "lay", "task-2", 11.0, 30) >= 0.25
    released.join()
    # A claimant killed while it held markers is not waited for once its claim is gone.
    assert claims.claim(r, second, "task-3", 60)[0] == claims.OURS
    claims.hold_layout(r, "lay", "task-3", second, 12.0, 60)
    r.delete(second)
    assert claims.await_layout(r, "lay", "task-4", 13.0, 10) < 10
    assert not r.zcard(names.layout_order("lay"))
