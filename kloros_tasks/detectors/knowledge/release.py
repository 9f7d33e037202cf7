"""The tree as a release: is it an sdist, what version is it, which pages it outdates.

An sdist carries ``PKG-INFO`` at its root, with the distribution's name and version.
Two things follow for KnowledgeDiscovery:

* an sdist holds what ``MANIFEST.in`` (or the build backend) picked: a document that
  includes or links a file at the top of the tree (``.. include:: ../CONTRIBUTING.rst``)
  may name a file packaging left out on purpose, which nothing in the tree tells from
  one that was deleted; such a link is not judged there;
* a page that announces, as still to come, a release of this project older than the
  tree's own ("Will be removed in Celery 2.3" in celery 5.5.3) dates itself: it is a
  record of that time, like release notes, and only its links are judged.
"""

from __future__ import annotations

import re

from kloros_tasks.detectors.base import FileFacts, IndexView

PKG_INFO = "PKG-INFO"
SDIST_KEY = f"path:{PKG_INFO}"  # defined when the tree is an sdist
RELEASE = "release"  # the distribution's normalised name, from PKG-INFO
RELEASE_AT = "release_at"  # "<name>==<version>": changes whenever the version does
RELEASE_REF = "release:"  # a document's refs key for a release it names with a version
HEADER_LINES = 40

_FUTURE = re.compile(
    r"\b(?:will|shall|is\s+going\s+to|are\s+going\s+to|to)\s+be\s+"
    r"(?:removed|deprecated|dropped|deleted|made\s+private)\s+in\s+(?:version\s+)?"
    r"(?P<name>[A-Za-z][\w.-]*?)\s+v?(?P<version>\d+(?:\.\d+)+)\b", re.I)


def normalise(name: str) -> str:
    """PEP 503: case, ``-``, ``_`` and ``.`` do not tell distributions apart."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(text: str) -> tuple[int, ...] | None:
    """"5.5.3" -> (5, 5, 3); None when the release segment is not plain numbers."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def pkg_info_facts(path: str, text: str) -> FileFacts:
    """Facts of a root ``PKG-INFO``: the tree is an sdist of ``Name`` at ``Version``."""
    headers: dict[str, str] = {}
    for line in text.splitlines()[:HEADER_LINES]:
        if not line.strip():
            break  # the description starts after the first blank line
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version"):
            headers[key] = value.strip()
    relations = {"defines": frozenset({f"path:{path}"}), "top": frozenset({path})}
    name, version = normalise(headers.get("Name", "")), headers.get("Version", "")
    if name and version_tuple(version) is not None:
        relations[RELEASE] = frozenset({name})
        relations[RELEASE_AT] = frozenset({f"{name}=={version}"})
    return FileFacts(relations=relations,
                     data={"kind": "other", "release": name, "version": version})


def announcements(lines: list[str]) -> list[list]:
    """[line, normalised project name, version] of each removal a document announces as
    still to come ("will be removed in Celery 2.3")."""
    out = []
    for number, line in enumerate(lines, 1):
        for match in _FUTURE.finditer(line):
            out.append([number, normalise(match.group("name")), match.group("version")])
    return out


def outdated_by(announced: list[list], view: IndexView) -> list | None:
    """The first announcement naming this tree's release at an older version, if any."""
    for entry in announced:
        _, name, version = entry
        said = version_tuple(version)
        for holder in view.who(RELEASE, name):
            facts = view.facts(holder)
            own = version_tuple(facts.data.get("version", "")) if facts else None
            if said is not None and own is not None and said < own:
                return entry
    return None


def top_level_target(candidates: list[str]) -> bool:
    """Every path a link may mean is a file at the top of the tree."""
    return bool(candidates) and all("/" not in c for c in candidates)
