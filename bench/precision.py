"""Precision of every file detector's rules on pinned real trees.

    python bench/precision.py scan   [--corpus C]... [--detector D]... [--target-env] [--sdists DIR]
    python bench/precision.py report [--corpus C]... [--detector D]... [--rescan] [--unlabelled N]
    python bench/precision.py sample --corpus C [--detector D]... [--rule R]... [--n 30] [--seed 14]
    python bench/precision.py show    --corpus C QUESTION_ID...

All subcommands take ``--cache DIR`` (default ``~/.cache/kloros-tasks-bench``).
``scan`` fetches each corpus (see _corpora.py) into the cache, runs every file
detector over it in process with the same machinery as ``kloros-tasks scan``
(``kloros_tasks.cli.scan.scan_root``: index every file, then evaluate every file) and
stores the questions under the cache (``results/<corpus>.<detector>.jsonl``).
``report`` prints, per corpus and rule, the number of questions, questions per 1,000
files the detector analysed, and precision = tp / (tp + fp + arguable) from the
labels that still match a current question; it lists current questions with no
label, so a change that creates new questions shows up as unlabelled.  ``sample``
draws questions to label: each rule's questions ranked by a seeded hash of their id,
the first ``--n`` of them (labelled ones marked), printed with their evidence.

Labels live in ``bench/labels/<corpus>.jsonl``, one judgement per line:
``{"question_id": ..., "rule": ..., "verdict": "tp"|"fp"|"arguable", "reason": ...}``.
Judge strictly: would the maintainer act on the question after reading the code?
If not, it is ``fp``.

``--target-env`` gives CapabilityDiscovery a matched target environment: a venv,
created once under the cache, with the corpus's own requirements installed from the
package index, passed as KLOROS_TARGET_PYTHON.  Without it the capability detector
judges against this interpreter's environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpora import (  # noqa: E402
    CORPORA,
    Corpus,
    cache_dir,
    fetch,
    set_cache_dir,
    target_python,
)

from kloros_tasks import names, settings  # noqa: E402
from kloros_tasks.cli.scan import scan_root  # noqa: E402
from kloros_tasks.questions import Question  # noqa: E402
from kloros_tasks.watch import filters  # noqa: E402
from kloros_tasks.watch.tree import walk_tree  # noqa: E402
from kloros_tasks.work.registry import scan_detector  # noqa: E402

DETECTORS = tuple(names.FILE_DETECTOR_SUFFIXES)
LABELS = Path(__file__).resolve().parent / "labels"
VERDICTS = ("tp", "fp", "arguable")


def corpus_settings(corpus: Corpus, target_env: bool) -> settings.Settings:
    env = dict(os.environ)
    if target_env:
        env["KLOROS_TARGET_PYTHON"] = target_python(corpus)
    base = settings.from_env(env)
    return replace(base, exclude=base.exclude + corpus.exclude)


def analysed_files(root: Path, detector: str, cfg: settings.Settings) -> int:
    """How many files of the tree the detector is routed (the per-1,000 denominator)."""
    return sum(1 for rel, _ in walk_tree(str(root), cfg.exclude)
               if detector in filters.should_enqueue(rel, cfg.exclude))


def question_record(q: Question) -> dict:
    return {"question_id": q.id, "rule": q.rule, "owner": q.owner, "severity": q.severity,
            "hypothesis": q.hypothesis, "question": q.question, "evidence": list(q.evidence),
            "suggestion": q.suggestion}


def results_path(corpus: str, detector: str) -> Path:
    return cache_dir() / "results" / f"{corpus}.{detector}.jsonl"


def scan_corpus(corpus: Corpus, detector: str, *, target_env: bool = False,
                sdists: Path | None = None, root: Path | None = None) -> dict:
    """Scan one corpus (or ``root``, a copy of it) with one detector; the result is
    {"files": N, "seconds": S, "not_analysed": [...], "questions": [records]}."""
    root = root or fetch(corpus, sdists)
    cfg = corpus_settings(corpus, target_env and detector == names.CAPABILITY)
    warnings: list[str] = []
    started = time.perf_counter()
    found = scan_root(root, scan_detector(detector, cfg, root), cfg, warn=warnings.append)
    return {"files": analysed_files(root, detector, cfg),
            "seconds": round(time.perf_counter() - started, 1),
            "not_analysed": warnings, "questions": [question_record(q) for q in found]}


def store(corpus: str, detector: str, result: dict) -> None:
    path = results_path(corpus, detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in result.items() if k != "questions"}
    lines = [json.dumps(head)] + [json.dumps(q) for q in result["questions"]]
    path.write_text("\n".join(lines) + "\n")


def load(corpus: str, detector: str) -> dict | None:
    path = results_path(corpus, detector)
    if not path.exists():
        return None
    head, *rest = path.read_text().splitlines()
    return {**json.loads(head), "questions": [json.loads(line) for line in rest]}


def results(corpus: Corpus, detector: str, args) -> dict:
    found = None if getattr(args, "rescan", False) else load(corpus.name, detector)
    if found is None:
        found = scan_corpus(corpus, detector, target_env=getattr(args, "target_env", False),
                            sdists=getattr(args, "sdists", None))
        store(corpus.name, detector, found)
    return found


def read_labels(corpus: str) -> dict[str, dict]:
    """question_id -> label; a later line for the same id replaces an earlier one."""
    path = LABELS / f"{corpus}.jsonl"
    out: dict[str, dict] = {}
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            label = json.loads(line)
            if label.get("verdict") not in VERDICTS:
                raise SystemExit(f"{path}:{n}: verdict must be one of {VERDICTS}")
            out[label["question_id"]] = label
    return out


def rule_rows(questions: list[dict], labels: dict[str, dict], files: int) -> list[dict]:
    """Per rule: count, per-1,000, verdict counts of matching labels, precision, unlabelled."""
    by_rule: dict[str, list[dict]] = {}
    for q in questions:
        by_rule.setdefault(q["rule"], []).append(q)
    rows = []
    for rule, qs in sorted(by_rule.items()):
        verdicts = Counter(labels[q["question_id"]]["verdict"] for q in qs
                           if q["question_id"] in labels)
        judged = sum(verdicts.values())
        rows.append({
            "rule": rule, "count": len(qs),
            "per_1000": round(1000 * len(qs) / files, 1) if files else 0.0,
            "n": judged, **{v: verdicts[v] for v in VERDICTS},
            "precision": round(verdicts["tp"] / judged, 3) if judged else None,
            "unlabelled": sorted(q["question_id"] for q in qs if q["question_id"] not in labels),
        })
    return rows


def cmd_scan(args) -> None:
    for corpus in chosen_corpora(args):
        for detector in args.detector or DETECTORS:
            result = scan_corpus(corpus, detector, target_env=args.target_env, sdists=args.sdists)
            store(corpus.name, detector, result)
            print(f"{corpus.name} {detector}: {result['files']} files, "
                  f"{len(result['questions'])} questions, {result['seconds']} s, "
                  f"{len(result['not_analysed'])} not analysed")


def cmd_report(args) -> None:
    for corpus in chosen_corpora(args):
        labels = read_labels(corpus.name)
        print(f"\n## {corpus.name} ({corpus.requirement or 'standard library'})\n")
        print("| detector | rule | questions | per 1,000 files | labelled | tp | fp "
              "| arguable | precision |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        unlabelled: list[tuple[str, str]] = []
        for detector in args.detector or DETECTORS:
            found = results(corpus, detector, args)
            for row in rule_rows(found["questions"], labels, found["files"]):
                p = "-" if row["precision"] is None else f"{100 * row['precision']:.0f} %"
                print(f"| {detector} | {row['rule']} | {row['count']} | {row['per_1000']} "
                      f"| {row['n']} | {row['tp']} | {row['fp']} | {row['arguable']} | {p} |")
                unlabelled += [(row["rule"], qid) for qid in row["unlabelled"]]
        print(f"\n{len(unlabelled)} current questions have no label")
        for rule, qid in unlabelled[: args.unlabelled]:
            print(f"  {rule} {qid}")


def draw(questions: list[dict], rule: str, n: int, seed: int, corpus: str) -> list[dict]:
    """The ``n`` questions of the rule ranked first by a seeded hash of their id: each
    question's rank is its own, so a question that appears or goes does not reshuffle
    the others, and the labelled sample stays the sample."""

    def rank(q: dict) -> str:
        return hashlib.sha256(f"{seed}:{corpus}:{rule}:{q['question_id']}".encode()).hexdigest()

    return sorted((q for q in questions if q["rule"] == rule), key=rank)[:n]


def show(q: dict, label: dict | None) -> None:
    mark = f"[{label['verdict']}: {label['reason']}]" if label else "[unlabelled]"
    print(f"- {q['question_id']} {mark}\n    {q['hypothesis']}\n    {q['question']}")
    for item in q["evidence"][:6]:
        print(f"    {item}")


def cmd_sample(args) -> None:
    corpus = CORPORA[args.corpus]
    labels = read_labels(corpus.name)
    for detector in args.detector or DETECTORS:
        questions = results(corpus, detector, args)["questions"]
        for rule in args.rule or sorted({q["rule"] for q in questions}):
            picked = draw(questions, rule, args.n, args.seed, corpus.name)
            if picked:
                print(f"\n== {detector}.{rule}: {len(picked)} drawn")
            for q in picked:
                show(q, labels.get(q["question_id"]))


def cmd_show(args) -> None:
    labels = read_labels(args.corpus)
    for detector in DETECTORS:
        found = load(args.corpus, detector) or {"questions": []}
        for q in found["questions"]:
            if q["question_id"] in args.ids:
                show(q, labels.get(q["question_id"]))


def chosen_corpora(args) -> list[Corpus]:
    return [CORPORA[name] for name in (args.corpus or CORPORA)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("scan", cmd_scan), ("report", cmd_report), ("sample", cmd_sample),
                       ("show", cmd_show)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--corpus", action="append", choices=sorted(CORPORA),
                       required=name in ("sample", "show"))
        p.add_argument("--cache", type=Path, help="where corpora and results are kept "
                                                   "(default ~/.cache/kloros-tasks-bench)")
        if name == "show":
            p.add_argument("ids", nargs="+")
            continue
        p.add_argument("--detector", action="append", choices=DETECTORS)
        p.add_argument("--target-env", action="store_true")
        p.add_argument("--sdists", type=Path, help="take sdists from here when present")
        if name in ("report", "sample"):
            p.add_argument("--rescan", action="store_true", help="scan instead of reusing "
                                                                   "the stored results")
        if name == "report":
            p.add_argument("--unlabelled", type=int, default=20, help="how many to list")
        if name == "sample":
            p.add_argument("--rule", action="append")
            p.add_argument("--n", type=int, default=30)
            p.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    if args.cache is not None:
        set_cache_dir(args.cache)
    if args.command == "show":
        args.corpus = args.corpus[0]
    elif args.command == "sample":
        args.corpus = args.corpus[0]
    args.func(args)


if __name__ == "__main__":
    main()
