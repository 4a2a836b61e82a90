"""The end of a run, as pipeline steps (pure; see tracer/probe.py): prove the cleanup, read the chains
the probes met, correlate, explain, and put the report together (tracer/outcome.build_report)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from tracer import compare, correlate, diagnose
from tracer.commands import (
    Describe,
    Finished,
    Listeners,
    MetChains,
    RpFilter,
    SaveLegacy,
    Steps,
    TableGone,
    TakeSnapshot,
)
from tracer.ebpf import timeline as ebpf_timeline
from tracer.ebpf.commands import EbpfOutcome
from tracer.inject.ingress import port_names
from tracer.kernsteps import kernplan_json
from tracer.model import EventKind, Mode, ProbeRequest, Ruleset
from tracer.outcome import Evidence, ProbeReport, build_report
from tracer.snapshot import Snapshot, legacy_listing, with_legacy
from tracer.trace import plan

if TYPE_CHECKING:
    from tracer.probe import Armed, Exchange, Sending


def verify(full: Optional[Snapshot], legacy_saved: dict[str, str], sending: Sending, armed: Armed,
           finished: Finished) -> Steps[tuple[list[str], Optional[tuple[str, ...]], Optional[bool]]]:
    """After the undos, prove the firewall is as before: (what is left over, the full listings'
    diff when there was a full snapshot, whether the legacy tables are unchanged when measured)."""
    # With a full snapshot (evidence bundles) the listings are compared too, counters aside.
    diff = tuple(compare.leftover(full.nft_text, (yield TakeSnapshot()).nft_text)) if full else None
    table = sending.tplan.table
    left = list(finished.errors) + ([] if (yield TableGone(table)) else [f"table inet {table} still present"])
    legacy_unchanged: Optional[bool] = None
    if legacy_saved or (armed.kplan is not None and armed.kplan.legacy_edits):
        before = legacy_listing(with_legacy(Ruleset(), legacy_saved))
        after = legacy_listing(with_legacy(Ruleset(), (yield SaveLegacy())))
        legacy_diff = compare.leftover(before, after)
        legacy_unchanged = not legacy_diff
        left += legacy_diff
    return left, diff, legacy_unchanged


def analyse(req: ProbeRequest, run_id: str, full: Optional[Snapshot], legacy_saved: dict[str, str], sending: Sending,
            armed: Armed, exchanges: tuple[Exchange, ...], finished: Finished,
            ebpf: EbpfOutcome = EbpfOutcome()) -> Steps[ProbeReport]:
    """Read the chains the probes met, correlate, explain: the report."""
    left, diff, legacy_unchanged = yield from verify(full, legacy_saved, sending, armed, finished)
    # The rules are read now, chain by chain, for the chains the probes met: handles do not
    # change, and the generations prove whether anything else changed meanwhile. Legacy tables
    # come from their save before the run (the kernel log's rule numbers count those).
    met = {(e.family, e.table, e.chain) for x in exchanges for e in x.events
           if e.source != ebpf_timeline.SOURCE and not e.table.startswith(plan.TABLE_PREFIX) and not e.legacy
           and e.kind is not EventKind.CONNTRACK}
    snap: Snapshot = yield MetChains(tuple(sorted(met)), legacy_saved)
    roles = plan.roles(sending.tplan)
    own_ports = frozenset(port_names(run_id)) if sending.mode is Mode.INGRESS else frozenset()
    results = []
    for x in exchanges:
        said = (yield Describe(x.reply.data)) if x.reply else ""
        events, kernel_events = ebpf_timeline.split(x.events)  # eBPF events join after correlation
        r = correlate.packet_result(x.spec, events, snap.ruleset, x.reply.headers if x.reply else None, said, roles)
        r = ebpf_timeline.attach(r, kernel_events, own_ports)
        results.append(dataclasses.replace(r, conntrack=x.conntrack) if x.conntrack is not None else r)
    target, mode, via = sending.target, sending.mode, sending.via
    rp = (yield RpFilter(via, target.back)) if mode is Mode.INGRESS and via is not None and target.dst.version == 4 else False
    tcp_loose = armed.tcp_loose
    ctx = diagnose.Context(snap.ruleset, (yield Listeners()), local=mode is Mode.LOCAL,
                           tcp_loose=int(tcp_loose) if tcp_loose and tcp_loose.isdigit() else None,
                           mode=mode, via=via, src=sending.specs[0].src if sending.specs else None,
                           route_dev=target.back.dev if target.back is not None else None, rp_filter_drops=rp,
                           fallback=sending.fallback, unobserved=sending.tplan.unobserved)
    kplan = armed.kplan
    evidence = Evidence(
        full.nft_text if full else snap.nft_text, full.ipt_text if full else snap.ipt_text, sending.tplan.batch,
        finished.trace, tuple(x.reply.data if x.reply else b"" for x in exchanges), diff, legacy_saved,
        finished.kmsg, finished.nflog, tuple(sorted(armed.own)), kernplan_json(kplan), ebpf.raw, ebpf.names)
    return build_report(
        req, run_id, results, ctx, leftover=left, generations=armed.generations,
        instrumentation=tuple(sending.tplan.rules) + (tuple(kplan.rules) if kplan is not None else ()),
        lost_events=finished.lost, evidence=evidence, mode=mode, via=via, caveats=sending.caveats,
        notes=armed.notes + ebpf.notes, own_commits=armed.own_commits, legacy_unchanged=legacy_unchanged,
        ebpf=ebpf.status)
