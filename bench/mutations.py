"""Recall on real trees: inject one break into a copy of a corpus, scan, and check
that the question it deserves appears.

    python bench/mutations.py [--corpus C]... [--detector D]... [--rule R]... [--only NAME]...
                              [--cache DIR]
    python bench/mutations.py --list

Each mutation names a corpus, the edits that make one break, and what must be asked
afterwards: a question of ``rule`` (owned by ``owner`` when given, with ``text`` in
its hypothesis or evidence when given) that was not asked before the edits.  The
unmutated corpus is scanned once per (corpus, detector) in the same run, in a copy at
the same depth and name, so ids compare.  Recall per rule = detected / mutations.

To add mutations for a rule, append ``Mutation(...)`` entries to MUTATIONS (edit kinds:
``create``, ``append``, ``replace``, ``delete``, ``rename``, ``strip_docstrings``).
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _corpora import CORPORA, fetch, set_cache_dir  # noqa: E402

from kloros_tasks import names  # noqa: E402


@dataclass(frozen=True)
class Edit:
    """One change to a file of the copied tree.

    ``create`` path with ``text``; ``append`` ``text`` to path; ``replace`` the first
    ``old`` by ``new`` (it must occur); ``delete`` path; ``rename`` path to ``new``;
    ``strip_docstrings`` of every definition in path (and the module's).
    """

    kind: str
    path: str
    text: str = ""
    old: str = ""
    new: str = ""


@dataclass(frozen=True)
class Expect:
    rule: str
    owner: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class Mutation:
    name: str
    corpus: str
    detector: str
    edits: tuple[Edit, ...]
    expect: Expect
    why: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


K = names.KNOWLEDGE
MUTATIONS: list[Mutation] = [
    # --- KnowledgeDiscovery.missing_docstrings ----------------------------------------
    # The rule asks only in a tree that declares a docstring policy: pydantic (ruff D),
    # interrogate ([tool.interrogate]) and celery (flake8-docstrings) declare one; in
    # the others the policy is declared by the mutation itself.
    Mutation("pydantic-strip-networks-docstrings", "pydantic", K,
             (Edit("strip_docstrings", "pydantic/networks.py"),),
             Expect("missing_docstrings", owner="pydantic/networks.py",
                    text="UrlConstraints")),
    Mutation("interrogate-strip-coverage-docstrings", "interrogate", K,
             (Edit("strip_docstrings", "src/interrogate/coverage.py"),),
             Expect("missing_docstrings", owner="src/interrogate/coverage.py",
                    text="InterrogateCoverage")),
    Mutation("celery-strip-text-docstrings", "celery", K,
             (Edit("strip_docstrings", "celery/utils/text.py"),),
             Expect("missing_docstrings", owner="celery/utils/text.py",
                    text="str_to_list")),
    Mutation("django-ruff-d-and-strip-text-docstrings", "django", K,
             (Edit("append", "pyproject.toml", text='\n[tool.ruff.lint]\nselect = ["D"]\n'),
              Edit("strip_docstrings", "django/utils/text.py")),
             Expect("missing_docstrings", owner="django/utils/text.py", text="capfirst")),
    Mutation("black-pydocstyle-and-strip-comments-docstrings", "black", K,
             (Edit("create", ".pydocstyle", text="[pydocstyle]\nconvention = pep257\n"),
              Edit("strip_docstrings", "src/black/comments.py")),
             Expect("missing_docstrings", owner="src/black/comments.py",
                    text="generate_comments")),
    Mutation("stdlib-interrogate-and-strip-json-decoder", "stdlib", K,
             (Edit("create", "pyproject.toml", text="[tool.interrogate]\nfail-under = 90\n"),
              Edit("strip_docstrings", "json/decoder.py")),
             Expect("missing_docstrings", owner="json/decoder.py", text="JSONDecoder")),
    # --- KnowledgeDiscovery.unindexed_doc ---------------------------------------------
    Mutation("django-paginator-out-of-toctree", "django", K,
             (Edit("replace", "docs/ref/index.txt", old="\n   paginator\n", new="\n"),),
             Expect("unindexed_doc", owner="docs/ref/paginator.txt")),
    Mutation("celery-debugging-out-of-toctree", "celery", K,
             (Edit("replace", "docs/userguide/index.rst", old="\n    debugging\n", new="\n"),),
             Expect("unindexed_doc", owner="docs/userguide/debugging.rst")),
    Mutation("black-faq-out-of-toctree", "black", K,
             (Edit("replace", "docs/index.md", old="\nfaq\n", new="\n"),),
             Expect("unindexed_doc", owner="docs/faq.md")),
    Mutation("celery-new-page-nobody-links", "celery", K,
             (Edit("create", "docs/userguide/sharding.rst",
                   text="==========\n Sharding\n==========\n\nHow to shard queues.\n"),),
             Expect("unindexed_doc", owner="docs/userguide/sharding.rst")),
    # --- KnowledgeDiscovery.stale_doc -------------------------------------------------
    Mutation("django-site-class-renamed", "django", K,
             (Edit("replace", "django/contrib/sites/models.py", old="class Site(",
                   new="class SiteRecord("),),
             Expect("stale_doc", text="django.contrib.sites.models.Site")),
    Mutation("django-year-archive-view-renamed", "django", K,
             (Edit("replace", "django/views/generic/dates.py", old="class BaseYearArchiveView(",
                   new="class BaseYearArchive("),),
             Expect("stale_doc", owner="docs/ref/class-based-views/generic-date-based.txt",
                    text="django.views.generic.dates.BaseYearArchiveView")),
    Mutation("django-csrf-page-renamed", "django", K,
             (Edit("rename", "docs/ref/csrf.txt", new="docs/ref/csrf-protection.txt"),),
             Expect("stale_doc", text="csrf")),
    Mutation("celery-task-module-renamed", "celery", K,
             (Edit("rename", "celery/app/task.py", new="celery/app/tasks.py"),),
             Expect("stale_doc", owner="docs/reference/celery.app.task.rst",
                    text="celery.app.task")),
    # A page announcing a release still to come (celery 6.0 in a 5.5.3 sdist) is not
    # dated by it: its references are judged.
    Mutation("celery-page-with-a-current-deprecation-note-names-a-renamed-module", "celery", K,
             (Edit("append", "docs/reference/celery.app.task.rst",
                   text="\n.. note:: ``Task.subtask`` will be removed in Celery 6.0.\n"),
              Edit("rename", "celery/app/task.py", new="celery/app/tasks.py")),
             Expect("stale_doc", owner="docs/reference/celery.app.task.rst",
                    text="celery.app.task")),
    Mutation("black-basics-page-renamed", "black", K,
             (Edit("rename", "docs/usage_and_configuration/the_basics.md",
                   new="docs/usage_and_configuration/basics.md"),),
             Expect("stale_doc", text="the_basics")),
]

# CapabilityDiscovery, judged against each corpus's matched environment (see _scan):
# a missing tool, an undeclared import (missing, or installed but undeclared), a
# required variable read by subscript, a subprocess of a program not on PATH.
C = names.CAPABILITY
_CAPABILITY_SITES = (("django", "django/utils/text.py", "django"),
                     ("celery", "celery/utils/text.py", "celery"),
                     ("black", "src/black/comments.py", "black"),
                     ("stdlib", "json/decoder.py", "json"))
_UNDECLARED = {"django": "setuptools", "celery": "prompt_toolkit", "black": "setuptools"}
_PROGRAMS = {"django": "wkhtmltopdf", "celery": "pandoc", "black": "clang-format",
             "stdlib": "ffmpeg"}


def _capability_mutations() -> list[Mutation]:
    out = []
    for corpus, path, package in _CAPABILITY_SITES:
        token = f"{package.upper()}_BENCH_SECRET_TOKEN"
        program = _PROGRAMS[corpus]
        run_program = ("\nimport subprocess\n\n\ndef _bench_render(x):\n"
                       f"    return subprocess.run(['{program}', x])\n")
        out += [
            Mutation(f"{corpus}-import-of-an-absent-library", corpus, C,
                     (Edit("append", path, text="\nimport requests_oauthlib\n"),),
                     Expect("missing_module", owner=path, text="requests_oauthlib")),
            Mutation(f"{corpus}-required-variable-by-subscript", corpus, C,
                     (Edit("append", path, text=f"\nimport os\nTOKEN = os.environ['{token}']\n"),),
                     Expect("missing_env", owner=path, text=token)),
            Mutation(f"{corpus}-subprocess-of-a-program-not-on-path", corpus, C,
                     (Edit("append", path, text=run_program),),
                     Expect("missing_executable", owner=path, text=program)),
            Mutation(f"{corpus}-a-missing-tool", corpus, C,
                     (Edit("append", path,
                           text=f"\nfrom {package}.tools.search import web_search\n"),),
                     Expect("missing_capability", owner=path, text=f"{package}.tools.search")),
        ]
        if corpus != "stdlib":  # the standard library declares nothing to compare with
            # A library the matched environment holds (as a transitive dependency, or
            # as the venv's own) that the corpus does not declare.
            module = _UNDECLARED[corpus]
            out.append(Mutation(
                f"{corpus}-import-installed-but-undeclared", corpus, C,
                (Edit("append", path, text=f"\nimport {module}\n"),),
                Expect("undeclared_dependency", owner=path, text=module)))
    return out


MUTATIONS += _capability_mutations()
# A required dependency the matched environment lacks: one target_environment question.
MUTATIONS += [
    Mutation("django-new-required-dependency", "django", C,
             (Edit("replace", "pyproject.toml", old='    "sqlparse>=0.3.1",\n',
                   new='    "sqlparse>=0.3.1",\n    "requests-oauthlib>=2",\n'),),
             Expect("target_environment", owner="pyproject.toml", text="requests-oauthlib")),
    Mutation("celery-new-required-dependency", "celery", C,
             (Edit("append", "requirements/default.txt", text="requests-oauthlib>=2\n"),),
             Expect("target_environment", owner="requirements/default.txt",
                    text="requests-oauthlib")),
    # A variable a README documents is documented; the one beside it that no document
    # names is still asked about.
    Mutation("celery-readme-documents-one-variable-of-two", "celery", C,
             (Edit("append", "README.rst",
                   text="\nSet ``CELERY_BENCH_DOCUMENTED_URL`` to the broker's URL.\n"),
              Edit("append", "celery/utils/text.py",
                   text="\nimport os\nURL = os.environ['CELERY_BENCH_DOCUMENTED_URL']\n"
                        "TOKEN = os.environ['CELERY_BENCH_SECRET_TOKEN']\n")),
             Expect("missing_env", owner="celery/utils/text.py",
                    text="CELERY_BENCH_SECRET_TOKEN")),
    Mutation("black-new-required-dependency", "black", C,
             (Edit("replace", "pyproject.toml", old='  "click>=8.0.0",\n',
                   new='  "click>=8.0.0",\n  "requests-oauthlib>=2",\n'),),
             Expect("target_environment", owner="pyproject.toml", text="requests-oauthlib")),
]


def _integration() -> list[Mutation]:
    from _integration_mutations import INTEGRATION_MUTATIONS  # noqa: PLC0415

    return INTEGRATION_MUTATIONS


class MutationError(ValueError):
    """A mutation that does not apply to the tree (the corpus changed under it)."""


def strip_docstrings(source: str) -> str:
    """``source`` without the docstrings of its module, classes and functions
    (a ``pass`` keeps a body that held only a docstring valid)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                spans.append((body[0].lineno, body[0].end_lineno, len(body) == 1,
                              body[0].col_offset))
    for start, end, alone, col in sorted(spans, reverse=True):
        lines[start - 1:end] = [" " * col + "pass\n"] if alone else []
    return "".join(lines)


def apply_edit(root: Path, edit: Edit) -> None:
    """Apply one edit under ``root``; MutationError when it does not apply."""
    target = root / edit.path
    if edit.kind == "create":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(edit.text)
        return
    if not target.is_file():
        raise MutationError(f"{edit.path}: no such file")
    if edit.kind == "append":
        target.write_text(target.read_text() + edit.text)
    elif edit.kind == "replace":
        text = target.read_text()
        if edit.old not in text:
            raise MutationError(f"{edit.path}: {edit.old!r} not found")
        target.write_text(text.replace(edit.old, edit.new, 1))
    elif edit.kind == "delete":
        target.unlink()
    elif edit.kind == "rename":
        (root / edit.new).parent.mkdir(parents=True, exist_ok=True)
        target.rename(root / edit.new)
    elif edit.kind == "strip_docstrings":
        stripped = strip_docstrings(target.read_text())
        if stripped == target.read_text():
            raise MutationError(f"{edit.path}: no docstring to strip")
        target.write_text(stripped)
    else:
        raise MutationError(f"unknown edit kind {edit.kind!r}")


def matching(questions: list[dict], expect: Expect) -> set[tuple[str, str]]:
    """(question id, matched evidence or hypothesis) pairs that meet ``expect``."""
    out = set()
    for q in questions:
        if q["rule"] != expect.rule or (expect.owner and q["owner"] != expect.owner):
            continue
        for line in [q["hypothesis"], *q["evidence"]]:
            if expect.text is None or expect.text in line:
                out.add((q["question_id"], line if expect.text else ""))
    return out


def detected(before: list[dict], after: list[dict], expect: Expect) -> bool:
    """True when the break shows: a question meeting ``expect`` that was not there."""
    return bool(matching(after, expect) - matching(before, expect))


def copy_tree(source: Path, into: Path) -> Path:
    target = into / source.name  # the same root name, so question ids compare
    shutil.copytree(source, target, symlinks=True)
    return target


def run(mutations: list[Mutation], scan, source_of=None) -> dict[str, bool | str]:
    """Apply each mutation to a fresh copy and scan it with ``scan(corpus, detector,
    root) -> [question records]``; returns name -> detected (or the reason it could
    not be applied).  Baselines are scanned once per (corpus, detector).
    ``source_of(corpus) -> Path`` finds the unmutated tree (default: the fetched corpus)."""
    source_of = source_of or (lambda corpus: fetch(CORPORA[corpus_name(corpus)]))
    outcome: dict[str, bool | str] = {}
    baselines: dict[tuple[str, str], list[dict]] = {}
    for m in mutations:
        source = source_of(m.corpus)
        with tempfile.TemporaryDirectory(prefix="klmut-") as tmp:
            key = (m.corpus, m.detector)
            if key not in baselines:
                base = copy_tree(source, Path(tmp) / "base")
                baselines[key] = scan(m.corpus, m.detector, base)
            root = copy_tree(source, Path(tmp) / "mutated")
            try:
                for edit in m.edits:
                    apply_edit(root, edit)
            except MutationError as exc:
                outcome[m.name] = f"not applied: {exc}"
                continue
            outcome[m.name] = detected(baselines[key], scan(m.corpus, m.detector, root),
                                       m.expect)
    return outcome


def corpus_name(name: str) -> str:
    """``stdlib`` stands for the running interpreter's corpus (``python3.11``...)."""
    if name == "stdlib":
        return next(c for c, spec in CORPORA.items() if spec.requirement is None)
    return name


def _scan(corpus: str, detector: str, root: Path) -> list[dict]:
    from precision import scan_corpus  # noqa: PLC0415

    # CapabilityDiscovery is judged against the corpus's matched environment, as in
    # `precision.py scan --target-env`, so a break shows against what the tree runs in.
    return scan_corpus(CORPORA[corpus_name(corpus)], detector, root=root,
                       target_env=detector == names.CAPABILITY)["questions"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append")
    parser.add_argument("--detector", action="append")
    parser.add_argument("--rule", action="append")
    parser.add_argument("--only", action="append")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--cache", type=Path, help="as bench/precision.py's --cache")
    args = parser.parse_args(argv)
    if args.cache is not None:
        set_cache_dir(args.cache)
    chosen = [m for m in MUTATIONS + _integration()
              if (not args.corpus or m.corpus in args.corpus)
              and (not args.detector or m.detector in args.detector)
              and (not args.rule or m.expect.rule in args.rule)
              and (not args.only or m.name in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.detector}.{m.expect.rule} {m.corpus} {m.name}")
        return
    outcome = run(chosen, _scan)
    totals, hits = Counter(), Counter()
    for m in chosen:
        rule = f"{m.detector}.{m.expect.rule}"
        totals[rule] += 1
        hits[rule] += outcome[m.name] is True
        print(f"{'ok  ' if outcome[m.name] is True else 'MISS'} {rule} {m.corpus} {m.name}"
              + ("" if isinstance(outcome[m.name], bool) else f" ({outcome[m.name]})"))
    print("\n| rule | detected | mutations | recall |\n|---|---:|---:|---:|")
    for rule in sorted(totals):
        print(f"| {rule} | {hits[rule]} | {totals[rule]} | "
              f"{100 * hits[rule] / totals[rule]:.0f} % |")


if __name__ == "__main__":
    main()
