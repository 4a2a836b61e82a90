"""What a block the packet met is for (general, source, limit, restricted): Block and block_of
(moved whole from tracer/diagnose/safe.py). Pure: no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from tracer.diagnose.context import Probe
from tracer.ruleset.match.conditions import conditions
from tracer.ruleset.match.scope import Narrowing, narrowings
from tracer.model import EventKind, Rule, RuleRef, Step
from tracer.diagnose.nearmiss import NearMiss, left_at


# firewalld's chains that sort packets into zones by source or interface (1.x: *_ZONES, iptables
# backend *_ZONES_SOURCE; 2.x: filter_INPUT_POLICIES, whose `ip saddr RANGE reject` is a source
# zone's target): a source there is a zone binding, not a ban.
_ZONE_DISPATCH = re.compile(r"_(?:ZONES(?:_SOURCE)?|POLICIES)$")
RATE = ("recent", "limit", "hashlimit", "connlimit")


@dataclass(frozen=True)
class Block:
    intent: str
    ns: tuple[Narrowing, ...] = ()  # what makes it a targeted block
    at: Optional[RuleRef] = None  # a client fix goes before at.rule in at's chain (rule None: appended)
    carrier: Optional[Rule] = None  # the rule holding the narrowing, when not the deciding rule (a jump, a meter)
    allowed: tuple[str, ...] = ()  # restricted: the sources the service is open for
    allow_rule: Optional[Rule] = None
    unreached: tuple[NearMiss, ...] = ()  # accepts for the packet never reached: the deciding rule comes first


# ---------------------------------------------------------------------------------------------
# The intent


def call_path(p: Probe) -> list[Rule]:
    """The jump rules that led into the deciding chain, innermost first."""
    ref = p.result.decided_by
    if ref is None:
        return []
    out: list[Rule] = []
    chain = ref.chain
    steps = [s for s in p.result.steps if s.event.kind is not EventKind.CONNTRACK and s.rule is not None
             and (s.event.family, s.event.table) == (ref.family, ref.table)]
    i = len(steps)
    while True:
        j = next((k for k in range(i - 1, -1, -1) if _jumps_to(steps[k], chain)), None)
        if j is None:
            return out
        rule = steps[j].rule
        assert rule is not None
        out.append(rule)
        chain, i = steps[j].event.chain, j


def _jumps_to(step: Step, chain: str) -> bool:
    v = (step.event.verdict or "").split()
    return len(v) == 2 and v[0] in ("jump", "goto") and v[1] == chain


def block_of(p: Probe, misses: Sequence[NearMiss] = ()) -> Optional[Block]:
    ref = p.result.decided_by
    if not p.blocked or ref is None:
        return None
    unreached = tuple(nm for nm in misses if _decided_first(p, nm))
    own = narrowings(ref.rule, p.iif, p.oif) if ref.rule is not None else ()
    if ref.table == "firewalld" and _ZONE_DISPATCH.search(ref.chain):
        own = tuple(n for n in own if n.kind not in ("source", "set"))
    carriers: list[tuple[RuleRef, Optional[Rule], tuple[Narrowing, ...]]] = [(ref, None, own)]
    for jump in call_path(p):
        if jump.table == "firewalld" and _ZONE_DISPATCH.search(jump.chain):
            continue  # firewalld sorting packets into zones by source: a classification, not a ban
        at = RuleRef(jump.family, jump.table, jump.chain, jump, backend=ref.backend)
        carriers.append((at, jump, narrowings(jump, p.iif, p.oif)))
    for kinds, intent in ((RATE, "limit"), (("source", "set"), "source")):
        for at, carrier, ns in carriers:
            hit = tuple(n for n in ns if n.kind in kinds and not (intent == "source" and n.negated))
            if hit:
                return Block(intent, hit, at, carrier, unreached=unreached)
    for at, carrier, ns in carriers:
        allow = tuple(n for n in ns if n.kind in ("source", "set") and n.negated)
        if allow:
            return Block("restricted", allow, at, carrier, tuple(n.value or f"@{n.name}" for n in allow),
                         unreached=unreached)
    if ref.table == "firewalld" and ref.chain.endswith("_deny") and ref.rule is not None:
        # firewalld's deny chains hold the drop/reject rich rules of a zone or policy: deliberate
        return Block("restricted", own, ref, unreached=unreached)
    if own:  # narrowed by something else (a mark, the time, the address type): blocked-by-rule says it
        return Block("general", own, ref, unreached=unreached)
    meter = _fell_through(p)
    if meter is not None:
        rule, ns = meter
        return Block("limit", ns, RuleRef(rule.family, rule.table, rule.chain, rule, backend=ref.backend), rule,
                     unreached=unreached)
    srcs = [nm for nm in misses if nm.failed.kind == "saddr" and not nm.unreached and not nm.failed.negated]
    if srcs:
        return Block("restricted", (), ref, None, tuple(dict.fromkeys(nm.failed.value for nm in srcs)),
                     srcs[0].rule, unreached=unreached)
    return Block("general", (), ref, unreached=unreached)


def _fell_through(p: Probe) -> Optional[tuple[Rule, tuple[Narrowing, ...]]]:
    """An ACCEPT for this service in a chain the packet met, all of whose conditions hold or are
    a limit: the limit is why it did not accept (the nft meter before a policy drop)."""
    met = {(s.event.family, s.event.table, s.event.chain) for s in p.result.steps}
    rules = p.ctx.ruleset.rules() if hasattr(p.ctx.ruleset, "rules") else ()
    for rule in rules:
        if (rule.family, rule.table, rule.chain) not in met or not rule.text.rstrip().endswith(("accept", "ACCEPT")):
            continue
        ns = tuple(n for n in narrowings(rule, p.iif, p.oif) if n.kind in RATE)
        if not ns:
            continue
        conds = conditions(rule, p.facts)
        if any(c.result is False for c in conds) or not any(c.kind == "dport" and c.result is True for c in conds):
            continue
        return rule, ns
    return None


def _decided_first(p: Probe, nm: NearMiss) -> bool:
    """The near miss's rule would have accepted, but the packet left the chain that leads to it at
    the deciding rule's jump: none of its own conditions failed, the deciding rule came first."""
    if nm.failed.kind != "entry" or nm.entry_rule is None or nm.zone is not None:
        return False
    e = nm.entry_rule
    left = left_at(p.result).get((e.family, e.table, e.chain))
    return left is not None and left.number < e.number
