"""Near misses: the ACCEPT rules that would have let a blocked probe through but for ONE condition.

"I opened it, why didn't my rule match?" For a dropped or rejected probe, every ACCEPT rule that
names the probed service (its port, or its ICMP type) is judged condition by condition
(tracer/ruleset/match/conditions.py) against the packet's facts, together with where the rule sits:
its table's family, the hook its chain hangs on (INPUT vs FORWARD), and the jumps that lead to
its chain (a firewalld zone bound to another interface or source). A rule with exactly one
certainly-failed condition and no unknown one is a near miss; nearest first: chains the packet
went through, then chains of its hook it never entered, then other hooks, then other families.
Pure: no I/O. The fixes are built by tracer/diagnose/nearfix.py.
"""
from __future__ import annotations

import dataclasses
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from tracer.ruleset.match import PacketFacts, rule_action
from tracer.ruleset.match.conditions import Condition, Sets, conditions
from tracer.model import Chain, EventKind, PacketResult, Rule, Ruleset, Table

ChainKey = tuple[str, str, str]
FILTER_HOOKS = ("input", "forward")
_NOTRACK = re.compile(r"(?:^|\s)notrack\b|--notrack\b|-j NOTRACK\b")
# firewalld's zone chains: filter_IN_<zone> and its sub-chains filter_IN_<zone>_allow etc.
# (firewalld src/firewall/core/nftables.py; policies are filter_IN_policy_<name>).
_FWD_ZONE = re.compile(r"^filter_(IN|FWD)_(?!policy_)([A-Za-z0-9-]+?)(?:_(pre|log|deny|allow|post))?$")


@dataclass(frozen=True)
class Where:
    """How the packet relates to one chain: on its path, or how far from it."""

    chain: Chain
    hooks: frozenset[str]  # hooks of the base chains that reach this chain
    entry: tuple[Rule, ...]  # the jump/goto rules leading here from a base chain, outermost first


@dataclass(frozen=True)
class NearMiss:
    rule: Rule
    failed: Condition  # the one condition that failed (kind "chain" / "entry" for placement)
    distance: int  # 0 on the path, 1 unvisited chain of its hook, 2 other hook, 3 other family
    facts: PacketFacts  # the facts the rule was judged on (before or after DNAT)
    entry_rule: Optional[Rule] = None  # kind "entry": the jump rule whose condition failed
    zone: Optional[tuple[str, str]] = None  # firewalld: (zone of the rule, zone the packet lands in)
    zone_why: str = ""  # how the packet is classified into its zone
    unreached: str = ""  # the rule's base chain never saw the packet: what dropped it before ("ip filter INPUT")


def packet_facts(result: PacketResult, pf: PacketFacts) -> PacketFacts:
    """`pf` with what the timeline proves about conntrack: a NOTRACK rule the packet matched
    makes it UNTRACKED, so `--state NEW` can never match it."""
    for s in result.steps:
        if s.rule is not None and rule_action(s.rule) == "continue" and _NOTRACK.search(s.rule.display):
            return dataclasses.replace(pf, ct_state="untracked")
    return pf


def left_at(result: PacketResult) -> dict[ChainKey, Rule]:
    """Chains the packet left for good by a jump or goto: the rule it left by. Its last event in
    the chain is that jump (coming back would show a later rule, a return or the policy), so the
    rules after it were never reached: e.g. firewalld's source-bound zone taken before the
    interface's zone."""
    last: dict[ChainKey, Any] = {}
    for s in result.steps:
        if s.event.kind is not EventKind.CONNTRACK and not s.event.legacy:
            last[(s.event.family, s.event.table, s.event.chain)] = s
    return {k: s.rule for k, s in last.items()
            if s.rule is not None and (s.event.verdict or "").startswith(("jump ", "goto "))}


# Conditions every client of the service meets: a rule with only these (all true) blocks the
# service for everyone, so an ACCEPT may go before it. A source, a set, a source port or anything
# fwtrace cannot judge makes it a targeted block (a ban), which a fix must never jump over.
_CATCH_ALL_KINDS = frozenset({"family", "module", "statement", "proto", "dport", "daddr", "iif", "oif", "state", "icmp"})


def catch_all(rule: Rule, pf: PacketFacts) -> bool:
    return all(c.result is True and c.kind in _CATCH_ALL_KINDS for c in conditions(rule, pf))


def visited(result: PacketResult) -> set[ChainKey]:
    return {(s.event.family, s.event.table, s.event.chain) for s in result.steps
            if s.event.kind is not EventKind.CONNTRACK and not s.event.legacy}


def chain_map(table: Table) -> dict[str, Where]:
    """Every chain of `table` reached from one of its base chains, with the jumps leading there."""
    out: dict[str, Where] = {}
    todo: deque[tuple[Chain, frozenset[str], tuple[Rule, ...]]] = deque(
        (c, frozenset({c.hook}) if c.hook else frozenset(), ()) for c in table.chains if c.is_base)
    by_name = {c.name: c for c in table.chains}
    while todo:
        chain, hooks, entry = todo.popleft()
        old = out.get(chain.name)
        if old is not None:
            if hooks <= old.hooks:
                continue
            hooks, entry = old.hooks | hooks, old.entry  # reached from another hook too: tell its children
        out[chain.name] = Where(chain, hooks, entry)
        for r in chain.rules:
            act = rule_action(r)
            if act.startswith(("jump ", "goto ")):
                target = by_name.get(act.split(" ", 1)[1])
                if target is not None and len(entry) < 8:
                    todo.append((target, hooks, entry + (r,)))
    return out


def near_misses(result: PacketResult, ruleset: Ruleset, pf: PacketFacts, original: PacketFacts,
                sets: Optional[Sets] = None) -> list[NearMiss]:
    """The near misses for a blocked packet, nearest first. `pf`: the facts as the filter chains
    saw them (after DNAT); `original`: as sent (an INPUT rule for a forwarded packet is written
    for the address and port the client used); `sets`: the elements of nft named sets."""
    pf, original = packet_facts(result, pf), dataclasses.replace(original, ct_state=packet_facts(result, pf).ct_state)
    seen = visited(result)
    path_hooks = {h for h in result.path if h in FILTER_HOOKS}
    if not path_hooks:
        return []
    out: list[NearMiss] = []
    maps: dict[tuple[str, str, bool], dict[str, Where]] = {}
    gone = left_at(result)
    for table in ruleset.tables:
        if table.family not in ("ip", "ip6", "inet") or table.name.startswith("fwtrace_"):
            continue
        cmap = maps.setdefault((table.family, table.name, table.backend.value == "iptables-legacy"), chain_map(table))
        for where in cmap.values():
            if not where.hooks & set(FILTER_HOOKS):
                continue
            for rule in where.chain.rules:
                nm = _judge(result, rule, where, seen, path_hooks, pf, original, sets, gone)
                if nm is not None:
                    out.append(nm)
    out.sort(key=lambda n: (n.distance, n.rule.family, n.rule.table, n.rule.chain, n.rule.number))
    return [_unreached(result, ruleset, n, seen, maps) for n in _zones(result, ruleset, out)]


def _unreached(result: PacketResult, ruleset: Ruleset, n: NearMiss, seen: set[ChainKey],
               maps: dict[tuple[str, str, bool], dict[str, Where]]) -> NearMiss:
    """Every nf_tables base chain a traced packet passes reports at least its policy, so a base
    chain on the packet's hook without any event never saw it: an earlier one dropped it."""
    ref = result.decided_by
    table = ruleset.table(n.rule.family, n.rule.table)
    if ref is None or ref.legacy or table is None or table.backend.value == "iptables-legacy" or n.distance > 1:
        return n
    where = maps.get((table.family, table.name, False), {}).get(n.rule.chain)
    if where is None:
        return n
    base = where.entry[0].chain if where.entry else where.chain.name
    if (n.rule.family, n.rule.table, base) in seen or (ref.family, ref.table) == (n.rule.family, n.rule.table):
        return n
    return dataclasses.replace(n, unreached=f"{ref.family} {ref.table} {ref.chain}")


def _judge(result: PacketResult, rule: Rule, where: Where, seen: set[ChainKey], path_hooks: set[str],
           pf: PacketFacts, original: PacketFacts, sets: Optional[Sets], gone: dict[ChainKey, Rule]) -> Optional[NearMiss]:
    if rule_action(rule) != "accept":
        return None
    key = (rule.family, rule.table, rule.chain)
    on_hook = bool(where.hooks & path_hooks)
    candidates = [pf] if on_hook or pf == original else [original, pf]
    best: Optional[tuple[list[Condition], PacketFacts]] = None
    for facts in candidates:
        conds = conditions(rule, facts, sets)
        if any(c.result is None for c in conds) or not _for_service(conds, facts):
            continue
        fails = [c for c in conds if c.result is False]
        if not on_hook:
            hook = sorted(where.hooks & set(FILTER_HOOKS))[0]
            fails.append(Condition(f"chain {rule.chain} (hook {hook})", "chain", False, value=hook))
        entry_fail: Optional[Rule] = None
        if on_hook and key not in seen and not _is_base(where):
            for jump in where.entry:
                left = gone.get((jump.family, jump.table, jump.chain))
                if left is not None and left.number < jump.number:
                    fails.append(Condition(f"`{jump.display}` is never reached: the packet left {jump.chain} at rule "
                                           f"{left.number} `{left.display}`", "entry", False))
                    entry_fail = jump
                jc = [c for c in conditions(jump, facts, sets) if c.kind != "family"]
                if any(c.result is None for c in jc):
                    fails.append(Condition(f"the jump `{jump.display}`", "entry", None))
                for c in jc:
                    if c.result is False:
                        fails.append(dataclasses.replace(c, kind="entry"))
                        entry_fail = jump
        if len(fails) == 1 and fails[0].result is False and (best is None or len(fails) < len(best[0])):
            best = (fails, facts)
            if fails[0].kind == "entry":
                return _miss(rule, fails[0], where, seen, on_hook, facts, entry_fail)
    if best is None:
        return None
    return _miss(rule, best[0][0], where, seen, on_hook, best[1], None)


def _is_base(where: Where) -> bool:
    return where.chain.is_base


def _miss(rule: Rule, cond: Condition, where: Where, seen: set[ChainKey], on_hook: bool, facts: PacketFacts,
          entry_rule: Optional[Rule]) -> NearMiss:
    key = (rule.family, rule.table, rule.chain)
    if cond.kind == "family":
        distance = 3
    elif not on_hook:
        distance = 2
    elif key in seen or where.chain.is_base:
        distance = 0
    else:
        distance = 1
    return NearMiss(rule, cond, distance, facts, entry_rule)


def _for_service(conds: Iterable[Condition], pf: PacketFacts) -> bool:
    """The rule names this service: a destination port (or ICMP type) condition that holds, or
    that fails only narrowly (a range or list just missing it, a one-character typo). A rule
    without one (`-i lo -j ACCEPT`, an ESTABLISHED rule, a trusted network) is about other
    traffic, and changing its one failed condition would open more than the probed service."""
    for c in conds:
        if c.kind == "icmp" and c.result is True:
            return True
        if c.kind == "dport" and not c.negated and (c.result is True or _port_close(c.value, pf.dport)):
            return True
    return False


def _port_close(spec: str, port: int) -> bool:
    values = [v.strip() for v in re.split(r"[,{} ]+", spec) if v.strip()]
    for v in values:
        lo, sep, hi = (v.partition(":") if ":" in v else v.partition("-"))
        if sep and lo.isdigit() and hi.isdigit():
            if abs(port - int(lo)) <= 1 or abs(port - int(hi)) <= 1:
                return True
        elif v.isdigit() and _one_edit(v, str(port)):
            return True
    return False


def _one_edit(a: str, b: str) -> bool:
    """Same digits but one (changed, added, dropped or two swapped): 8081/8080, 808/8080, 8008/8080."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = sorted((a, b), key=len)
    return len(long_) - len(short) == 1 and any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


# ---------------------------------------------------------------------------------------------
# firewalld zones


def landing_zone(result: PacketResult, hook: str = "IN") -> Optional[tuple[str, str]]:
    """(zone, why) of the firewalld zone chain the packet went into, from its timeline."""
    for s in result.steps:
        verdict = s.event.verdict or ""
        if not verdict.startswith(("jump ", "goto ")):
            continue
        m = _FWD_ZONE.match(verdict.split(" ", 1)[1])
        if m is None or m.group(1) != hook or m.group(3):
            continue
        text = s.rule.display if s.rule is not None else ""
        if "iifname" in text or " -i " in f" {text}":
            why = f"interface binding: `{_cut_verdict(text)}`"
        elif "saddr" in text or " -s " in f" {text}":
            why = f"source binding: `{_cut_verdict(text)}`"
        else:
            why = "no interface or source binding matched, so the default zone"
        return m.group(2), why
    return None


def _cut_verdict(text: str) -> str:
    return re.split(r"\s+(?:jump|goto)\s", text)[0].strip()


def _zones(result: PacketResult, ruleset: Ruleset, misses: list[NearMiss]) -> list[NearMiss]:
    out = []
    for n in misses:
        m = _FWD_ZONE.match(n.rule.chain)
        if m is not None and n.failed.kind == "entry":
            land = landing_zone(result, m.group(1))
            if land is not None and land[0] != m.group(2):
                n = dataclasses.replace(n, zone=(m.group(2), land[0]), zone_why=land[1])
        out.append(n)
    return out
