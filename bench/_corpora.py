"""The pinned real trees the precision benchmark scans, and how they are fetched.

Every corpus is unpacked under a cache directory outside the repository (never
committed): ``--cache DIR``, else ``~/.cache/kloros-tasks-bench``.  Source
distributions are fetched with ``pip download --no-deps --no-binary :all:`` (so the
docs and tests that only an sdist carries are there), or taken from ``--sdists DIR``
when an archive of the same name is already on disk.

The standard library corpus is a copy of the running interpreter's ``Lib`` with its
test directories (``test/``, ``tests/``, ``idle_test/``), ``site-packages`` and
caches left out: the test suite alone is ~800 of its ~2,000 modules, and its
deliberately broken files are not what a maintainer of the library would be asked
about.  Its name says the version (``python3.11``), since labels only hold for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
from dataclasses import dataclass, field
from pathlib import Path

STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class Corpus:
    """One pinned tree.  ``requirement`` is a pip requirement pinned with ``==`` (None
    for the standard library); ``exclude`` are KLOROS_EXCLUDE-style globs applied when
    scanning; ``target_requirements`` is what a matched target environment for
    CapabilityDiscovery installs (the project's own runtime dependencies)."""

    name: str
    requirement: str | None
    exclude: tuple[str, ...] = ()
    target_requirements: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""


def stdlib_name() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("django", "django==5.2", exclude=("tests",),
           target_requirements=("asgiref>=3.8.1", "sqlparse>=0.3.1"),
           notes="sdist: django/, docs/ (Sphinx, .txt sources), scripts/, extras/; "
                 "tests/ left out (2,700 test modules, a fixture zoo)"),
    Corpus(stdlib_name(), None,
           notes="the running interpreter's Lib/, test directories left out"),
    Corpus("celery", "celery==5.5.3",
           target_requirements=("billiard>=4.2.1,<5.0", "kombu>=5.5.2,<5.6", "vine>=5.1.0,<6.0",
                                "click>=8.1.2,<9.0", "click-didyoumean>=0.3.0",
                                "click-repl>=0.2.0", "click-plugins>=1.1.1",
                                "python-dateutil>=2.8.2"),
           notes="sdist: celery/, t/ (tests), docs/ (Sphinx, .rst), examples/, extra/"),
    Corpus("black", "black==24.10.0",
           target_requirements=("click>=8.0.0", "mypy_extensions>=0.4.3", "packaging>=22.0",
                                "pathspec>=0.9.0", "platformdirs>=2"),
           notes="sdist: src/ layout (black, blackd, blib2to3), docs/ (Sphinx + MyST "
                 "Markdown), tests/ with 3.12-only syntax in its data files"),
    Corpus("circus", "circus==0.19.0",
           target_requirements=("pyzmq>=17.0", "psutil", "tornado>=5.0.2"),
           notes="a multi-component application on a ZeroMQ bus: the arbiter and its "
                 "watchers publish events (send_multipart), plugins, the stats streamer "
                 "and circusctl subscribe; controller and client talk over DEALER/ROUTER"),
    Corpus("paho-mqtt", "paho-mqtt==2.2.0",
           notes="an MQTT client: examples/ and tests/ publish and subscribe to broker "
                 "topics ($SYS, wildcards)"),
    Corpus("kombu", "kombu==5.5.4",
           notes="celery's messaging library: Redis, SQS/SNS, AMQP transports; Redis "
                 "lists and pub/sub with keys built at run time"),
    Corpus("redis", "redis==6.2.0",
           notes="redis-py: pub/sub, keyspace notifications, tests publishing and "
                 "subscribing to literal channels"),
    Corpus("python-socketio", "python-socketio==5.18.1",
           notes="Socket.IO server and client: emit/on events addressed to network peers, "
                 "an admin instrumentation server"),
    Corpus("pydantic", "pydantic==2.10.6",
           target_requirements=("annotated-types>=0.6.0", "pydantic-core==2.27.2",
                                "typing-extensions>=4.12.2"),
           notes="sdist: pydantic/, tests/, docs/ (MkDocs Markdown); declares a docstring "
                 "policy (ruff D, google convention, D105/D107 ignored, per-file ignores "
                 "for docs/, tests/, pydantic/deprecated/, pydantic/v1 excluded)"),
    Corpus("interrogate", "interrogate==1.7.0",
           target_requirements=("attrs", "click>=7.1", "colorama", "py", "tabulate"),
           notes="sdist: src/ layout, tests/ (with sample modules), docs/ (Sphinx); "
                 "declares a docstring policy ([tool.interrogate], fail-under 95, "
                 "__init__ methods ignored, tests/functional/sample, setup.py, docs "
                 "excluded)"),
)}


DEFAULT_CACHE = Path.home() / ".cache" / "kloros-tasks-bench"
_cache = [DEFAULT_CACHE]


def set_cache_dir(path: Path) -> None:
    """Use ``path`` (the scripts' ``--cache``) instead of the default cache."""
    _cache[0] = path


def cache_dir() -> Path:
    return _cache[0]


def _sdist(corpus: Corpus, cache: Path, sdists: Path | None) -> Path:
    """The corpus's sdist archive, downloaded once."""
    name, _, version = corpus.requirement.partition("==")
    where = cache / "sdists"
    where.mkdir(parents=True, exist_ok=True)
    for directory in (where, sdists):
        if directory is None:
            continue
        for archive in directory.glob("*.tar.gz"):
            stem = archive.name[: -len(".tar.gz")].lower().replace("_", "-")
            if stem == f"{name.lower()}-{version}":
                if directory != where:
                    shutil.copy2(archive, where / archive.name)
                return where / archive.name
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", corpus.requirement, "-d", str(where)], check=True)
    return _sdist(corpus, cache, None)


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        top = {m.name.split("/")[0] for m in tar.getmembers()}
        if len(top) != 1:
            raise RuntimeError(f"{archive}: expected one top-level directory, found {sorted(top)}")
        tar.extractall(into, filter="data")
    return into / top.pop()


def _copy_stdlib(into: Path) -> Path:
    source = Path(sysconfig.get_paths()["stdlib"])
    target = into / stdlib_name()

    def ignore(directory: str, entries: list[str]) -> set[str]:
        return {e for e in entries if e in STDLIB_SKIP or e.endswith(".pyc")}

    shutil.copytree(source, target, ignore=ignore, symlinks=True)
    return target


def fetch(corpus: Corpus, sdists: Path | None = None) -> Path:
    """The unpacked tree of ``corpus`` under the cache, fetched on first use."""
    cache = cache_dir()
    trees = cache / "trees" / corpus.name
    done = trees / ".complete"
    if done.exists():
        return trees / done.read_text().strip()
    if trees.exists():
        shutil.rmtree(trees)  # an interrupted unpack
    trees.mkdir(parents=True)
    if corpus.requirement is None:
        root = _copy_stdlib(trees)
    else:
        root = _unpack(_sdist(corpus, cache, sdists), trees)
    done.write_text(root.name)
    return root


def target_python(corpus: Corpus) -> str:
    """A venv with the corpus's own requirements from the package index, created once;
    its interpreter is what KLOROS_TARGET_PYTHON names for a matched capability run."""
    env = cache_dir() / "venvs" / corpus.name
    python = env / "bin" / "python"
    marker = env / ".requirements"
    wanted = "\n".join(corpus.target_requirements)
    if not (marker.exists() and marker.read_text() == wanted):
        venv.create(env, with_pip=True, clear=True)
        if corpus.target_requirements:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            *corpus.target_requirements], check=True)
        marker.write_text(wanted)
    return str(python)
