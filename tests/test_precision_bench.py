"""The precision benchmark's own logic: labels, sampling, mutations (pure, in process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import mutations  # noqa: E402
import precision  # noqa: E402
from mutations import Edit, Expect, Mutation, MutationError  # noqa: E402

from kloros_tasks import names, settings  # noqa: E402
from kloros_tasks.cli.scan import scan_root  # noqa: E402
from kloros_tasks.work.registry import scan_detector  # noqa: E402


def record(qid, rule="stale_doc", owner="docs/a.md", evidence=()):
    return {"question_id": qid, "rule": rule, "owner": owner, "hypothesis": f"H {qid}",
            "evidence": list(evidence)}


def test_precision_counts_only_labels_that_match_a_current_question():
    questions = [record("q1"), record("q2"), record("q3"), record("q4", rule="unindexed_doc")]
    labels = {"q1": {"verdict": "tp"}, "q2": {"verdict": "fp"}, "gone": {"verdict": "fp"},
              "q4": {"verdict": "arguable"}}
    rows = {r["rule"]: r for r in precision.rule_rows(questions, labels, files=2000)}
    assert rows["stale_doc"]["count"] == 3
    assert rows["stale_doc"]["per_1000"] == 1.5
    assert (rows["stale_doc"]["n"], rows["stale_doc"]["precision"]) == (2, 0.5)
    assert rows["stale_doc"]["unlabelled"] == ["q3"]
    assert rows["unindexed_doc"]["precision"] == 0.0  # arguable counts against precision


def test_sampling_is_seeded_and_independent_of_question_order():
    questions = [record(f"q{i}") for i in range(100)]
    first = precision.draw(questions, "stale_doc", 30, 14, "django")
    again = precision.draw(list(reversed(questions)), "stale_doc", 30, 14, "django")
    assert [q["question_id"] for q in first] == [q["question_id"] for q in again]
    assert len({q["question_id"] for q in first}) == 30
    other = precision.draw(questions, "stale_doc", 30, 15, "django")
    assert first != other


def test_a_label_with_an_unknown_verdict_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "LABELS", tmp_path)
    (tmp_path / "c.jsonl").write_text('{"question_id": "q", "rule": "r", "verdict": "maybe"}\n')
    with pytest.raises(SystemExit, match="c.jsonl:1"):
        precision.read_labels("c")


def test_strip_docstrings_keeps_the_module_valid():
    source = '"""Mod."""\n\ndef f():\n    """Doc."""\n\n\nclass C:\n    """Doc."""\n    x = 1\n'
    stripped = mutations.strip_docstrings(source)
    assert '"""' not in stripped
    compile(stripped, "m.py", "exec")


def test_an_edit_that_does_not_apply_says_why(tmp_path):
    (tmp_path / "a.md").write_text("text\n")
    with pytest.raises(MutationError, match="not found"):
        mutations.apply_edit(tmp_path, Edit("replace", "a.md", old="absent", new="x"))
    with pytest.raises(MutationError, match="no such file"):
        mutations.apply_edit(tmp_path, Edit("append", "b.md", text="x"))


def test_detected_needs_a_matching_question_that_was_not_there_before():
    before = [record("q1", evidence=["docs/a.md:3 pkg.old"])]
    grown = [record("q1", evidence=["docs/a.md:3 pkg.old", "docs/a.md:9 pkg.gone"])]
    assert mutations.detected(before, grown, Expect("stale_doc", text="pkg.gone"))
    assert not mutations.detected(before, before, Expect("stale_doc", text="pkg.old"))
    assert not mutations.detected(before, grown, Expect("unindexed_doc"))
    assert mutations.detected([], before, Expect("stale_doc", owner="docs/a.md"))


def test_run_scans_a_mutated_copy_against_its_own_baseline(tmp_path):
    corpus = tmp_path / "tiny"
    (corpus / "pkg").mkdir(parents=True)
    (corpus / "pkg" / "__init__.py").write_text('"""Pkg."""\n')
    (corpus / "pkg" / "mod.py").write_text('"""Mod."""\n\nclass Widget:\n    """W."""\n')
    (corpus / "README.md").write_text("Use `pkg.mod.Widget`, see [guide](guide.md).\n")
    (corpus / "guide.md").write_text("# Guide\n")
    cfg = settings.from_env({})

    def scan(_corpus, detector, root):
        found = scan_root(root, scan_detector(detector, cfg), cfg, warn=lambda m: None)
        return [precision.question_record(q) for q in found]

    K = names.KNOWLEDGE
    cases = [
        Mutation("renamed", "tiny", K, (Edit("replace", "pkg/mod.py", old="class Widget",
                                             new="class Gadget"),),
                 Expect("stale_doc", owner="README.md", text="pkg.mod.Widget")),
        Mutation("unlinked", "tiny", K, (Edit("replace", "README.md", old="(guide.md)",
                                              new=""),),
                 Expect("unindexed_doc", owner="guide.md")),
        Mutation("harmless", "tiny", K, (Edit("append", "guide.md", text="More.\n"),),
                 Expect("unindexed_doc", owner="guide.md")),
        Mutation("broken", "tiny", K, (Edit("delete", "nope.md"),), Expect("stale_doc")),
    ]
    outcome = mutations.run(cases, scan, source_of=lambda _c: corpus)
    assert outcome["renamed"] is True
    assert outcome["unlinked"] is True
    assert outcome["harmless"] is False
    assert str(outcome["broken"]).startswith("not applied")
    assert (corpus / "pkg" / "mod.py").read_text().count("Widget") == 1  # source untouched


def test_every_declared_mutation_names_a_known_corpus_and_rule():
    from kloros_tasks.detectors.knowledge.detector import KnowledgeDetector  # noqa: PLC0415

    for m in mutations.MUTATIONS:
        assert mutations.corpus_name(m.corpus) in precision.CORPORA
        assert m.detector in precision.DETECTORS
        if m.detector == KnowledgeDetector.name:
            assert m.expect.rule in ("missing_docstrings", "unindexed_doc", "stale_doc")
