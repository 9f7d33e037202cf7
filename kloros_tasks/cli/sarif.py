"""Questions as a SARIF 2.1.0 log, for GitHub code scanning and editors (presentation only).

One run, one rule per ``<detector>.<rule>``, one result per question.  Locations come
from the question's evidence (``path:line what``), else from its paths; they are
relative to the scanned root, named by a ``uriBaseId`` whose absolute URI is in the
run's ``originalUriBaseIds``.  Severity maps to SARIF levels: low -> note,
medium -> warning, high and critical -> error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kloros_tasks import __version__

SCHEMA_URI = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
              "sarif-schema-2.1.0.json")
LEVEL = {"low": "note", "medium": "warning", "high": "error", "critical": "error"}
MAX_RELATED = 20
_EVIDENCE = re.compile(r"^(?P<path>[^\s:][^:]*?):(?P<line>\d+)\b")


def _location(path: str, line: int | None, base_id: str) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": path, "uriBaseId": base_id}}
    if line is not None and line >= 1:
        physical["region"] = {"startLine": line}
    return {"physicalLocation": physical}


def evidence_locations(facts: Mapping[str, Any]) -> list[tuple[str, int | None, str]]:
    """(path, line, evidence text) for every evidence string naming ``path:line``, then
    the question's paths without a line when no evidence names a place."""
    found = []
    for text in facts.get("evidence", []):
        match = _EVIDENCE.match(str(text))
        if match:
            found.append((match["path"], int(match["line"]), str(text)))
    if not found:
        found = [(p, None, "") for p in facts.get("metadata", {}).get("paths", [])]
    return found


def _rule(rule_id: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    meta = facts.get("metadata", {})
    hypothesis = str(facts.get("hypothesis", "")).split(":", 1)[0].strip()
    short = f"{meta.get('detector')}: {meta.get('rule', '').replace('_', ' ')}"
    help_text = facts.get("suggestion") or facts.get("question", "")
    return {
        "id": rule_id,
        "name": hypothesis or meta.get("rule", rule_id),
        "shortDescription": {"text": short},
        "help": {"text": str(help_text),
                 "markdown": f"{help_text}\n\nSee docs/detectors.md, rule "
                             f"`{meta.get('rule', rule_id)}`."},
        "defaultConfiguration": {"level": LEVEL.get(facts.get("severity"), "warning")},
        "properties": {"category": facts.get("category", "")},
    }


def _result(env: Mapping[str, Any], rule_id: str, rule_index: int, base_id: str) -> dict:
    facts = env["facts"]
    places = evidence_locations(facts)
    result: dict[str, Any] = {
        "ruleId": rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL.get(facts.get("severity"), "warning"),
        "message": {"text": str(facts.get("question", ""))},
        # The stable question id: the same problem keeps it across runs, so code
        # scanning tracks it as one alert while the code around it moves.
        "partialFingerprints": {"kloros/questionId/v1": str(facts.get("question_id"))},
        "properties": {"questionId": facts.get("question_id"),
                       "severity": facts.get("severity"),
                       "hypothesis": facts.get("hypothesis"),
                       "confidence": facts.get("confidence"),
                       "suggestion": facts.get("suggestion")},
    }
    if places:
        path, line, _ = places[0]
        result["locations"] = [_location(path, line, base_id)]
    related = []
    for n, (path, line, text) in enumerate(places[1:MAX_RELATED + 1], 1):
        loc = _location(path, line, base_id)
        loc["id"] = n
        if text:
            loc["message"] = {"text": text}
        related.append(loc)
    if related:
        result["relatedLocations"] = related
    return result


def sarif_log(envelopes: list[Mapping[str, Any]],
              roots: list[tuple[str, Path]]) -> dict[str, Any]:
    """A SARIF 2.1.0 log of ``envelopes``; ``roots`` are (root name, absolute path) as
    named in each envelope's ``metadata.root``."""
    base_ids = {name: f"ROOT{n}" for n, (name, _path) in enumerate(roots)}
    rules: list[dict] = []
    rule_index: dict[str, int] = {}
    results = []
    for env in envelopes:
        facts = env["facts"]
        meta = facts.get("metadata", {})
        rule_id = f"{meta.get('detector')}.{meta.get('rule')}"
        if rule_id not in rule_index:
            rule_index[rule_id] = len(rules)
            rules.append(_rule(rule_id, facts))
        base_id = base_ids.get(meta.get("root"), "ROOT0")
        results.append(_result(env, rule_id, rule_index[rule_id], base_id))
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "kloros-tasks", "version": __version__,
                                "rules": rules}},
            "originalUriBaseIds": {
                base_ids[name]: {"uri": path.resolve().as_uri().rstrip("/") + "/"}
                for name, path in roots},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
