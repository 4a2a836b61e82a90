"""Counter deltas of a run: which rules' packet counters moved between the listing before and the
listing after. No I/O.

Parses `nft -a list ruleset` (rules with a `counter` statement, keyed by table, chain and handle)
and `iptables-save -c` (`[packets:bytes] -A CHAIN ...`, and the policy counters of built-in
chains, `:INPUT ACCEPT [packets:bytes]`), keyed by table, chain and the rule's text. Counters
move with all traffic, not only the probe's: the delta is what the run saw, not a proof.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NFT_COUNTER = re.compile(r"counter packets (\d+) bytes (\d+)")
_NFT_HANDLE = re.compile(r"# handle (\d+)\s*$")
_SAVE_RULE = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+) .*)$")
_SAVE_POLICY = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")

Key = tuple[str, ...]


@dataclass(frozen=True)
class Count:
    packets: int
    bytes: int
    what: str  # the rule as listed, counters removed


def nft_counters(text: str) -> dict[Key, Count]:
    """(family table, chain, handle) -> counters, for every rule listed with a counter."""
    out: dict[Key, Count] = {}
    table = chain = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("table "):
            table = " ".join(s.split()[1:3])
        elif s.startswith("chain "):
            chain = s.split()[1]
        m, h = _NFT_COUNTER.search(s), _NFT_HANDLE.search(s)
        if m and h and table and chain:
            what = _NFT_HANDLE.sub("", _NFT_COUNTER.sub("counter", s)).strip()
            out[(table, chain, h.group(1))] = Count(int(m.group(1)), int(m.group(2)), what)
    return out


def save_counters(text: str) -> dict[Key, Count]:
    """(table, chain, rule text, occurrence) or (table, chain, "policy") -> counters."""
    out: dict[Key, Count] = {}
    table = ""
    seen: dict[Key, int] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        p = _SAVE_POLICY.match(line)
        if p and p.group(2) != "-":
            out[(table, p.group(1), "policy")] = Count(int(p.group(3)), int(p.group(4)), f"policy {p.group(2)}")
            continue
        r = _SAVE_RULE.match(line)
        if r:
            base = (table, r.group(4), r.group(3))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out[base + (str(n),)] = Count(int(r.group(1)), int(r.group(2)), r.group(3))
    return out


def deltas(before: dict[Key, Count], after: dict[Key, Count], label: str) -> list[str]:
    """One line per counter that moved: `label table chain: +P packets +B bytes: rule`."""
    out = []
    for key, a in after.items():
        b = before.get(key)
        if b is None or (a.packets, a.bytes) == (b.packets, b.bytes):
            continue
        out.append(f"{label} {key[0]} {key[1]}: +{a.packets - b.packets} packets +{a.bytes - b.bytes} bytes: {a.what}")
    return out


def nft_tables(listing: str, keep: set[tuple[str, str]]) -> str:
    """Only the tables `keep` ((family, name)) of an `nft list ruleset` listing: a table block
    runs from its `table F N {` line to the `}` at the start of a line."""
    out: list[str] = []
    keeping = False
    for line in listing.splitlines(keepends=True):
        if line.startswith("table "):
            words = line.split()
            keeping = (words[1], words[2]) in keep
        if keeping:
            out.append(line)
        if line.startswith("}"):
            keeping = False
    return "".join(out)


def save_tables(saved: str, keep: set[str]) -> str:
    """Only the tables `keep` of an iptables-save listing (`*filter` ... `COMMIT`)."""
    out: list[str] = []
    keeping = False
    for line in saved.splitlines(keepends=True):
        if line.startswith("*"):
            keeping = line[1:].strip() in keep
        if keeping:
            out.append(line)
        if line.startswith("COMMIT"):
            keeping = False
    return "".join(out)
