"""`fwtrace watch`: the real client's traffic for a bounded time, as pipeline steps (sans-io, as
tracer/pipeline/probe.py; tracer/pipeline/watchrun.py carries the commands out).

    pipeline: base chains -> watch plan (the filter, rate-limited) -> Begin (trace socket, journal)
              -> capture on the receive side -> cleanup proof's "before" -> the table, journaled
              -> collect until --duration / --max-packets / a signal (live view meanwhile)
              -> counters, capture counts, conntrack -> Finish (undo all, also when interrupted)
              -> cleanup proof -> the chains the flows met -> per flow: correlate and diagnose, the
              probe's own code path (correlate.packet_result, diagnose.diagnose) -> the summary.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from tracer import correlate, diagnose
from tracer.correlate import ebpf_timeline
from tracer.diagnose import kernverdict
from tracer.pipeline import watch_ebpf
from tracer.correlate import flows as flows_
from tracer.correlate.flows import Flow, Flows, key_text
from tracer.errors import CommandError
from tracer.model import EventKind, Mode, PacketResult, Proto, Ruleset, Step, Verdict
from tracer.packet import Headers
from tracer.plan import plan, verify, watchplan
from tracer.plan.commands import (
    Begin,
    Change,
    Conntrack,
    FilterView,
    Finish,
    Finished,
    Generation,
    Listeners,
    ListBaseChains,
    ListChains,
    MetChains,
    RunArgv,
    Steps,
)
from tracer.plan.ebpf_commands import StartEbpf
from tracer.plan.records import nft_undo
from tracer.plan.watch_commands import (CaptureStats, EbpfLost, MarkCapture, Now, OpenCapture, PollWatch, Seen, Show,
                                        WatchPolled)
from tracer.plan.watchplan import WatchFilter
from tracer.report.watch import UPSTREAM, Accounting, FlowRow, Live, WatchSummary, WirePacket
from tracer.ruleset.nftsets import parse_sets

SHOW_EVERY = 0.5  # seconds between two live views
CONNTRACK_FLOWS = 8  # flows whose conntrack entry is read at the end (one `conntrack -L` each)
NEAR_KEYS = 16
WIRE_MAX = 5000  # packets kept for the evidence pcapng
DRAIN = 0.05  # seconds: the trace events of the last packets are already queued


@dataclass(frozen=True)
class WatchRequest:
    filter: WatchFilter
    duration: float = 30.0
    max_packets: Optional[int] = None
    netns: Optional[str] = None
    iface: Optional[str] = None
    rate: int = watchplan.RATE
    burst: int = watchplan.BURST
    packets: bool = False  # --packets: every packet's line in the timeline, not only the decisive one's
    evidence: bool = False  # keep the watched packets for the bundle's pcapng (at most WIRE_MAX)
    ebpf: str = "off"  # "on" / "auto": the kernel's drop reasons (probes/drops.c) too; auto goes on without them
    notes: tuple[str, ...] = ()  # said before the watch began (--ebpf auto that could not)


def matches(f: WatchFilter, h: Headers) -> bool:
    """Is this captured packet one of the filter's (the capture's BPF also passes near misses)?"""
    if f.src is not None and (h.src.version != f.src.version or h.src not in f.src):
        return False
    proto = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMP}.get(h.proto)
    if f.proto is not None and proto is not f.proto:
        return False
    if f.dport is not None and (proto not in (Proto.TCP, Proto.UDP) or h.dport != f.dport):
        return False
    if f.proto is Proto.ICMP and h.sport not in (8, 128):
        return False  # the client's echo requests, not errors or replies passing by
    return proto is not None


def _near(f: WatchFilter, h: Headers) -> str:
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(h.proto, str(h.proto))
    if f.src is not None and h.src in f.src:
        return f"from {h.src}: {proto}" + (f" to port {h.dport}" if proto in ("tcp", "udp") else "")
    return f"to port {h.dport} ({proto}) from {h.src}"


def watch(req: WatchRequest, run_id: str, pid: int) -> Steps[WatchSummary]:
    tplan = watchplan.watch_plan(run_id, req.filter, pid, plan.floors((yield ListBaseChains())), req.rate, req.burst)
    program = watchplan.capture_filter(req.filter)
    yield Begin()
    if req.ebpf != "off":
        yield StartEbpf()  # compiles in the background while the capture opens
    flows = Flows(tplan.table, dport=req.filter.dport)
    near: Counter[str] = Counter()
    lost = False
    stopped = "duration"
    budget = watchplan.Budget()
    cap: tuple[int, int] = (0, 0)
    conntrack: dict[flows_.FlowKey, str] = {}
    start_at = end_at = 0.0
    ifaces: tuple[str, ...] = ()
    ebpf, ebpf_lost = "off", 0
    wire: list[Seen] = []
    early: tuple[Seen, ...] = ()
    before = 0
    armed: Optional[verify.Start] = None
    generations: list[int] = []
    try:
        # The capture first, then the proof's listing, then the table: nothing of the filter that
        # arrives once the table is in can be missed by the capture. What it queued until the
        # table was in (the mark) counts only where a trace shows the packet was traced: the
        # others arrived before the table (however long a loaded machine took to put it in) and
        # could not be traced, which is no sign that they never reached netfilter.
        ifaces = yield OpenCapture(program, req.iface)
        ebpf = (yield from watch_ebpf.open_ebpf(req.filter, req.ebpf == "on")) if req.ebpf != "off" else "off"
        armed = yield from verify.before(tplan.table, None, {})
        generations.append((yield Generation()))
        yield Change(nft_undo(tplan.undo, f"table inet {tplan.table}"), RunArgv(("nft", "-f", "-"), tplan.batch),
                     atomic=True)
        early = yield MarkCapture()
        start_at = yield Now()
        generations.append((yield Generation()))
        deadline = start_at + req.duration
        try:
            stopped, lost = yield from _collect(req, flows, near, start_at, deadline, ifaces, wire)
        except KeyboardInterrupt as e:
            stopped = getattr(e, "signame", None) or "SIGINT"
        end_at = yield Now()
        before = _early(req, flows, near, early, wire)
        try:
            listing = yield ListChains(tuple(("inet", tplan.table, c) for c in watchplan.base_chains(tplan)))
            budget = watchplan.budget(listing)
        except CommandError:
            pass
        cap = yield CaptureStats()
        ebpf_lost = (yield EbpfLost()) if ebpf == "loaded" else 0
        for flow in list(flows.flows.values())[:CONNTRACK_FLOWS]:
            p = flow.decisive()
            if p is not None and p.spec.proto is not Proto.ICMP:
                conntrack[flow.key] = yield Conntrack(p.spec)
    finally:
        finished: Finished = yield Finish()
    verdict = (yield from verify.after(armed, finished, req.netns)) if armed is not None else None
    left = list(finished.errors) + (list(verdict.texts) if verdict is not None else [])
    generations.append((yield Generation()))
    rows = yield from _diagnosed(req, flows, conntrack, ebpf == "loaded")
    summary = _summary(req, run_id, tplan, ifaces, end_at - start_at, stopped, rows, flows, near, lost or finished.lost,
                       budget, cap, left)
    summary = dataclasses.replace(summary, accounting=dataclasses.replace(
        summary.accounting, capture_before=before, ebpf=ebpf, ebpf_events=flows.kernel_events, ebpf_lost=ebpf_lost),
        notes=req.notes + watch_ebpf.note(ebpf) + summary.notes)
    return dataclasses.replace(summary, wire=_wire(flows, rows, wire)) if req.evidence else summary


def _wire(flows: Flows, rows: tuple[FlowRow, ...], wire: list[Seen]) -> tuple[WirePacket, ...]:
    """The watched packets for the pcapng, each with its flow, verdict and the nftrace id of its
    trace (matched by flow and IPv4 id / IPv6 flow label), or that none reached fwtrace."""
    verdicts = {r.key: r.verdict for r in rows}
    traces: dict[tuple[flows_.FlowKey, int], int] = {}
    for f in flows.flows.values():
        for p in f.packets:
            traces.setdefault((f.key, p.headers.ident), p.events[0].trace_id)
    out = []
    for s in wire:
        key = flows_.flow_key(s.headers)
        if key is None:
            continue
        tid = traces.get((key, s.headers.ident))
        comment = (f"arrived on {s.ifname}{' (PACKET_OTHERHOST)' if s.otherhost else ''}; flow {key_text(key)}: "
                   f"{verdicts.get(key, 'unknown')}; " + (f"nftrace id {tid:#x}" if tid is not None else "no trace of it reached fwtrace"))
        out.append(WirePacket(s.data, s.wall, comment))
    return tuple(out)


def _early(req: WatchRequest, flows: Flows, near: Counter[str], early: tuple[Seen, ...], wire: list[Seen]) -> int:
    """The captures queued before the mark (MarkCapture): near misses count (they arrived); a
    packet of the filter counts only if its trace reached fwtrace (same flow and IP id / flow
    label), i.e. it arrived once the table was in. Returns how many were left out."""
    traced = {(f.key, p.headers.ident) for f in flows.flows.values() for p in f.packets}
    left = 0
    for s in early:
        if not matches(req.filter, s.headers):
            if len(near) < NEAR_KEYS or _near(req.filter, s.headers) in near:
                near[_near(req.filter, s.headers)] += 1
        elif (flows_.flow_key(s.headers), s.headers.ident) in traced:
            flows.captured(s.headers, s.ifname, s.at, s.otherhost)
            if req.evidence and len(wire) < WIRE_MAX:
                wire.append(s)
        else:
            left += 1
    return left


def _collect(req: WatchRequest, flows: Flows, near: Counter[str], start: float, deadline: float,
             ifaces: tuple[str, ...], wire: list[Seen]) -> Steps[tuple[str, bool]]:
    """Read events and captures until the deadline, --max-packets, or a signal (raised in).
    Captures from before the table was in (`start`) are left out: their packets could not be
    traced. At the end the events already queued are read (DRAIN), not new captures."""
    stopped = yield from _loop(req, flows, near, start, deadline, ifaces, wire)
    polled: Optional[WatchPolled] = yield PollWatch((yield Now()) + DRAIN)
    if polled is not None:
        flows.feed(polled.events, polled.at)
        stopped = (stopped[0], stopped[1] or polled.lost)
    return stopped


def _loop(req: WatchRequest, flows: Flows, near: Counter[str], start: float, deadline: float,
          ifaces: tuple[str, ...], wire: list[Seen]) -> Steps[tuple[str, bool]]:
    next_show = 0.0
    changed: set[flows_.FlowKey] = set()
    lost = False
    captured = 0
    while True:
        polled: Optional[WatchPolled] = yield PollWatch(min(deadline, next_show) if next_show else deadline)
        now = polled.at if polled is not None else deadline
        if polled is not None:
            lost = lost or polled.lost
            changed |= flows.feed(polled.events, now)
            for s in polled.seen:
                if s.at < start:
                    continue
                if matches(req.filter, s.headers):
                    captured += 1
                    key = flows.captured(s.headers, s.ifname, s.at, s.otherhost)
                    if req.evidence and len(wire) < WIRE_MAX:
                        wire.append(s)
                    if key is not None:
                        changed.add(key)
                elif len(near) < NEAR_KEYS or _near(req.filter, s.headers) in near:
                    near[_near(req.filter, s.headers)] += 1
            flows.trim()
        if req.max_packets is not None and max(flows.packets_traced, captured) >= req.max_packets:
            return "max-packets", lost
        if now >= deadline:
            return "duration", lost
        if now >= next_show:
            yield Show(Live(req.filter.describe(), tuple(_quick_row(f) for f in flows.flows.values()),
                            max(0.0, deadline - now), max(flows.packets_traced, captured), req.max_packets, ifaces,
                            tuple(sorted(changed))))
            changed = set()
            next_show = now + SHOW_EVERY


def _quick_row(flow: Flow) -> FlowRow:
    """A flow's row before the rules are read: its fate from the events alone."""
    decided = ""
    p = flow.decisive()
    if p is not None and p.quick == "drop":
        e = next(e for e in p.events if not e.table.startswith(plan.TABLE_PREFIX)
                 and (e.verdict or "").split(" ")[0] in ("drop", "reject"))
        decided = f"{e.family} {e.table} {e.chain} " + (f"handle {e.handle}" if e.handle is not None else "policy")
    return FlowRow(key_text(flow.key), flow.key, flow.quick, len(flow.packets), flow.captured,
                   tuple(sorted(flow.interfaces | flow.ifaces_traced)), decided, first=flow.first, last=flow.last,
                   ct_id=flow.ct_id, answers=len(flow.replies))


def _met(flow: Flow) -> set[tuple[str, str, str]]:
    return {(e.family, e.table, e.chain) for e in flows_.flow_events(flow)
            if not e.table.startswith(plan.TABLE_PREFIX) and not e.legacy and e.kind is not EventKind.CONNTRACK
            and e.source == "nftrace"}


def _diagnosed(req: WatchRequest, flows: Flows, conntrack: dict[flows_.FlowKey, str],
               ebpf: bool = False) -> Steps[tuple[FlowRow, ...]]:
    """Each flow through the probe's own correlation and diagnosis (and, with eBPF, the probe's
    kernel verdict for a flow the kernel dropped)."""
    traced = [f for f in flows.flows.values() if f.packets]
    rows: list[FlowRow] = []
    results: dict[flows_.FlowKey, PacketResult] = {}
    if traced:
        met: set[tuple[str, str, str]] = set().union(*(_met(f) for f in traced))
        snap = yield MetChains(tuple(sorted(met)), {}, None)
        for f in traced:
            p = f.decisive()
            assert p is not None
            answer = flows_.reply_headers(f)
            said = "traced through netfilter to the end of POSTROUTING" if answer is not None else ""
            nf, kernel = ebpf_timeline.split(flows_.flow_events(f))  # eBPF events join after correlation
            r = correlate.packet_result(p.spec, nf, snap.ruleset, answer, said, None)
            results[f.key] = ebpf_timeline.attach(r, kernel)
        blocked = any(r.verdict in (Verdict.DROP, Verdict.REJECT) for r in results.values())
        listeners = yield Listeners()
        if ebpf:
            yield from watch_ebpf.kernel_verdicts(results, listeners)
        nearview = (yield FilterView({})) if blocked else None
        base = diagnose.Context(snap.ruleset, listeners, local=False, mode=Mode.INGRESS,
                                full_ruleset=nearview.ruleset if nearview is not None else None,
                                full_sets=parse_sets(nearview.nft_text) if nearview is not None else None)
    for f in sorted(flows.flows.values(), key=lambda f: f.first):
        quick = _quick_row(f)
        r = results.get(f.key)
        if r is None:
            rows.append(dataclasses.replace(quick, conntrack=conntrack.get(f.key, "")))
            continue
        p = f.decisive()
        assert p is not None
        iif = next((e.iif for e in p.events if e.iif), None)
        ctx = dataclasses.replace(base, via=iif, src=p.spec.src)
        findings = diagnose.diagnose(r, ctx)
        ref = r.decided_by
        decided = ""
        if ref is not None:
            decided = f"{ref.family} {ref.table} {ref.chain} " + (
                f"rule {ref.rule.number}: {ref.rule.display}" if ref.rule is not None else f"policy {(ref.policy or '?').upper()}")
        steps = r.steps
        timeline = tuple(_step_line(s, snap.ruleset) for s in steps)
        if req.packets:
            timeline += tuple(f"packet {i + 1}: {pk.quick} [{flows_.flags(pk.headers) or pk.spec.proto.value}]"
                              for i, pk in enumerate(f.packets))
        if r.kernel is not None:
            decided = kernverdict.summary(r.kernel)
        rows.append(dataclasses.replace(quick, verdict="drop" if r.kernel is not None else r.verdict.value,
                                        decided_by=decided, kernel=r.kernel,
                                        conclusion=diagnose.conclusion(r, findings), findings=tuple(findings),
                                        timeline=timeline, conntrack=conntrack.get(f.key, "")))
    return tuple(rows)


def _step_line(s: Step, ruleset: Ruleset) -> str:
    e, rule = s.event, s.rule
    what = f"rule {rule.number}: {rule.display}" if rule is not None else (e.kind.value + (f" {e.verdict}" if e.verdict else ""))
    return f"{e.hook or correlate.hook_of(ruleset, e) or '?'}: {e.family} {e.table} {e.chain}: {what}"


def _summary(req: WatchRequest, run_id: str, tplan: plan.TracePlan, ifaces: tuple[str, ...], duration: float,
             stopped: str, rows: tuple[FlowRow, ...], flows: Flows, near: Counter[str], lost: bool,
             budget: watchplan.Budget, cap: tuple[int, int], left: list[str]) -> WatchSummary:
    captured = sum(f.captured for f in flows.flows.values())
    acc = Accounting(flows.packets_traced, captured, flows.events, lost, budget.arrived if budget.read else None,
                     budget.over if budget.read else None, cap[0], cap[1], flows.flows_dropped, req.rate, req.burst)
    where = ", ".join(ifaces) or "no interface"
    notes = ["the service's answers are traced through netfilter (OUTPUT, POSTROUTING), not captured on the wire"]
    outside: tuple[str, ...] = ()
    nears = tuple(f"{k} ({n} packet{'s' if n > 1 else ''})" for k, n in near.most_common())
    if rows:
        outcome = "flows"
        gone = [r for r in rows if r.verdict == "not-in-netfilter"]
        message = f"{len(rows)} flow(s) of the filter ({req.filter.describe()})"
        if gone:
            names = ", ".join(sorted({i for r in gone for i in r.interfaces}))
            if budget.read and budget.arrived == 0 and not any(r.packets for r in rows):
                outcome = "not-in-netfilter"
                message = (f"{sum(r.captured for r in gone)} packet(s) of {req.filter.describe()} arrived on {names} but never "
                           "reached netfilter (netfilter's prerouting counted none): dropped before it on this host, "
                           "e.g. by XDP, a tc ingress filter, or the device (checksum, MTU)")
                if any(f.otherhost for f in flows.flows.values()):
                    message += ("; they were addressed to another link-layer (MAC) address (PACKET_OTHERHOST), which "
                                "the kernel drops before netfilter: a stale ARP/neighbour entry or a wrong gateway upstream")
            else:
                message += f"; {len(gone)} of them arrived on {names} but no trace of them reached netfilter" + (
                    " (the kernel-side budget was hit: they may be among the untraced)" if budget.hit else
                    ": dropped before netfilter on this host (XDP, tc ingress, the device)")
    elif nears:
        outcome = "filter-matched-nothing"
        message = (f"no packet of {req.filter.describe()} arrived on {where} in {duration:.1f}s, but packets near it did "
                   f"(see near_misses): the filter may be wrong (another port, protocol or source address, e.g. after NAT)")
    else:
        outcome = "nothing-arrived"
        message = (f"nothing arrived: no packet of {req.filter.describe()} (nor from that source, nor to that port) was seen "
                   f"arriving on {where} in {duration:.1f}s, by a capture before tc and netfilter; no rule of this host "
                   "can explain that, so it is outside this host's reach")
        outside = UPSTREAM
    if budget.hit:
        notes.append(f"the kernel-side budget ({req.rate}/s, burst {req.burst}) was hit: {budget.over} packet(s) "
                     "were counted but not traced, so their flows may be missing from the table")
    return WatchSummary(run_id, req.filter.describe(), req.filter.to_json(), req.netns, ifaces, duration, stopped, rows,
                        acc, outcome, message, nears, outside, not left, tuple(left), tuple(tplan.rules), tuple(notes))
