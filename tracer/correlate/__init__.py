"""Turn raw trace events and captured replies into one verdict timeline per probe packet. No I/O.

Trace events arrive grouped by the kernel's per-packet trace id. A group belongs to a probe when
one of its events carries the probe's headers (addresses, port / echo id, and the random IPv4 id
or IPv6 flow label fwtrace put in it); a group belongs to the probe's reply when its headers are
addressed back to the probe's source port. Everything else is somebody else's traffic.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from tracer.correlate import basechains
from tracer.model import (
    EventKind,
    PacketResult,
    PacketSpec,
    Proto,
    Reply,
    Rule,
    RuleRef,
    Ruleset,
    Step,
    TraceEvent,
    Verdict,
)
from tracer.packet import Headers, parse_headers
from tracer.ruleset.hooks import base_chain_of, priority_value  # noqa: F401  priority_value re-exported
from tracer.plan.plan import (
    DELIVERED,
    END_CHAINS,
    END_PRIORITY,
    TABLE_PREFIX,
    Roles,
    hook_of_chain,
)
from tracer.collect.nftrace import without_policy_returns

_IPPROTO = {Proto.TCP: 6, Proto.UDP: 17}
_ICMP4_UNREACH = {0: "net-unreachable", 1: "host-unreachable", 2: "prot-unreachable", 3: "port-unreachable",
                  9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
_ICMP6_UNREACH = {0: "no-route", 1: "admin-prohibited", 3: "addr-unreachable", 4: "port-unreachable",
                  5: "policy-fail", 6: "reject-route"}
_ICMP4_TYPES = {0: "echo-reply", 3: "destination-unreachable", 11: "time-exceeded", 12: "parameter-problem"}
_ICMP6_TYPES = {129: "echo-reply", 1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded",
                4: "parameter-problem"}


def _icmp_proto(spec: PacketSpec) -> int:
    return 1 if spec.family == 4 else 58


def is_probe(h: Headers, spec: PacketSpec) -> bool:
    if h.src != spec.src or h.ident != spec.ident:
        return False
    if spec.proto is Proto.ICMP:
        return h.proto == _icmp_proto(spec) and h.icmp_id == spec.sport and h.sport in (8, 128)
    return h.proto == _IPPROTO[spec.proto] and h.sport == spec.sport


def is_reply(h: Headers, spec: PacketSpec) -> bool:
    if h.dst != spec.src:
        return False
    if h.proto == _icmp_proto(spec):
        if h.inner is not None:  # an ICMP error quoting the probe
            return is_probe(h.inner, spec) or (
                h.inner.src == spec.src and h.inner.sport == spec.sport and spec.proto is not Proto.ICMP
            )
        return spec.proto is Proto.ICMP and h.sport in (0, 129) and h.icmp_id == spec.sport
    return spec.proto is not Proto.ICMP and h.proto == _IPPROTO[spec.proto] and h.dport == spec.sport


def without_handles(events: list[TraceEvent], own: "frozenset[tuple[str, str, int]] | set[tuple[str, str, int]]") -> list[TraceEvent]:
    """Drop nftrace events of rules fwtrace itself inserted into the user's chains (LOG/NFLOG
    rules in iptables-nft tables): the rule's own log event stands for it."""
    return [e for e in events if e.handle is None or (e.family, e.table, e.handle) not in own]


def _key(h: Headers) -> tuple[object, ...]:
    return (h.proto, h.ident)  # NAT rewrites addresses and ports, never these


def split_events(
    events: Iterable[TraceEvent], spec: PacketSpec, roles: Optional[Roles] = None
) -> tuple[list[TraceEvent], list[TraceEvent]]:
    """(events of the probe packet, events of its replies), each in arrival order.

    The kernel's trace id is derived from the skb's address, so a later packet in a recycled
    skb gets the same id: the id only groups events between two header dumps. A packet's trace
    always starts with the rule that set its trace flag, and rule events carry the headers, so
    each header dump (re)decides whose packet this is; events without headers (policies) follow
    the last dump of their id. Which of fwtrace's own chains set the flag says it best (an ICMP
    error's quoted packet is not in the dump); otherwise the headers are matched.
    """
    probe: list[TraceEvent] = []
    reply: list[TraceEvent] = []
    current: dict[int, tuple[Optional[str], Optional[tuple[object, ...]]]] = {}
    for ev in without_policy_returns(list(events)):
        role, key = current.get(ev.trace_id, (None, None))
        h = parse_headers(ev.packet) if ev.packet else None
        if h is not None:
            entry = roles.get((ev.table, ev.chain)) if roles else None  # another run's table: not ours
            if entry is not None and ev.kind is EventKind.RULE:
                role = entry.role if spec.ident in entry.idents else None
            elif is_probe(h, spec):
                role = "probe"
            elif is_reply(h, spec):
                role = "reply"
            elif _key(h) != key:  # same id, other headers: another packet (or NAT seen earlier)
                role = None
            current[ev.trace_id] = (role, _key(h))
        if role == "probe":
            probe.append(ev)
        elif role == "reply":
            reply.append(ev)
    return probe, reply


def traced_reply(reply_events: list[TraceEvent], spec: PacketSpec) -> Optional[Headers]:
    """A reply that was not captured (still queued for ARP, or dropped on its way out on purpose)
    still left its headers in the trace of its way through OUTPUT: as good for telling its kind."""
    for ev in reply_events:
        h = parse_headers(ev.packet) if ev.packet else None
        if h is not None and is_reply(h, spec):
            return h
    return None


def reply_kind(spec: PacketSpec, events: list[TraceEvent], captured: Optional[Headers], roles: Optional[Roles] = None) -> str:
    """The kind of the probe's reply, captured or else traced, before any ruleset is read."""
    if captured is None:
        captured = traced_reply(split_events(events, spec, roles)[1], spec)
    return classify_reply(captured, spec).kind


def classify_reply(h: Optional[Headers], spec: PacketSpec) -> Reply:
    if h is None:
        return Reply("none")
    if h.proto == 6:
        if h.tcp_flags & 0x12 == 0x12:
            return Reply("syn-ack")
        if h.tcp_flags & 0x04:
            return Reply("rst")
        return Reply(f"tcp flags 0x{h.tcp_flags:02x}")
    if h.proto == 17:
        return Reply("udp")
    names, unreach, v = (_ICMP4_TYPES, _ICMP4_UNREACH, "icmp") if h.proto == 1 else (_ICMP6_TYPES, _ICMP6_UNREACH, "icmpv6")
    if h.sport in (0, 129):
        return Reply("echo-reply")
    name = unreach.get(h.dport) if h.sport == (3 if h.proto == 1 else 1) else None
    return Reply(f"{v} {h.sport}/{h.dport} {name or names.get(h.sport, 'unknown')}")


def hook_of(ruleset: Ruleset, ev: TraceEvent) -> Optional[str]:
    if ev.table.startswith(TABLE_PREFIX):
        return hook_of_chain(ev.chain)
    if ev.kind in (EventKind.LOG, EventKind.CONNTRACK):
        return None
    chain = ruleset.chain(ev.family, ev.table, ev.chain, ev.legacy)
    if chain is None and ev.legacy:
        return ev.hook  # a built-in chain of a table fwtrace instantiated for TRACE
    return chain.hook if chain is not None else None


_INBOUND = ("ingress", "prerouting", "input", "forward", "postrouting")
_LOCAL = ("output", "postrouting", "ingress", "prerouting", "input")


def _base_key(ruleset: Ruleset, ev: TraceEvent, hook: str, order: tuple[str, ...]) -> tuple[int, int]:
    if ev.table.startswith(TABLE_PREFIX):  # tracing chains first, end-of-hook chains last
        return order.index(hook), END_PRIORITY if ev.chain in END_CHAINS else -(2**31)
    base = base_chain_of(ruleset, ev)  # called for events of base chains only (hook_of)
    return order.index(hook), base[1] if base is not None else 0


def merge_sources(events: list[TraceEvent], ruleset: Ruleset) -> list[TraceEvent]:
    """One packet's events from nftrace and the kernel log, in the order the packet met them.

    Each source is in order by itself; between them, netfilter runs the base chains of a hook
    by priority (x_tables tables register at NF_IP_PRI_*, nft chains at theirs), so events are
    ordered by (hook, priority). Regular chains and conntrack lines take the place of the event
    before them in their own source. A LOG/NFLOG rule sits at the top of its chain: its event
    goes first in that chain, before the tracing source's events there (iptables-nft chains
    are traced by nftrace but logged through the kernel log or NFLOG). Ties keep arrival order.
    """
    if len({e.source for e in events}) < 2:
        return events
    hooks = [hook_of(ruleset, e) for e in events]
    order = _LOCAL if any(h == "output" for h in hooks) else _INBOUND
    Key = tuple[int, int, float]
    keys: list[Optional[Key]] = []
    anchors: dict[int, int] = {}  # LOG event index -> index of the first other-source event in its chain
    last: dict[str, Key] = {}
    for i, (ev, hook) in enumerate(zip(events, hooks)):
        key: Optional[Key] = None
        if ev.kind is EventKind.LOG and not (ev.legacy and ev.source == "kmsg"):
            # Logged by another source than the one tracing its chain (LOG lines of iptables-nft
            # chains, NFLOG packets of any chain): placed at the top of that chain.
            chain = ruleset.chain(ev.family, ev.table, ev.chain, ev.legacy)
            if chain is not None and chain.hook in order:
                key = (*_base_key(ruleset, ev, chain.hook, order), -1.0)
            else:
                j = next((j for j, o in enumerate(events) if o.source != ev.source and o.kind is not EventKind.LOG
                          and (o.family, o.table, o.chain, o.legacy) == (ev.family, ev.table, ev.chain, ev.legacy)),
                         None)
                if j is not None:
                    anchors[i] = j
                    keys.append(None)
                    continue
        elif hook in order:
            key = (*_base_key(ruleset, ev, hook, order), float(i))
            last[ev.source] = key
        elif ev.kind is EventKind.CONNTRACK:
            prev = last.get(ev.source, (0, 0, 0.0))
            key = (prev[0], -200, float(i))  # conntrack runs at NF_IP_PRI_CONNTRACK
        if key is None:
            prev = last.get(ev.source, (0, -10**6, 0.0))
            key = (prev[0], prev[1], float(i))
            if ev.kind is not EventKind.LOG:
                last[ev.source] = key
        keys.append(key)
    for i, j in anchors.items():
        a = keys[j] or (0, 0, float(j))
        keys[i] = (a[0], a[1], a[2] - 0.5)
    ranked = sorted(range(len(events)), key=lambda i: keys[i] or (0, 0, float(i)))
    return [events[i] for i in ranked]


def _rule_of(ruleset: Ruleset, ev: TraceEvent) -> Optional[Rule]:
    if ev.kind is not EventKind.RULE:
        return None
    if ev.legacy and ev.number is not None:
        return ruleset.rule_by_number(ev.family, ev.table, ev.chain, ev.number, legacy=True)
    if ev.handle is not None:
        return ruleset.rule_by_handle(ev.family, ev.table, ev.chain, ev.handle)
    return None


def timeline(events: list[TraceEvent], ruleset: Ruleset) -> tuple[list[Step], list[str]]:
    """Steps outside fwtrace's own table, joined with their rules, and the hooks met in order."""
    steps: list[Step] = []
    path: list[str] = []
    for ev in merge_sources(events, ruleset):
        hook = hook_of(ruleset, ev)
        if hook is not None and (not path or path[-1] != hook):
            path.append(hook)
        if ev.table.startswith(TABLE_PREFIX):
            continue
        if ev.legacy and ruleset.chain(ev.family, ev.table, ev.chain, True) is None:
            continue  # the raw table fwtrace's TRACE rules instantiated: not the user's
        if ev.ct_state == "invalid" and _before_conntrack(ruleset, ev, hook):
            ev = dataclasses.replace(ev, ct_state=None)  # "no entry yet", not INVALID
        steps.append(Step(ev, _rule_of(ruleset, ev)))
    return steps, path


_CONNTRACK_PRIORITY = -200  # NF_IP_PRI_CONNTRACK: conntrack runs here on prerouting and output


def _before_conntrack(ruleset: Ruleset, ev: TraceEvent, hook: Optional[str]) -> bool:
    if hook == "ingress":
        return True
    chain = ruleset.chain(ev.family, ev.table, ev.chain, ev.legacy)
    return hook in ("prerouting", "output") and chain is not None and priority_value(chain.priority) < _CONNTRACK_PRIORITY


def delivered(events: list[TraceEvent]) -> bool:
    """Did the packet's trace end in one of our end-of-hook chains (through netfilter)? Only
    nftrace events count: kernel-log and NFLOG events arrive later, whatever their place."""
    traced = [e for e in events if e.source == "nftrace"]
    last = traced[-1] if traced else None
    return last is not None and last.table.startswith(TABLE_PREFIX) and last.chain in DELIVERED


def decide(steps: list[Step], ruleset: Ruleset, traced: bool, through: bool = True) -> tuple[Verdict, Optional[RuleRef]]:
    """The verdict and what decided it, from the base chains' outcomes (tracer.correlate.basechains)."""
    return basechains.decide(basechains.outcomes(steps, ruleset), ruleset, traced, through)


def packet_result(
    spec: PacketSpec,
    events: list[TraceEvent],
    ruleset: Ruleset,
    reply: Optional[Headers],
    reply_summary: str = "",
    roles: Optional[Roles] = None,
) -> PacketResult:
    probe_events, reply_events = split_events(events, spec, roles)
    steps, path = timeline(probe_events, ruleset)
    reply_steps, _ = timeline(reply_events, ruleset)
    hooks = basechains.outcomes(steps, ruleset)
    verdict, ref = basechains.decide(hooks, ruleset, traced=bool(probe_events), through=delivered(probe_events))
    reply_hooks = basechains.outcomes(reply_steps, ruleset)
    # A reply counts only once it leaves: captured beyond netfilter, or traced through it.
    captured = reply is not None
    reply_verdict, reply_ref = basechains.decide(reply_hooks, ruleset, traced=bool(reply_events),
                                                 through=captured or delivered(reply_events))
    if captured and reply_verdict is Verdict.UNKNOWN:
        reply_verdict = Verdict.ACCEPT
    if reply is None:
        reply = traced_reply(reply_events, spec)
        if reply is not None:
            reply_summary = "seen in the trace of OUTPUT, not captured"
            if reply_verdict in (Verdict.DROP, Verdict.REJECT) and reply_ref is not None:
                chain = reply_ref.chain if reply_ref.table == "filter" else f"{reply_ref.family} {reply_ref.table} {reply_ref.chain}"
                reply_summary = f"dropped on its way out by {chain} {_what(reply_ref)}"
    r = classify_reply(reply, spec)
    return PacketResult(
        spec, verdict, ref, Reply(r.kind, reply_summary, captured or r.none), tuple(steps), tuple(path), tuple(reply_steps),
        hooks=tuple(hooks), reply_verdict=reply_verdict if not r.none else Verdict.UNKNOWN,
        reply_decided_by=reply_ref if not r.none else None, reply_hooks=tuple(reply_hooks),
    )


def _what(ref: RuleRef) -> str:
    return f"rule {ref.rule.number}" if ref.rule is not None else f"policy {(ref.policy or '?').upper()}"
