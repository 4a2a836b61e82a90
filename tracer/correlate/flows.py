"""`fwtrace watch`: trace events of real traffic grouped into packets and flows (pure, no I/O).

Every traced packet's trace starts in the chain of fwtrace's that set its flag (tracer/plan/watchplan.py:
entry 0 the client's packets, entry 1 the answers), with its headers; the events that follow with
the same trace id are that packet's, whatever NAT does to its headers later. A flow is the client
side's 5-tuple (protocol, source, source port / echo id, destination, port) as the client sent it;
an answer joins the flow it answers (its 5-tuple reversed) or, across NAT, the flow of the same
conntrack entry: the trace names the entry's id (Linux 6.16+) once conntrack has seen the packet,
so a DNATed flow's answers (from the backend's address and port: another 5-tuple) join the
client's flow. Answers that are neither wait (bounded) for their entry, and are left out if
it never comes: the watch's filter does not cover them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable, Optional

from tracer.model import EventKind, PacketSpec, Proto, TraceEvent
from tracer.packet import Headers, parse_headers
from tracer.plan.plan import DELIVERED, TABLE_PREFIX

FlowKey = tuple[str, str, int, str, int]  # proto, src, sport, dst, dport (as the client sent it)
_PROTO = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMP}
_TCP_FLAGS = "FSRPAUEC"
KEEP = 8  # packets kept per flow and direction (Flows.trim), and per waiting answer's 5-tuple
FOLLOWED = 1024  # trace ids followed at once (Flows._follow)
WAITING = 256  # answers' 5-tuples waiting for their flow (across NAT) at most
KERNEL_WAIT = 256  # eBPF events waiting for their packet's trace at most


def flow_key(h: Headers, reply: bool = False) -> Optional[FlowKey]:
    proto = _PROTO.get(h.proto)
    if proto is None:
        return None
    if proto is Proto.ICMP:
        if h.inner is not None:  # an ICMP error: the flow of the packet it quotes
            return flow_key(h.inner)
        if h.sport in (8, 128) and not reply:
            return (proto.value, str(h.src), h.icmp_id, str(h.dst), 0)
        if h.sport in (0, 129) and reply:
            return (proto.value, str(h.dst), h.icmp_id, str(h.src), 0)
        return None
    if reply:
        return (proto.value, str(h.dst), h.dport, str(h.src), h.sport)
    return (proto.value, str(h.src), h.sport, str(h.dst), h.dport)


def flags(h: Headers) -> str:
    return "".join(c for i, c in enumerate(_TCP_FLAGS) if h.tcp_flags & (1 << i))


@dataclass
class Packet:
    """One traced packet: its first headers and every event of it, in order."""

    headers: Headers
    reply: bool
    events: list[TraceEvent] = field(default_factory=list)
    key: Optional[FlowKey] = None  # the flow it is in (or waits for, an answer across NAT)
    ct_id: Optional[int] = None  # its conntrack entry, once a trace event of it named one

    @property
    def quick(self) -> str:
        """Its fate as the events alone tell it, before the rules are read: dropped or rejected by
        a rule (or a policy), through netfilter to local delivery / out of the box, or unknown."""
        for e in self.events:
            if e.table.startswith(TABLE_PREFIX):
                continue
            a = (e.verdict or "").split(" ")[0]
            if a in ("drop", "reject") or (e.kind is EventKind.POLICY and a == "drop"):
                return "drop"
        if any(e.table.startswith(TABLE_PREFIX) and e.chain in DELIVERED for e in self.events):
            return "accept"
        return "unknown"

    @property
    def spec(self) -> PacketSpec:
        h = self.headers
        proto = _PROTO[h.proto]
        if proto is Proto.ICMP:
            return PacketSpec(proto, h.src, h.dst, h.icmp_id, 0, "", h.ident)
        return PacketSpec(proto, h.src, h.dst, h.sport, h.dport, flags(h) if proto is Proto.TCP else "", h.ident)


@dataclass
class Flow:
    key: FlowKey
    first: float
    last: float
    packets: list[Packet] = field(default_factory=list)  # traced ones
    replies: list[Packet] = field(default_factory=list)
    captured: int = 0  # seen by the receive-side capture
    otherhost: int = 0  # ... addressed to another link-layer address (the kernel drops those before netfilter)
    interfaces: set[str] = field(default_factory=set)  # where the capture saw it arrive
    ifaces_traced: set[str] = field(default_factory=set)  # the input interfaces its trace names
    ct_id: Optional[int] = None  # its conntrack entry's id (from the trace), None: not seen

    @property
    def quick(self) -> str:
        fates = [p.quick for p in self.packets]
        if "drop" in fates:
            return "drop"
        if "accept" in fates:
            return "accept"
        if not self.packets and self.captured:
            return "not-in-netfilter"
        return "unknown"

    def decisive(self) -> Optional[Packet]:
        """The packet whose fate stands for the flow: the first dropped one, else the first."""
        return next((p for p in self.packets if p.quick == "drop"),
                    next((p for p in self.packets if any(e.source == "ebpf" and e.kind is EventKind.DROP for e in p.events)),
                         self.packets[0] if self.packets else None))


class Flows:
    """The flows of one watch, fed as events and captures arrive."""

    def __init__(self, table: str, max_flows: int = 10_000, dport: Optional[int] = None) -> None:
        self.table = table
        self.dport = dport  # the filter's port: an answer from another port is the filter's only across NAT
        self.ct_flows: dict[int, FlowKey] = {}  # conntrack id -> the flow of its original direction
        self.aliases: dict[FlowKey, FlowKey] = {}  # an answer's 5-tuple across NAT -> its flow
        self.waiting: dict[FlowKey, list[Packet]] = {}  # answers not (yet) of any flow
        self.flows: dict[FlowKey, Flow] = {}
        self.current: dict[int, Packet] = {}  # trace id -> the packet it names now
        self.packets_traced = 0
        self.events = 0
        self.unplaced = 0  # events of packets not ours (before our chain) or of no flow
        self.max_flows = max_flows
        self.flows_dropped = 0  # flows beyond max_flows, counted only
        self.kernel_events = 0  # eBPF events read (the kernel's drops of the filter's packets)
        self.kernel_pending: list[TraceEvent] = []  # eBPF events whose packet's trace has not come (yet)

    def _flow(self, key: FlowKey, at: float) -> Optional[Flow]:
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.flows_dropped += 1
                return None
            flow = self.flows[key] = Flow(key, at, at)
        flow.last = max(flow.last, at)
        return flow

    def feed(self, events: Iterable[TraceEvent], at: float) -> set[FlowKey]:
        """Take new trace events; returns the flows they changed."""
        changed: set[FlowKey] = set()
        for ev in events:
            self.events += 1
            if ev.source == "ebpf":  # no trace id of netfilter's: placed by its headers
                self.kernel_events += 1
                self.kernel_pending.append(ev)
                continue
            if ev.table == self.table and ev.kind is EventKind.RULE and ev.packet and ev.chain[-1:].isdigit() \
                    and ev.chain.rstrip("0123456789") in ("pre", "out", "ing"):
                h = parse_headers(ev.packet)
                reply = ev.chain.endswith("1")
                key = flow_key(h, reply) if h is not None else None
                if key is not None and reply:
                    key = self.aliases.get(key, key)
                prev = self.current.get(ev.trace_id)
                if prev is not None and h is not None and prev.reply == reply and prev.headers.ident == h.ident \
                        and prev.key == key:
                    prev.events.append(ev)  # the same packet flagged again: ingress, then prerouting
                    continue
                if key is not None and reply and key not in self.flows and self.dport is not None \
                        and key[4] != self.dport:
                    self._follow(ev.trace_id, self._wait(Packet(h, reply, [ev], key)))  # type: ignore[arg-type]
                    continue
                flow = self._flow(key, at) if key is not None else None
                if h is None or flow is None:
                    self.current.pop(ev.trace_id, None)
                    self.unplaced += 1
                    continue
                pkt = Packet(h, reply, [ev], key)
                (flow.replies if reply else flow.packets).append(pkt)
                if not reply:
                    self.packets_traced += 1
                    if ev.iif:
                        flow.ifaces_traced.add(ev.iif)
                self._follow(ev.trace_id, pkt)
                changed.add(key)
                continue
            pkt = self.current.get(ev.trace_id)
            if pkt is None:
                self.unplaced += 1
                continue
            pkt.events.append(ev)
            if ev.ct_id is not None and pkt.ct_id is None:
                pkt.ct_id = ev.ct_id
                self._conntrack(pkt, at)
            if pkt.key is not None and pkt.key in self.flows:
                changed.add(pkt.key)
        changed |= self._place_kernel()
        return changed

    def _place_kernel(self) -> set[FlowKey]:
        """The eBPF events (the kernel's drop of a packet) joined to the traced packet they are of
        (its flow, IPv4 id / IPv6 flow label); one whose trace has not come yet waits (a while)."""
        changed: set[FlowKey] = set()
        waiting = []
        for ev in self.kernel_pending:
            h = parse_headers(ev.packet) if ev.packet else None
            key = flow_key(h) if h is not None else None
            flow = self.flows.get(key) if key is not None else None
            pkt = next((p for p in reversed(flow.packets) if p.headers.ident == h.ident), None) \
                if flow is not None and h is not None else None
            if pkt is None or key is None:
                waiting.append(ev)
                continue
            pkt.events.append(ev)
            changed.add(key)
        self.unplaced += max(0, len(waiting) - KERNEL_WAIT)
        self.kernel_pending = waiting[-KERNEL_WAIT:]
        return changed

    def _follow(self, trace_id: int, pkt: Packet) -> None:
        """The trace id names this packet now. Only the newest FOLLOWED ids are kept: a packet's
        events come together, and every id kept holds its packet (a busy flow's trimmed ones too),
        which grew the watch by 1.4 MB a minute (bench/watch_bounds.py memory)."""
        self.current.pop(trace_id, None)
        self.current[trace_id] = pkt
        if len(self.current) > FOLLOWED:
            del self.current[next(iter(self.current))]

    def _wait(self, pkt: Packet) -> Packet:
        assert pkt.key is not None
        queue = self.waiting.get(pkt.key)
        if queue is None:
            if len(self.waiting) >= WAITING:
                self.unplaced += 1
                return pkt  # followed (its events are its own) but kept nowhere
            queue = self.waiting[pkt.key] = []
        if len(queue) < KEEP:
            queue.append(pkt)
        return pkt

    def _conntrack(self, pkt: Packet, at: float) -> None:
        """The packet's trace named its conntrack entry: a packet of the client's remembers it for
        its flow; an answer of another 5-tuple (NAT) joins the flow of that entry, and so does
        every answer of its 5-tuple from now on."""
        assert pkt.ct_id is not None and pkt.key is not None
        if not pkt.reply:
            flow = self.flows.get(pkt.key)
            if flow is not None and len(self.ct_flows) < 2 * self.max_flows:
                self.ct_flows.setdefault(pkt.ct_id, pkt.key)
                flow.ct_id = flow.ct_id if flow.ct_id is not None else pkt.ct_id
            return
        target = self.ct_flows.get(pkt.ct_id)
        if target is None or target == pkt.key or target not in self.flows:
            return
        old, flow = pkt.key, self.flows[target]
        self.aliases[old] = target
        moved = self.waiting.pop(old, [])
        gone = self.flows.pop(old, None)
        if gone is not None:  # an answer-only flow of that 5-tuple (the filter's port kept by the NAT)
            moved += gone.replies
            flow.first, flow.last = min(flow.first, gone.first), max(flow.last, gone.last)
        if pkt not in moved:
            moved.append(pkt)
        for p in moved:
            p.key = target
        flow.replies.extend(moved[:max(0, KEEP - len(flow.replies))])
        flow.last = max(flow.last, at)

    def captured(self, h: Headers, ifname: str, at: float, otherhost: bool = False) -> Optional[FlowKey]:
        """A packet of the filter seen by the receive-side capture (before tc and netfilter)."""
        key = flow_key(h)
        flow = self._flow(key, at) if key is not None else None
        if flow is None:
            return None
        flow.captured += 1
        flow.otherhost += otherhost
        flow.interfaces.add(ifname)
        return key

    def trim(self, keep: int = KEEP) -> None:
        """Bound memory on a busy flow: keep the first packets of each flow and its first
        answers (the decisive packet is among the kept when it is a drop: a dropped flow
        retransmits the same)."""
        for flow in self.flows.values():
            if len(flow.packets) > keep:
                drop = next((p for p in flow.packets if p.quick == "drop"), None)
                flow.packets = flow.packets[:keep] + ([drop] if drop is not None and drop not in flow.packets[:keep] else [])
            if len(flow.replies) > keep:
                flow.replies = flow.replies[:keep]


def flow_events(flow: Flow) -> list[TraceEvent]:
    """The events of the flow's decisive packet and of its first answer, for correlate.packet_result.
    The trace ids are made unique per packet (the kernel recycles them)."""
    p = flow.decisive()
    out: list[TraceEvent] = []
    if p is None:
        return out
    out.extend(dataclasses.replace(e, trace_id=1) for e in p.events)
    if flow.replies:
        out.extend(dataclasses.replace(e, trace_id=2) for e in flow.replies[0].events)
    return out


def reply_headers(flow: Flow) -> Optional[Headers]:
    """The flow's first answer that got through netfilter on its way out (its trace reached the
    end of POSTROUTING): it left netfilter, which is what the watch can say of it."""
    for p in flow.replies:
        if any(e.table.startswith(TABLE_PREFIX) and e.chain == "post_end" for e in p.events):
            return p.headers
    return None


def key_text(key: FlowKey) -> str:
    proto, src, sport, dst, dport = key
    if proto == "icmp":
        return f"icmp {src} > {dst} id {sport}"
    fmt = (lambda a, p: f"[{a}]:{p}") if ":" in src else (lambda a, p: f"{a}:{p}")
    return f"{proto} {fmt(src, sport)} > {fmt(dst, dport)}"
