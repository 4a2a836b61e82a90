"""The end of a run, as pipeline steps (pure; see tracer/pipeline/probe.py): prove the cleanup, read the chains
the probes met, correlate, explain, and put the report together (tracer/outcome.build_report)."""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Optional

from tracer.ruleset import compare
from tracer import correlate, diagnose
from tracer.diagnose import ftp, kernverdict, selinux, targets, tcpwrap
from tracer.plan.commands import (
    ConnectCheck,
    Describe,
    FilterView,
    Finished,
    KernelChecks,
    Listeners,
    MetChains,
    ProcessFacts,
    RpFilter,
    SelinuxFacts,
    Steps,
    TakeSnapshot,
)
from tracer.correlate import basechains, ebpf_timeline
from tracer.plan.ebpf_commands import EbpfOutcome
from tracer.plan.target_commands import QueueBindings
from tracer.inject.ingress import port_names
from tracer.plan.kernsteps import kernplan_json
from tracer.model import AfterAccept, EventKind, Finding, Mode, PacketResult, PacketSpec, ProbeRequest, Proto, Reply, Verdict
from tracer.ruleset.nftsets import parse_sets
from tracer.report.outcome import Evidence, ProbeReport, build_report
from tracer.ruleset.snapshot import ChainKey, Snapshot
from tracer.collect.sockets import serves
from tracer.plan import plan, stateful
from tracer.plan import verify as verify_

if TYPE_CHECKING:
    from tracer.pipeline.state import Armed, Exchange, Sending


def verify(req: ProbeRequest, full: Optional[Snapshot], armed: Armed,
           finished: Finished) -> Steps[tuple[list[str], Optional[tuple[str, ...]], verify_.Verdict]]:
    """After the undos, prove the firewall is as before, object by object (tracer/plan/verify.py):
    (what failed or is left over, the full listings' diff when there was a full snapshot, the
    content proof's verdict)."""
    # With a full snapshot (evidence bundles) the listings are compared too, counters aside.
    diff = tuple(compare.leftover(full.nft_text, (yield TakeSnapshot()).nft_text)) if full else None
    verdict = yield from verify_.after(armed.proof, finished, req.netns)
    return list(finished.errors) + list(verdict.texts), diff, verdict


def _wanted(exchanges: tuple[Exchange, ...], met: set[ChainKey]) -> dict[ChainKey, frozenset[int]]:
    """The handles of the rules the probes' events name, per met chain."""
    out: dict[ChainKey, set[int]] = {k: set() for k in met}
    for x in exchanges:
        for e in x.events:
            key = (e.family, e.table, e.chain)
            if key in out and e.handle is not None:
                out[key].add(e.handle)
    return {k: frozenset(v) for k, v in out.items()}


def _searches_chains(r: PacketResult) -> bool:
    """Will a finding read rules of the met chains that no event named? shadowed-rule looks for a
    later ACCEPT after a deciding rule, untracked for an ACCEPT of state NEW after a NOTRACK, and
    the fix for a dropped reply copies the style of every rule (tracer/findings)."""
    if r.reply_dropped:
        return True
    if r.verdict is Verdict.ACCEPT or r.decided_by is None:
        return False
    return r.decided_by.rule is not None or any(s.rule is not None and "notrack" in s.rule.display.lower()
                                                for s in r.steps)


def _results(run_id: str, sending: Sending, exchanges: tuple[Exchange, ...],
             snap: Snapshot) -> Steps[list[PacketResult]]:
    """Each probe's result: its events correlated with the chains' rules."""
    roles = plan.roles(sending.tplan)
    own_ports = frozenset(port_names(run_id)) if sending.mode is Mode.INGRESS else frozenset()
    results = []
    for x in exchanges:
        said = (yield Describe(x.reply.data)) if x.reply else ""
        events, kernel_events = ebpf_timeline.split(x.events)  # eBPF events join after correlation
        r = correlate.packet_result(x.spec, events, snap.ruleset, x.reply.headers if x.reply else None, said, roles)
        r = ebpf_timeline.attach(r, kernel_events, own_ports)
        if x.client is not None and (r.reply.none or not r.reply.captured) and x.client[0] != "timeout":
            r = dataclasses.replace(r, reply=client_reply(x.spec, *x.client))
        results.append(dataclasses.replace(r, conntrack=x.conntrack) if x.conntrack is not None else r)
    return results


def kernel_verdicts(sending: Sending, exchanges: tuple[Exchange, ...], results: list[PacketResult],
                    ctx: diagnose.Context, ebpf_loaded: bool) -> Steps[list[PacketResult]]:
    """Each result with the kernel's drop of its probe, when no rule dropped it and nothing came
    back (tracer/diagnose/kernverdict.py): the sysctls and route lookups are asked only then, and for a
    drop by a reverse-path rule (its finding tells the route back)."""
    out = []
    for r, x in zip(results, exchanges):
        by_rule = r.decided_by is not None and r.decided_by.rule is not None \
            and kernverdict.rpfilter_rule(r.decided_by.rule.display)  # explained by the route back
        if (not kernverdict.needs_check(r) and not by_rule) or targets.step_of(r) is not None:
            out.append(r)  # (a SYNPROXY, NFQUEUE or TPROXY rule took it: tracer/diagnose/targets.py)
            continue
        h = diagnose.seen(r)
        local = sending.mode is Mode.LOCAL
        # the arrival interface: simulated ingress says it; else the trace (fwtrace's own trace
        # rule sees the probe at the start of prerouting even where no chain of the ruleset did)
        iif = None if local else (sending.via or kernverdict.by_iif(r.steps)
                                  or next((e.iif for e in x.events if e.iif and e.source != "ebpf"), None))
        values, rin, back = yield KernelChecks(r.spec.src, h.dst, iif, kernverdict.sysctls_wanted(r.spec.family, iif))
        facts = kernverdict.Facts(x.counters or {}, x.counters is not None, values, rin, back, iif, ebpf_loaded,
                                  ctx.listeners)
        found, checked = kernverdict.decide(r, facts, h.dst, h.dport)
        out.append(dataclasses.replace(r, kernel=found, kernel_checked=checked, route_back=back))
    return out


def _texts(*parts: object) -> list[str]:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, dict):
            out += _texts(*part.values())
    return out


def uses_state(texts: list[str]) -> bool:
    """The ruleset has a match that keeps per-client state (xt_recent, dynamic sets and meters,
    limits, connlimit): a connection made after the run's undo would put the client in it."""
    t = "\n".join(texts)
    return bool(stateful.spent(texts)) or "-m recent" in t or re.search(r"\b(add|update) @|\bmeter\b", t) is not None


def after_accept(req: ProbeRequest, sending: Sending, results: list[PacketResult],
                 ctx: diagnose.Context, stateful_rules: bool = False) -> Steps[list[PacketResult]]:
    """A SYN the service answered: does it keep a real connection open? One connection from the
    sender (from-netns, local; not simulated ingress, whose source is made up, nor a --src the
    sender does not own), a short wait; for a service that closes it at once, its process,
    whether it uses libwrap, and the hosts.allow/hosts.deny line that decides the client."""
    out = []
    for r in results:
        spec = r.spec
        if spec.proto is not Proto.TCP or spec.flags != "S" or r.reply.kind != "syn-ack" or r.reply_dropped \
                or sending.mode is Mode.INGRESS or req.src is not None or spec.dport != req.dport:  # (--app's data ports)
            out.append(r)
            continue
        if stateful_rules:  # the connection would use up (and leave) the client's rate-limit or list state
            out.append(dataclasses.replace(r, after_accept=AfterAccept("not checked")))
            continue
        seen: str = yield ConnectCheck(req.from_netns if sending.mode is Mode.FROM_NETNS else None, spec.dst, spec.dport)
        if seen not in ("closed", "reset"):
            out.append(dataclasses.replace(r, after_accept=AfterAccept(seen or "not checked")))
            continue
        h = diagnose.seen(r)
        sock = next((s for s in ctx.listeners if s.proto is Proto.TCP and s.port == h.dport and serves(s, h.dst)
                     and s.process), None)
        pid = int(sock.process.split()[1]) if sock is not None and sock.process else None
        if pid is None:
            out.append(dataclasses.replace(r, after_accept=AfterAccept(seen)))
            continue
        names, libwrap, allow, deny = yield ProcessFacts(pid)
        decision = tcpwrap.decide(allow, deny, tuple(names), spec.src) if libwrap else None
        out.append(dataclasses.replace(r, after_accept=AfterAccept(
            seen, sock.process if sock else None, libwrap, decision.said() if decision else None,
            (not decision.granted) if decision else None, names[0] if names else None)))
    return out


def refused_unheard(r: PacketResult, ctx: diagnose.Context) -> bool:
    """The firewall let it in and the kernel refused it for want of a socket on the port."""
    refused = r.reply.kind == "rst" or r.reply.kind.endswith("port-unreachable")
    return r.verdict is Verdict.ACCEPT and refused and r.spec.proto is not Proto.ICMP and \
        not any(s.proto is r.spec.proto and s.port == diagnose.seen(r).dport for s in ctx.listeners)


def target_verdicts(results: list[PacketResult], ctx: diagnose.Context) -> Steps[list[PacketResult]]:
    """Each result a SYNPROXY, NFQUEUE or TPROXY rule took, with that target's verdict
    (tracer/diagnose/targets.py); the queue bindings are read only for a queued probe."""
    out, bound = [], None
    for r in results:
        took = targets.step_of(r)
        if took is not None and took[0] == "queue" and bound is None:
            bound = yield QueueBindings()
        h = diagnose.seen(r)
        t = targets.decide(r, bound or {}, ctx.listeners, h.dst, h.dport) if took is not None else None
        if t is None or took is None:
            out.append(r)
            continue
        ref = r.decided_by if r.decided_by is not None and r.decided_by.rule is took[1].rule \
            else basechains.step_ref(took[1], ctx.ruleset)  # the target's rule decided, whatever came after
        out.append(dataclasses.replace(r, target=t, decided_by=ref))
    return out


def client_reply(spec: PacketSpec, kind: str, text: str) -> Reply:
    """--from ssh://: the reply as the client host's socket saw it (no packet was captured:
    what the socket API tells is all there is; `text` says what it cannot tell apart)."""
    said = f"seen by the client's socket: {text}"
    if kind == "syn-ack":
        return Reply("syn-ack", said)
    if kind == "refused":
        return Reply("rst" if spec.proto is Proto.TCP else "icmp 3/3 port-unreachable", said)
    if kind == "icmp":
        return Reply("icmp error (unreachable or prohibited)", said)
    if kind == "reply":
        return Reply("udp", said)
    return Reply("none", said if kind != "timeout" else "")


def analyse(req: ProbeRequest, run_id: str, full: Optional[Snapshot], legacy_saved: dict[str, str], sending: Sending,
            armed: Armed, exchanges: tuple[Exchange, ...], finished: Finished,
            ebpf: EbpfOutcome = EbpfOutcome(), app: Optional[ftp.FtpSession] = None) -> Steps[ProbeReport]:
    """Read the chains the probes met, correlate, explain: the report."""
    left, diff, verdict = yield from verify(req, full, armed, finished)
    # The rules are read now, chain by chain, for the chains the probes met: handles do not
    # change, and the generations prove whether anything else changed meanwhile. Legacy tables
    # come from their save before the run (the kernel log's rule numbers count those).
    met = {(e.family, e.table, e.chain) for x in exchanges for e in x.events
           if e.source != ebpf_timeline.SOURCE and not e.table.startswith(plan.TABLE_PREFIX) and not e.legacy
           and e.kind is not EventKind.CONNTRACK}
    # Long chains are read sparsely (only the rules the events name, tracer/system/sparse.py) unless an
    # evidence bundle lists everything anyway, and again in full when a finding will search them.
    wanted = None if full else _wanted(exchanges, met)
    snap: Snapshot = yield MetChains(tuple(sorted(met)), legacy_saved, wanted)
    results = yield from _results(run_id, sending, exchanges, snap)
    if snap.sparse and any(_searches_chains(r) for r in results):
        snap = yield MetChains(tuple(sorted(met)), legacy_saved)
        results = yield from _results(run_id, sending, exchanges, snap)
    target, mode, via = sending.target, sending.mode, sending.via
    rp = (yield RpFilter(via, target.back)) if mode is Mode.INGRESS and via is not None and target.dst.version == 4 else False
    tcp_loose = armed.tcp_loose
    # Near misses look beyond the met chains (other tables, zones never entered): a blocked probe
    # costs one listing of the tables on the input and forward hooks, an accepted one nothing.
    blocked = any(r.verdict.value in ("drop", "reject") for r in results)
    near: Optional[Snapshot] = (full or (yield FilterView(legacy_saved))) if blocked else None
    ports = tuple(sorted({diagnose.seen(r).dport for r in results} | {r.spec.dport for r in results}
                         | {targets.tproxy_port(r) for r in results} - {None}))
    ctx = diagnose.Context(snap.ruleset, (yield Listeners(ports)), local=mode is Mode.LOCAL,
                           full_ruleset=near.ruleset if near is not None else None,
                           full_sets=parse_sets(near.nft_text) if near is not None else None,
                           set_text=near.nft_text if near is not None else None,
                           tcp_loose=int(tcp_loose) if tcp_loose and tcp_loose.isdigit() else None,
                           mode=mode, via=via, src=sending.specs[0].src if sending.specs else None,
                           route_dev=target.back.dev if target.back is not None else None, rp_filter_drops=rp,
                           fallback=sending.fallback, unobserved=sending.tplan.unobserved)
    if any(refused_unheard(r, ctx) for r in results):  # SELinux may have kept the service off its port
        ctx = dataclasses.replace(ctx, selinux=selinux.facts(*(yield SelinuxFacts())))
    results = yield from kernel_verdicts(sending, exchanges, results, ctx, ebpf.status == "loaded")
    results = yield from after_accept(req, sending, results, ctx,
                                      uses_state(_texts(snap.nft_text, snap.ipt_text, legacy_saved)))
    results = yield from target_verdicts(results, ctx)
    app_findings: tuple[Finding, ...] = ()
    if app is not None and app.passive:  # --app ftp: the helper's state needs the rules beyond the met chains
        rules = full or (yield TakeSnapshot())
        app_findings = ftp.findings(app, results, req.dport, mode is Mode.LOCAL, rules.nft_text,
                                    list(rules.ipt_text.values()) + list(legacy_saved.values()))
    kplan = armed.kplan
    evidence = Evidence(
        full.nft_text if full else snap.nft_text, full.ipt_text if full else snap.ipt_text, sending.tplan.batch,
        finished.trace, tuple(x.reply.data if x.reply else b"" for x in exchanges), diff, legacy_saved,
        finished.kmsg, finished.nflog, tuple(sorted(armed.own)), kernplan_json(kplan), ebpf.raw, ebpf.names)
    return build_report(
        req, run_id, results, ctx, leftover=left, generations=armed.generations,
        instrumentation=tuple(sending.tplan.rules) + (tuple(kplan.rules) if kplan is not None else ()),
        lost_events=finished.lost, evidence=evidence, mode=mode, via=via, caveats=sending.caveats,
        notes=armed.notes + ebpf.notes, own_commits=armed.own_commits, legacy_unchanged=verdict.legacy_unchanged,
        unchanged=not verdict.found, checked=verdict.checked, ebpf=ebpf.status,
        client=tuple((x.spec.sport, x.client[0], x.client[1]) for x in exchanges if x.client is not None),
        app=app, app_findings=app_findings)
