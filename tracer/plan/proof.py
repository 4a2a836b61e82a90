"""The cleanup proof by content (pure): what fwtrace touched, object by object, before and after.

A generation count shows that nobody *else* wrote; it cannot show that fwtrace's own add and
delete were symmetric (iptables-nft creates base chains implicitly and never deletes them; a
legacy TRACE rule instantiates an x_tables table that cannot be unregistered). So the objects
fwtrace may have touched are listed before the first change and after the undo and compared:

* nf_tables: the list of tables over netlink (tracer/collect/tables.py: handle -- a table deleted
  and made again has a new one --, flags, comment, and the count of chains, sets and objects
  each holds), and with --log the iptables-nft tables of the probe's family it added to in full:
  chains (hook, priority, policy), sets with their elements, rules with their handles and
  positions (`nft -j -s`, stateless). Unrelated tables' rules are not listed.
* x_tables: the tables named in /proc/net/ip*_tables_names, and each chain's policy and rules.
* sysctls fwtrace set: the value read before the change.
* whatever else the undo layers check themselves (tc, links), as ready-made leftovers.

`differences()` names each object that differs and the command that takes it back.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

State = Mapping[str, str]  # object name ("chain ip filter FORWARD") -> canonical content

# Dynamic set elements' timeouts tick down; `nft -s` already drops counters and quotas' use.
_VOLATILE = frozenset({"expires"})
_OBJECT_KINDS = ("set", "map", "flowtable", "counter", "quota", "ct helper", "limit", "ct timeout",
                 "ct expectation", "secmark", "synproxy")


@dataclass(frozen=True)
class Leftover:
    """One object that differs after the undo, and how to put it right."""

    name: str  # "chain ip filter FORWARD"
    change: str  # "left behind" (added by the run), "missing", "changed"
    remedy: str  # a command, or why there is none

    def text(self) -> str:
        return f"{self.name}: {self.change} (remedy: {self.remedy})"


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _canon(obj: Mapping[str, Any]) -> str:
    return json.dumps(_strip(obj), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Scope:
    """What a run may touch, listed before its first change and after its undo."""

    own_table: str  # fwtrace_<runid>: other runs' tables, which come and go by themselves, are skipped
    tables: tuple[tuple[str, str], ...] = ()  # (family, name) listed in full: tables fwtrace adds to
    legacy_families: tuple[str, ...] = ("ip", "ip6")


def nft_objects(listing: str, skip_table: Optional[Callable[[str, str], bool]] = None,
                own_mark: Optional[str] = None) -> dict[str, str]:
    """Objects of `nft -j [-s] list tables|table F T` output. Rules are keyed by handle (the
    kernel's identity of a rule: a rule deleted and added again gets a new one) and carry their
    position in the chain. `skip_table(family, name)` leaves out tables of no interest (another
    fwtrace run's own table, which comes and goes by itself); with `own_mark` ("fwtrace:<runid>"),
    rules marked by another run are left out too."""
    if not listing.strip():
        return {}
    out: dict[str, str] = {}
    positions: dict[tuple[str, str, str], int] = {}
    for item in json.loads(listing).get("nftables", []):
        kind, obj = next(iter(item.items()))
        if kind == "metainfo":
            continue
        family, table = obj.get("family", ""), obj.get("table", obj.get("name", ""))
        if skip_table is not None and skip_table(family, table):
            continue
        if kind == "rule" and own_mark is not None and _foreign(obj, own_mark):
            continue  # another fwtrace run's --log rule: it comes and goes by itself (not counted in positions)
        if kind == "table":
            out[f"table {family} {obj['name']}"] = _canon(obj)
        elif kind == "chain":
            out[f"chain {family} {table} {obj['name']}"] = _canon(obj)
        elif kind == "rule":
            chain = obj.get("chain", "")
            n = positions.get((family, table, chain), 0)
            positions[(family, table, chain)] = n + 1
            out[f"rule {family} {table} {chain} handle {obj.get('handle')}"] = _canon({**obj, "position": n})
        elif kind in _OBJECT_KINDS:
            out[f"{kind} {family} {table} {obj.get('name', obj.get('handle'))}"] = _canon(obj)
        else:  # an object kind this nft knows and fwtrace does not: still compared
            out[f"{kind} {family} {table} {_canon(obj)[:60]}"] = _canon(obj)
    return out


_MARK = re.compile(r"fwtrace:[0-9a-f]{8}")


def _foreign(rule: Mapping[str, Any], own_mark: str) -> bool:
    marks = set(_MARK.findall(json.dumps(rule)))
    return bool(marks) and own_mark not in marks


_COUNTERS = re.compile(r" \[\d+:\d+\]$")


def legacy_objects(family: str, names: str, saved: str) -> dict[str, str]:
    """x_tables objects: each table /proc/net/ip*_tables_names lists (reading it instantiates
    nothing) and each chain of `iptables-legacy-save` output, policy and rules in order."""
    out = {f"x_tables table {family} {t}": "" for t in names.split()}
    table = ""
    chains: dict[tuple[str, str], list[str]] = {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name, policy = (_COUNTERS.sub("", line[1:]).split() + ["-"])[:2]
            chains[(table, name)] = [f"policy {policy}"]
        elif line.startswith("-A "):
            chain = line.split()[1]
            chains.setdefault((table, chain), []).append(line)
    for (t, c), lines in chains.items():
        out[f"x_tables chain {family} {t} {c}"] = "\n".join(lines)
    return out


def sysctl_objects(values: Iterable[tuple[Optional[str], str, Optional[str]]]) -> dict[str, str]:
    """(netns, key, value) -> objects; netns None is the namespace fwtrace runs in."""
    return {f"sysctl {key}" + (f" in {ns}" if ns else ""): value or "(absent)" for ns, key, value in values}


def _prefix(netns: Optional[str]) -> str:
    return f"ip netns exec {netns} " if netns else ""


def _remedy(name: str, before: Optional[str], after: Optional[str], netns: Optional[str]) -> str:
    words = name.split()
    pre = _prefix(netns)
    if words[0] == "x_tables":
        return _legacy_remedy(words, before, after, pre)
    if words[0] == "sysctl":
        ns = name.split(" in ", 1)[1] if " in " in name else None
        return f"`{_prefix(ns)}sysctl -w {words[1]}={before}`" if before is not None else "none needed"
    if after is not None and before is None:  # left behind: delete it
        if words[0] == "rule":
            return f"`{pre}nft delete rule {' '.join(words[1:4])} handle {words[5]}`"
        if words[0] in ("table", "chain", "set", "map", "flowtable", "counter", "quota", "limit"):
            return f"`{pre}nft delete {' '.join(words)}`"
    return f"put it back as listed before the run (`{pre}nft -j list ruleset` shows it now)"


def _legacy_remedy(words: list[str], before: Optional[str], after: Optional[str], pre: str) -> str:
    tool = "iptables-legacy" if words[2] == "ip" else "ip6tables-legacy"
    if words[1] == "table":
        return "none: x_tables cannot unregister a table until its namespace is deleted (it is empty and changes no packet)"
    extra = [line for line in (after or "").splitlines()[1:] if line not in (before or "").splitlines()]
    if extra:
        return "; ".join(f"`{pre}{tool} -t {words[3]} -D {line[3:]}`" for line in extra)
    if after is not None and before is None:
        return f"`{pre}{tool} -t {words[3]} -X {words[4]}`"
    return f"`{pre}{tool}-restore` the table as `{tool}-save` printed it before the run"


def differences(before: State, after: State, netns: Optional[str] = None) -> tuple[Leftover, ...]:
    """Every object whose content differs, in an order its remedies can run in (rules before
    the chains holding them, chains before their tables)."""
    order = {"rule": 0, "x_tables": 1, "set": 2, "map": 2, "chain": 3, "table": 4}
    new_xt = {" ".join(n.split()[2:4]) for n in after if n.startswith("x_tables table ") and n not in before}
    out = []
    for name in sorted(set(before) | set(after), key=lambda n: (order.get(n.split()[0], 2), n)):
        b, a = before.get(name), after.get(name)
        if a == b:
            continue
        if name.startswith("x_tables chain ") and " ".join(name.split()[2:4]) in new_xt and b is None:
            continue  # the built-in chains of a table x_tables instantiated: named by the table
        change = "left behind" if b is None else "missing" if a is None else "changed"
        out.append(Leftover(name, change, _remedy(name, b, a, netns)))
    return tuple(out)
