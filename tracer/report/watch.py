"""The finished values of a `fwtrace watch` (what the renderers read): the live view while it runs,
one row per flow, and the summary at the end with its honest accounting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tracer.errors import ExitStatus
from tracer.model import Finding, KernelDrop

# What lies outside the host's reach when nothing arrived (the seed's first pitfall).
UPSTREAM = ("a router ACL or firewall upstream", "a cloud security group / network ACL",
            "the client's own firewall", "a wrong DNS answer or address (the client sends elsewhere)",
            "NAT on the way (the packets arrive from another source address)")


@dataclass(frozen=True)
class FlowRow:
    """One flow as the live table and the summary show it."""

    flow: str  # "tcp 192.0.2.2:40000 > 192.0.2.1:8080"
    key: tuple[str, str, int, str, int]
    verdict: str  # accept, drop, reject, unknown, not-in-netfilter
    packets: int  # traced (the client's packets)
    captured: int  # seen arriving by the receive-side capture
    interfaces: tuple[str, ...] = ()
    decided_by: str = ""  # "inet filter input rule 3 (handle 7): ip saddr ... drop"
    conclusion: str = ""
    findings: tuple[Finding, ...] = ()
    timeline: tuple[str, ...] = ()
    conntrack: str = ""
    first: float = 0.0
    last: float = 0.0
    ct_id: Optional[int] = None  # its conntrack entry's id, as the trace named it (Linux 6.16+)
    answers: int = 0  # the service's answers traced (kept: at most 8), across NAT too
    kernel: Optional[KernelDrop] = None  # the kernel, not a rule, dropped it (eBPF's drop reason)

    def to_json(self) -> dict[str, object]:
        proto, src, sport, dst, dport = self.key
        return {"flow": self.flow, "proto": proto, "src": src, "sport": sport, "dst": dst, "dport": dport,
                "verdict": self.verdict, "packets_traced": self.packets, "packets_captured": self.captured,
                "interfaces": list(self.interfaces), "decided_by": self.decided_by or None,
                "conclusion": self.conclusion or None, "findings": [f.to_json() for f in self.findings],
                "timeline": list(self.timeline), "conntrack": self.conntrack or None, "conntrack_id": self.ct_id,
                "answers_traced": self.answers, "kernel": self.kernel.to_json() if self.kernel is not None else None}


@dataclass(frozen=True)
class Live:
    """The view while the watch runs."""

    filter: str
    rows: tuple[FlowRow, ...]
    left: float  # seconds left
    packets: int
    max_packets: Optional[int]
    interfaces: tuple[str, ...]
    changed: tuple[tuple[str, str, int, str, int], ...] = ()  # flows whose row changed since the last view


@dataclass(frozen=True)
class Accounting:
    packets_traced: int  # packets of the filter whose trace reached fwtrace
    packets_captured: int  # seen arriving by the capture
    events: int  # trace events read
    events_lost: bool  # the trace socket overflowed (ENOBUFS): some were lost, how many is unknown
    kernel_arrived: Optional[int]  # the client's packets netfilter's prerouting counted (traced or not)
    budget_untraced: Optional[int]  # packets beyond the kernel-side rate budget (counted, not traced)
    capture_kernel: int = 0  # packets the capture's BPF filter passed (incl. near misses)
    capture_dropped: int = 0  # ... that its socket buffer could not take
    flows_untracked: int = 0  # flows beyond the table's bound, counted only
    rate: int = 0
    burst: int = 0
    capture_before: int = 0  # packets of the filter captured before the table was in (untraced): left out
    ebpf: str = "off"  # eBPF drop reasons: "off", "loaded", "unavailable: why" (--ebpf auto)
    ebpf_events: int = 0  # their records of the filter's packets read
    ebpf_lost: int = 0  # ... the kernel could not put in the full ring buffer (counted there)

    @property
    def budget_hit(self) -> Optional[bool]:
        return None if self.budget_untraced is None else self.budget_untraced > 0

    def to_json(self) -> dict[str, object]:
        return {"packets_traced": self.packets_traced, "packets_captured": self.packets_captured,
                "events_emitted": self.events, "events_lost": self.events_lost,
                "kernel_counted": self.kernel_arrived, "kernel_budget": {"rate_per_second": self.rate, "burst": self.burst,
                                                                         "hit": self.budget_hit,
                                                                         "untraced": self.budget_untraced},
                "capture": {"passed_filter": self.capture_kernel, "dropped": self.capture_dropped,
                            "before_table_left_out": self.capture_before},
                "flows_untracked": self.flows_untracked,
                "ebpf": {"status": self.ebpf, "events": self.ebpf_events, "lost": self.ebpf_lost}}

    def text(self) -> str:
        budget = ("unknown (the counters could not be read)" if self.budget_hit is None else
                  f"hit: {self.budget_untraced} packet(s) counted but not traced" if self.budget_hit else "not hit")
        lost = "some lost (the trace socket overflowed)" if self.events_lost else "0 lost"
        return (f"{self.packets_traced} packet(s) traced, {self.packets_captured} captured arriving; "
                f"{self.events} trace event(s), {lost}; kernel-side budget ({self.rate}/s, burst {self.burst}) {budget}"
                + (f"; the capture's buffer dropped {self.capture_dropped}" if self.capture_dropped else "")
                + (f"; {self.capture_before} captured before the table was in, left out (they could not be traced)"
                   if self.capture_before else "")
                + (f"; {self.flows_untracked} flow(s) beyond the table's bound counted only" if self.flows_untracked else "")
                + (f"; eBPF drop reasons: {self.ebpf_events} event(s), {self.ebpf_lost} lost (the ring buffer was full)"
                   if self.ebpf == "loaded" else ""))


@dataclass(frozen=True)
class WirePacket:
    """A packet the capture saw arrive (its first 256 bytes), for the evidence pcapng."""

    data: bytes
    when: float  # seconds since the epoch
    comment: str


@dataclass(frozen=True)
class WatchSummary:
    run_id: str
    filter: str
    filter_json: dict[str, object]
    netns: Optional[str]
    interfaces: tuple[str, ...]
    duration: float  # seconds watched
    stopped_by: str  # "duration", "max-packets", "SIGINT", "SIGTERM", ...
    rows: tuple[FlowRow, ...]
    accounting: Accounting
    outcome: str  # "flows", "nothing-arrived", "filter-matched-nothing", "not-in-netfilter"
    message: str
    near: tuple[str, ...] = ()  # what the capture saw near the filter (it tells a wrong filter)
    outside: tuple[str, ...] = ()
    cleanup_ok: bool = True
    leftover: tuple[str, ...] = ()
    instrumentation: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    wire: tuple[WirePacket, ...] = ()  # with --evidence

    def to_json(self) -> dict[str, object]:
        return {"type": "summary", "run_id": self.run_id, "filter": self.filter_json, "netns": self.netns,
                "interfaces_watched": list(self.interfaces), "duration_s": round(self.duration, 3),
                "stopped_by": self.stopped_by, "outcome": self.outcome, "message": self.message,
                "near_misses": list(self.near), "outside_this_host": list(self.outside),
                "flows": [r.to_json() for r in self.rows], "accounting": self.accounting.to_json(),
                "instrumentation": list(self.instrumentation), "notes": list(self.notes),
                "cleanup": {"ok": self.cleanup_ok, "leftover": list(self.leftover)}}


def exit_status(s: WatchSummary) -> ExitStatus:
    """0: no flow seen was blocked; 1: a flow was blocked, or nothing (of the filter) arrived;
    5: the cleanup is incomplete. A flow whose verdict the window did not see (cut at its edge:
    verdict unknown) is neither: blocked is a claim only a traced drop or reject makes."""
    if not s.cleanup_ok:
        return ExitStatus.LEFTOVER
    if s.outcome != "flows" or any(r.verdict in ("drop", "reject") for r in s.rows):
        return ExitStatus.BLOCKED
    return ExitStatus.OK
