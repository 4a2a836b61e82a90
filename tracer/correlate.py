"""Turn raw trace events and captured replies into one verdict timeline per probe packet. No I/O.

Trace events arrive grouped by the kernel's per-packet trace id. A group belongs to a probe when
one of its events carries the probe's headers (addresses, port / echo id, and the random IPv4 id
or IPv6 flow label fwtrace put in it); a group belongs to the probe's reply when its headers are
addressed back to the probe's source port. Everything else is somebody else's traffic.
"""
from __future__ import annotations

from typing import Iterable, Optional

from .match import rule_action
from .model import (
    EventKind,
    PacketResult,
    PacketSpec,
    Proto,
    Reply,
    RuleRef,
    Ruleset,
    Step,
    TraceEvent,
    Verdict,
)
from .nftrace import Headers, parse_headers
from .plan import DELIVERED, TABLE_PREFIX, Roles, hook_of_chain

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
    for ev in events:
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
    chain = ruleset.chain(ev.family, ev.table, ev.chain)
    return chain.hook if chain is not None else None


def timeline(events: list[TraceEvent], ruleset: Ruleset) -> tuple[list[Step], list[str]]:
    """Steps outside fwtrace's own table, joined with their rules, and the hooks met in order."""
    steps: list[Step] = []
    path: list[str] = []
    for ev in events:
        hook = hook_of(ruleset, ev)
        if hook is not None and (not path or path[-1] != hook):
            path.append(hook)
        if ev.table.startswith(TABLE_PREFIX):
            continue
        rule = None
        if ev.kind is EventKind.RULE and ev.handle is not None:
            rule = ruleset.rule_by_handle(ev.family, ev.table, ev.chain, ev.handle)
        steps.append(Step(ev, rule))
    return steps, path


def delivered(events: list[TraceEvent]) -> bool:
    """Did the packet's trace end in one of our end-of-hook chains (through netfilter)?"""
    last = events[-1] if events else None
    return last is not None and last.table.startswith(TABLE_PREFIX) and last.chain in DELIVERED


def decide(steps: list[Step], ruleset: Ruleset, traced: bool, through: bool = True) -> tuple[Verdict, Optional[RuleRef]]:
    """The verdict and what decided it: the first drop, or else the last accept if the packet
    got `through` netfilter; a packet that vanished without a drop has no netfilter verdict."""
    last_accept: Optional[Step] = None
    for step in steps:
        ev = step.event
        if ev.kind is EventKind.RETURN or ev.verdict is None:
            continue
        word = ev.verdict.split()[0]
        if word == "drop":
            verdict = Verdict.DROP
            if step.rule is not None and rule_action(step.rule) == "reject":
                verdict = Verdict.REJECT
            return verdict, _ref(step, ruleset)
        if word == "accept":
            last_accept = step
    if not through:
        return Verdict.UNKNOWN, None
    if last_accept is not None:
        return Verdict.ACCEPT, _ref(last_accept, ruleset)
    # Traced by our own table but met no other chain: nothing in netfilter stopped it.
    return (Verdict.ACCEPT if traced else Verdict.UNKNOWN), None


def _ref(step: Step, ruleset: Ruleset) -> RuleRef:
    ev = step.event
    if ev.kind is EventKind.POLICY:
        chain = ruleset.chain(ev.family, ev.table, ev.chain)
        policy = (ev.verdict or (chain.policy if chain else None) or "?").split()[0]
        return RuleRef(ev.family, ev.table, ev.chain, None, policy)
    return RuleRef(ev.family, ev.table, ev.chain, step.rule)


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
    verdict, ref = decide(steps, ruleset, traced=bool(probe_events), through=delivered(probe_events))
    if reply is None:
        reply = traced_reply(reply_events, spec)
        if reply is not None:
            reply_summary = "seen in the trace of OUTPUT, not captured"
    r = classify_reply(reply, spec)
    return PacketResult(
        spec, verdict, ref, Reply(r.kind, reply_summary), tuple(steps), tuple(path), tuple(reply_steps)
    )
