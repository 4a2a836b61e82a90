"""The elements of nft named sets, from what `nft list table/ruleset` prints. Pure: no I/O.

`ip saddr @allowed tcp dport 22 accept` cannot be judged from the rule text alone; with the set's
elements near-miss search (tracer/diagnose/nearmiss.py) can tell that the client is not in it. Maps,
concatenations (`ipv4_addr . inet_service`) and sets nft prints without elements are left out:
a condition on them stays unknown.

Sample: `set allowed { # handle 3` / `type ipv4_addr` / `flags interval` /
`elements = { 10.0.0.0/8, 192.0.2.10 }` (the elements may wrap over several lines).
"""
from __future__ import annotations

import re
from typing import Optional

from tracer.ruleset import _scan

SetKey = tuple[str, str, str]  # (family, table, set name)
_TABLE = re.compile(r"^\s*table\s+(\S+)\s+(\S+)\s*\{")
_SET = re.compile(r"^\s*set\s+(\S+)\s*\{")


def parse_sets(text: str) -> dict[SetKey, tuple[str, ...]]:
    """(family, table, name) -> the set's elements as nft prints them (first word of each)."""
    out: dict[SetKey, tuple[str, ...]] = {}
    table: Optional[tuple[str, str]] = None
    name: Optional[str] = None
    body: list[str] = []
    for line in text.splitlines():
        code = _scan(line)[0]  # without its `# handle N` comment; a `#` inside quotes stays
        m = _TABLE.match(code)
        if m:
            table, name = (m.group(1), m.group(2)), None
            continue
        if name is None:
            s = _SET.match(code)
            if s and table is not None:
                name, body = s.group(1), []
            continue
        if code.strip() == "}":
            elements = _elements(" ".join(body))
            if elements is not None and table is not None:
                out[(table[0], table[1], name)] = elements
            name = None
            continue
        body.append(code.strip())
    return out


def _elements(body: str) -> Optional[tuple[str, ...]]:
    m = re.search(r"\btype(?:of)?\s+([^;]+?)(?:\s+flags\b|\s+elements\b|\s+comment\b|\s+size\b|\s+timeout\b|$)", body)
    if m is None or "." in m.group(1) or ":" in m.group(1):
        return None  # a concatenation or a typeof expression fwtrace does not model
    e = re.search(r"\belements\s*=\s*\{(.*)\}", body)
    if e is None:
        return ()
    return tuple(x.split()[0] for x in e.group(1).split(",") if x.split())
