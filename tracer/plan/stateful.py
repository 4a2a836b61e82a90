"""Stateful matches a probe uses up (issue 21): xt_recent lists, nft dynamic sets and meters
(`add @set`, `update @set`, `meter`), limit/hashlimit buckets, connlimit / `ct count`. Pure.

A probe from a real client's address is remembered by them as the client's own packet would
be: an xt_recent `--set` puts the client on the list that throttles it, a dynamic set or meter
gets its element. What the probe created is removed after the run (journaled before the first
probe is sent) and compared by the cleanup proof; what cannot be given back (a bucket's tokens,
a hit added to an entry that was already there) is said before the probe is sent.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

# `nft -t list sets` / `nft -t list meters` (terse: no elements), e.g.
#   table inet filter {
#   	set seen {
#   		type ipv4_addr
#   		flags dynamic,timeout
_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_SET = re.compile(r"^\s*(set|meter) (\S+) \{")
_FLAGS = re.compile(r"^\s*flags (\S+)")

# What no undo gives back, as `nft list ruleset` and iptables-legacy-save print it.
_SPENT = (
    ("limit", re.compile(r"\blimit rate\b|xt match \"?limit\b|-m limit\b")),  # nft 1.0.6: xt match limit
    ("hashlimit", re.compile(r"xt match \"?hashlimit\b|-m hashlimit\b")),
    ("connlimit", re.compile(r"\bct count\b|xt match \"?connlimit\b|-m connlimit\b")),
)


@dataclass(frozen=True)
class Found:
    """The stateful objects of the target: xt_recent lists, dynamic sets and meters ("set inet
    filter seen", "meter inet filter ssh4"), and the kinds of match whose state cannot be restored."""

    recent: tuple[str, ...] = ()
    dynsets: tuple[str, ...] = ()
    spent: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.recent or self.dynsets or self.spent)


def dynamic_sets(terse: str) -> list[str]:
    """The dynamic sets and the meters in `nft -t list sets` + `nft -t list meters` output."""
    out: list[str] = []
    table: Optional[tuple[str, str]] = None
    current: Optional[str] = None
    for line in terse.splitlines():
        if m := _TABLE.match(line):
            table, current = (m.group(1), m.group(2)), None
        elif (m := _SET.match(line)) and table is not None:
            current = f"{m.group(1)} {table[0]} {table[1]} {m.group(2)}"
            if m.group(1) == "meter" and current not in out:
                out.append(current)
        elif (m := _FLAGS.match(line)) and current is not None and "dynamic" in m.group(1).split(","):
            if current not in out:
                out.append(current)
    return out


# The same kinds as nf_tables expression / x_tables match names (a meter's or `update @set`'s
# `limit rate` is a nested limit expression; `ct count` is connlimit).
SPENT_EXPRESSIONS = ("limit", "hashlimit", "connlimit")


def spent(ruleset_texts: Iterable[str], also: Iterable[str] = ()) -> tuple[str, ...]:
    """The kinds in `_SPENT` the texts (`nft list` / iptables-save output) use, or `also` names."""
    text = "\n".join(ruleset_texts)
    more = set(also)
    return tuple(name for name, rx in _SPENT if name in more or rx.search(text))


def recent_addresses(proc_text: str) -> set[str]:
    """The addresses on one xt_recent list, /proc/net/xt_recent/NAME, e.g.
    src=192.0.2.2 ttl: 64 last_seen: 4295592575 oldest_pkt: 1 4295592575"""
    return {m.group(1) for m in re.finditer(r"^src=(\S+)", proc_text, re.M)}


def _key(value: Any) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_key(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return "-".join(_key(v) for v in value["range"])
        if "elem" in value:
            return _key(value["elem"].get("val"))
    return str(value)


def set_elements(set_json: str) -> list[str]:
    """The keys of the elements in `nft -j list set|meter F T NAME` output, as `nft delete
    element` takes them: "192.0.2.2", "192.0.2.2 . 24" (timeouts and limits aside: they change
    by themselves)."""
    try:
        items = json.loads(set_json).get("nftables", [])
    except (ValueError, AttributeError):
        return []
    out = []
    for item in items:
        obj = item.get("set") or item.get("meter")
        if obj:
            out += [_key(e) for e in obj.get("elem", [])]
    return out


def involves(key: str, addr: str) -> bool:
    """Is the element one of this address's (its key holds the address itself)?"""
    return addr in re.split(r" \. |/|-", key)


def objects(addr: str, recent: dict[str, str], elements: dict[str, list[str]]) -> dict[str, str]:
    """The cleanup proof's view of the address's state: its entry on each xt_recent list and its
    elements of each dynamic set or meter ("set inet filter seen" -> keys)."""
    out = {f"xt_recent {name} {addr}": "listed" for name, text in recent.items() if addr in recent_addresses(text)}
    for dynset, keys in elements.items():
        for key in keys:
            if involves(key, addr):
                out[f"element {dynset} {{ {key} }}"] = "element"
    return out


def warning(found: Found, addr: str) -> Optional[str]:
    """What a probe from a real client's address uses up, said before it is sent."""
    if not found:
        return None
    parts = []
    if found.recent:
        parts.append(f"xt_recent list{'s' if len(found.recent) > 1 else ''} {', '.join(found.recent)}")
    parts += found.dynsets
    restore = (f"{addr}'s entries and elements that the probe creates in "
               f"{'; '.join(parts)} are removed after the run (a hit or timeout added to one that was "
               "already there stays)") if parts else ""
    lost = (f"what it takes from {', '.join(found.spent)} rules (tokens of a rate limit, a connection "
            "count) cannot be given back") if found.spent else ""
    return (f"the probe comes from a real client's address ({addr}) and the ruleset has stateful matches "
            "it may pass through, which remember it as that client's own packet: "
            + "; ".join(x for x in (restore, lost) if x))
