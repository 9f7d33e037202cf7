"""What a Markdown or reStructuredText document links to and names in code, by line.

Pure scanning: ``scan(path, text)`` returns the raw targets and code spans with
1-based line numbers, and ``resolve`` / ``code_reference`` turn them into tree-relative
paths and dotted names.  Everything works line by line with linear-time patterns, so
a hostile document costs time proportional to its size.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

DOC_SUFFIXES = (".md", ".rst", ".txt")
JUDGED_SUFFIXES = (".md", ".rst", ".txt", ".py")  # a link to one of these must exist
DIRECTORY_DOCS = tuple(f"{stem}{suffix}" for stem in ("README", "index")
                       for suffix in DOC_SUFFIXES)
# The last component of a dotted-looking span that makes it a file name, not code.
FILE_EXTENSIONS = frozenset({
    "py", "pyi", "pyc", "md", "rst", "txt", "toml", "cfg", "ini", "json", "yaml", "yml",
    "html", "css", "js", "sh", "service", "target", "timer", "socket", "conf", "lock", "log",
    "csv", "in", "xml", "png", "svg", "jpg", "gz", "zip", "whl", "so", "env", "pid", "sock",
})
CODE_ROLES = frozenset({"mod", "class", "func", "meth", "attr", "data", "exc", "obj",
                        "const", "file"})
AUTODOC = re.compile(r"auto(module|class|function|method|attribute|exception|data)")
CODE_DIRECTIVES = frozenset({"code-block", "code", "sourcecode", "literalinclude", "doctest",
                             "testcode", "testoutput", "testsetup", "parsed-literal",
                             "math", "raw", "ipython", "highlight"})

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PATH = re.compile(r"^(?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)*\.py$")
_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_OPTION = re.compile(r"^[\w-]+:(?:\s|$)")  # "maxdepth: 2" in a MyST toctree's options
_TITLED = re.compile(r"^(.*?)\s*<([^<>]+)>$")  # "Title <target>"

_MD_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*)$")  # any indent: fences nest in lists
_MD_REF_DEF = re.compile(r"^ {0,3}\[(?!\^)[^\]]+\]:\s*(<[^>]*>|\S+)")  # not [^1]: notes
_MD_INLINE_LINK = re.compile(r"\]\(\s*(<[^<>\n]{0,1000}>|[^\s)]+)")  # bounded: linear
_MD_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_BACKTICKS = re.compile(r"`+")
_MYST_ROLE = re.compile(r"\{([\w:.+-]+)\}$")
_MD_ORPHAN = re.compile(r"^orphan\s*:\s*(true|yes|)\s*$", re.IGNORECASE)

_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:.-]+)::(?:\s+(.*))?$")
_RST_TARGET = re.compile(r"^\s*\.\.\s+_(?:`[^`]+`|[^:`]+):\s+(\S+)\s*$")
_RST_COMMENT = re.compile(r"^(\s*)\.\.(?:\s|$)")
_RST_INLINE = re.compile(
    r"``(?P<lit>[^`]+)``"
    r"|(?P<role>:(?:[\w.+-]{1,40}:){1,3})`(?P<rtext>[^`]+)`"
    r"|`(?P<text>[^`]+)`(?P<ref>__?)?"
)


@dataclass(frozen=True)
class Target:
    """A link-like target as written: ``style`` "url" (Markdown/rst links, includes)
    or "docname" (toctree entries, :doc: roles: the suffix may be left out)."""

    line: int
    target: str
    style: str = "url"
    column: int = 0


@dataclass(frozen=True)
class Code:
    """A code span: ``kind`` "literal" (a code span or rst literal), "role" (``:class:``,
    MyST ``{py:func}``...) or "autodoc" (an ``.. automodule::``-style directive)."""

    line: int
    text: str
    column: int = 0
    kind: str = "literal"


@dataclass
class Scan:
    targets: list[Target]
    code: list[Code]
    orphan: bool = False  # Sphinx ``:orphan:``: deliberately in no toctree


def scan(path: str, text: str) -> Scan:
    """Markdown for .md; reStructuredText for .rst and .txt (Sphinx trees often use .txt)."""
    lines = text.splitlines()
    markdown = path.endswith(".md")
    out = Scan([], [], orphan=_declared_orphan(lines, markdown))
    (_scan_markdown if markdown else _scan_rst)(lines, out)
    return out


def _declared_orphan(lines: list[str], markdown: bool) -> bool:
    """``:orphan:`` in the leading field list (rst), ``orphan: true`` in front matter (MyST)."""
    if markdown:
        if not lines or lines[0].strip() != "---":
            return False
        for line in lines[1:]:
            if line.strip() in ("---", "..."):
                return False
            if _MD_ORPHAN.match(line.strip()):
                return True
        return False
    for line in lines:
        field = line.strip()
        if field == ":orphan:":
            return True
        if field and not field.startswith(":"):
            return False
    return False


# --- Markdown -------------------------------------------------------------------------

def _scan_markdown(lines: list[str], out: Scan) -> None:
    fence: tuple[str, str] | None = None  # (closing run, MyST directive)
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip().startswith(fence[0]) and not line.strip().strip(fence[0][0]):
                fence = None
            elif fence[1] == "{toctree}":
                _toctree_entry(number, line, out)
            continue
        opening = _MD_FENCE.match(line)
        if opening:
            fence = _open_fence(number, opening, out)
            continue
        _markdown_line(number, line, out)


def _open_fence(number: int, opening: re.Match, out: Scan) -> tuple[str, str]:
    run, info = opening.group(1), opening.group(2).strip()
    directive, _, argument = info.partition(" ")
    if directive in ("{include}", "{literalinclude}") and argument.strip():
        out.targets.append(Target(number, argument.strip()))
    return run, directive


def _markdown_line(number: int, line: str, out: Scan) -> None:
    definition = _MD_REF_DEF.match(line)
    if definition:
        out.targets.append(Target(number, definition.group(1), column=definition.start(1)))
        return
    plain = list(line)
    for start, end, inner_start, inner_end in _code_spans(line):
        content = line[inner_start:inner_end].strip()
        role = _MYST_ROLE.search(line, max(0, start - 40), start)  # role names are short
        if role is None:
            if content:
                out.code.append(Code(number, content, start))
        else:  # {doc}`path`, {py:class}`a.B`, {ref}`label`...
            _role(number, start, role.group(1), content, out)
        plain[start:end] = " " * (end - start)
    rest = "".join(plain)
    for match in _MD_INLINE_LINK.finditer(rest):
        out.targets.append(Target(number, match.group(1), column=match.start()))
    for match in _MD_HREF.finditer(rest):
        out.targets.append(Target(number, match.group(1) or match.group(2) or "",
                                  column=match.start()))


def _code_spans(line: str) -> list[tuple[int, int, int, int]]:
    """(start, end, inner start, inner end) of each code span: a backtick run closed by
    the next run of the same length (CommonMark), found in one pass."""
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(line)]
    following: list[int | None] = [None] * len(runs)
    last_by_length: dict[int, int] = {}
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        following[i] = last_by_length.get(length)
        last_by_length[length] = i
    spans, i = [], 0
    while i < len(runs):
        j = following[i]
        if j is None:
            i += 1
            continue
        spans.append((runs[i][0], runs[j][1], runs[i][1], runs[j][0]))
        i = j + 1
    return spans


# --- reStructuredText -------------------------------------------------------------------

def _scan_rst(lines: list[str], out: Scan) -> None:
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            i = _rst_directive(lines, i, directive, out)
            continue
        target = _RST_TARGET.match(line)
        if target:
            out.targets.append(Target(i + 1, target.group(1)))
            i += 1
            continue
        comment = _RST_COMMENT.match(line)
        if comment:
            i = _block_end(lines, i, len(comment.group(1)))
            continue
        _rst_line(i + 1, line, out)
        if line.rstrip().endswith("::"):  # a literal block follows: examples, not refs
            i = _block_end(lines, i, _indent(line))
            continue
        i += 1


def _rst_directive(lines: list[str], i: int, match: re.Match, out: Scan) -> int:
    """Record what the directive at ``lines[i]`` links to; the index after what it skips."""
    indent, name, argument = len(match.group(1)), match.group(2), (match.group(3) or "").strip()
    end = _block_end(lines, i, indent)
    if name in ("include", "literalinclude") and argument:
        out.targets.append(Target(i + 1, argument))
    elif AUTODOC.fullmatch(name.removeprefix("py:")) and argument:
        out.code.append(Code(i + 1, argument.split("(")[0].strip(), kind="autodoc"))
    if name == "toctree":
        for k in range(i + 1, end):
            _toctree_entry(k + 1, lines[k], out)
        return end
    if name in CODE_DIRECTIVES:
        return end
    return i + 1  # the body is ordinary content: scan it


def _toctree_entry(number: int, line: str, out: Scan) -> None:
    entry = line.strip()
    if (not entry or entry.startswith(":") or entry == "self"
            or entry == "---" or _OPTION.match(entry)):
        return  # options (rst, MyST YAML), the document itself
    glob = any(c in entry for c in "*?[")  # meaningful under :glob:, harmless otherwise
    out.targets.append(Target(number, _untitled(entry), "glob" if glob else "docname"))


def _rst_line(number: int, line: str, out: Scan) -> None:
    for match in _RST_INLINE.finditer(line):
        if match.group("lit") is not None:
            out.code.append(Code(number, match.group("lit").strip(), match.start()))
        elif match.group("role") is not None:
            _role(number, match.start(), match.group("role"), match.group("rtext"), out)
        elif match.group("ref"):
            titled = _TITLED.match(match.group("text").strip())
            if titled and not titled.group(2).endswith("_"):
                # `text <target>`_ ; `name`_ and `text <name_>`_ are named references
                out.targets.append(Target(number, titled.group(2), column=match.start()))
        else:
            out.code.append(Code(number, match.group("text").strip(), match.start()))


def _role(number: int, column: int, role: str, text: str, out: Scan) -> None:
    """An interpreted-text role (rst ``:kind:`text```, MyST ``{kind}`text```)."""
    kind = role.strip(":{}").split(":")[-1]
    target = _untitled(text.strip())
    if kind == "doc":
        out.targets.append(Target(number, target, "docname", column))
    elif kind in CODE_ROLES and not target.startswith("."):
        out.code.append(Code(number, target.lstrip("~!"), column, "role"))


def _block_end(lines: list[str], i: int, indent: int) -> int:
    """Index of the first line after ``lines[i]`` that is not blank and not indented
    deeper than ``indent`` (the end of a directive's or literal block's body)."""
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
    return j


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _untitled(text: str) -> str:
    titled = _TITLED.match(text)
    return titled.group(2).strip() if titled else text


# --- resolution -------------------------------------------------------------------------

def resolve(doc: str, target: Target) -> tuple[str, tuple[str, ...]] | None:
    """What ``target`` in ``doc`` points at, as (kind, candidate relative paths).

    kind "file": a file with a judged suffix (it must exist: one of the candidates);
    "dir": no suffix, a directory (candidates: its README and index docs) or, without a
    trailing "/", an extensionless page as static site generators write them (also
    ``<target>.md`` and ``<target>.rst``); never judged broken; "other": a file the
    detector does not see (an image, say).  None for external URLs, same-page anchors
    and anything that leaves the root.  A leading "/" means the root, or (Sphinx style)
    the source directory, any directory above ``doc``: all are candidates.
    """
    raw = target.target.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip()
    if not raw or raw.startswith(("#", "~", "//")) or _URL_SCHEME.match(raw):
        return None
    raw = unquote(raw.split("#", 1)[0].split("?", 1)[0])
    bases = _bases(doc, raw) if raw else ()
    if not bases:
        return None
    if target.style == "docname" and not raw.endswith(DOC_SUFFIXES):
        # Sphinx adds its source_suffix; trees use .rst, .md (MyST) or .txt (Django):
        # the docname names whichever source exists.
        return "file", tuple(f"{b}{s}" for b in bases for s in DOC_SUFFIXES)
    base = posixpath.basename(raw.rstrip("/"))
    if raw.endswith("/") or base in ("", ".", "..") or "." not in base:
        pages = () if raw.endswith("/") or base in ("", ".", "..") else tuple(
            f"{b}{suffix}" for b in bases for suffix in (".md", ".rst"))
        return "dir", pages + tuple(name if b == "." else f"{b}/{name}"
                                    for b in bases for name in DIRECTORY_DOCS)
    return ("file" if raw.endswith(JUDGED_SUFFIXES) else "other"), bases


def _bases(doc: str, raw: str) -> tuple[str, ...]:
    """Normalised relative paths ``raw`` may mean from ``doc``; those outside the root dropped."""
    if raw.startswith("/"):
        # The root, or (Sphinx) the source directory: the one holding conf.py, which
        # may be any directory above the document.
        rel = raw.lstrip("/")
        dirs = doc.split("/")[:-1]
        options = [rel or "."] + [posixpath.join(*dirs[:k], rel) for k in range(1, len(dirs) + 1)]
    else:
        options = [posixpath.join(posixpath.dirname(doc), raw)]
    out: list[str] = []
    for option in options:
        if not option:
            continue
        norm = posixpath.normpath(option)
        if norm != ".." and not norm.startswith("../") and norm not in out:
            out.append(norm)
    return tuple(out)


def glob_patterns(doc: str, target: Target) -> tuple[str, ...]:
    """The relative docname patterns a toctree glob entry in ``doc`` may mean."""
    return _bases(doc, target.target.strip())


def code_reference(doc: str, text: str) -> tuple[str, tuple[str, ...]] | None:
    """("path", candidates) for a relative .py path, ("name", (dotted,)) for a dotted
    name, None for any other code span.

    A path must contain "/" (a bare ``setup.py`` is usually generic) and may be meant
    from the root or from the doc's directory: both are candidates.  ``a.b:c`` (entry
    point style, with a dotted module so that Redis keys like ``kloros:roots`` are not
    taken for code) is the name ``a.b.c``; a trailing "()" is dropped.
    """
    text = text.strip().removesuffix("()")
    if "/" in text:
        if not _PATH.match(text):
            return None
        options = {posixpath.normpath(text), posixpath.join(posixpath.dirname(doc), text)}
        candidates = tuple(sorted(
            p for p in map(posixpath.normpath, options)
            if p != ".." and not p.startswith("../")))
        return ("path", candidates) if candidates else None
    if _ENTRY_POINT.match(text):
        name = text.replace(":", ".")
    elif _NAME.match(text) and "." in text:
        name = text
    else:
        return None
    if name.rsplit(".", 1)[1].lower() in FILE_EXTENSIONS:
        return None
    return "name", (name,)
