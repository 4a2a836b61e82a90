"""Render a probe report as the text an admin reads on a terminal. No I/O."""
from __future__ import annotations

from typing import Any, Optional

from tracer.ebpf.text import ebpf_line
from tracer.model import Action, EventKind, PacketResult, Step
from tracer.outcome import ProbeReport
from tracer.packet import parse_headers
from tracer.render.timeline import cleanup_lines


def _step_line(step: Step) -> str:
    ev = step.event
    if ev.source == "ebpf":
        return ebpf_line(ev)
    where = f"{ev.family} {ev.table} {ev.chain}" + (" [legacy]" if ev.legacy else "")
    if ev.kind is EventKind.CONNTRACK:
        return f"{'conntrack':<28} INVALID: {ev.text}"
    if ev.kind is EventKind.LOG:
        if ev.source == "nflog":
            return f"{where:<28} NFLOG \"{ev.text.split(' ', 1)[-1]}\" (fwtrace's NFLOG rule, read over netlink)"
        prefix = ev.text.split(" IN=", 1)[0].strip()
        return f"{where:<28} LOG \"{prefix}\" (fwtrace's LOG rule; also in dmesg)"
    if ev.kind is EventKind.POLICY:
        return f"{where:<28} policy {(ev.verdict or '?').upper()}"
    if ev.kind is EventKind.RETURN:
        return f"{where:<28} end of chain, return to caller"
    if step.rule is not None:
        verdict = f"  -> {ev.verdict}" if ev.verdict else ""
        return f"{where:<28} rule {step.rule.number:<3} {step.rule.display}{verdict}"
    if ev.number is not None:
        return f"{where:<28} rule {ev.number} (not in the snapshot) -> {ev.verdict}"
    return f"{where:<28} rule handle {ev.handle} -> {ev.verdict}"


def _packet(i: int, r: PacketResult) -> list[str]:
    lines = [f"packet {i}: {r.spec.summary()}"]
    if r.path:
        lines.append(f"  path: {' -> '.join(r.path)}")
    last_hdr = None
    # (family, table, chain, legacy): x_tables and nf_tables may both have "ip filter INPUT"
    pos: dict[tuple[str, str, str, bool], int] = {}  # rules of each chain already accounted for
    jumped: Optional[tuple[str, str, str, bool]] = None  # the chain the previous step jumped to
    held: list[str] = []  # a REJECT's own reply (eBPF), said after the rules its rule skipped
    for step in r.steps:
        ev = step.event
        if ev.source == "ebpf" and ev.kind is EventKind.SEND and "reject" in (ev.location or ""):
            held.append(f"    {_step_line(step)}" + (f" [in {ev.iif}]" if ev.iif else ""))
            continue
        key = (ev.family, ev.table, ev.chain, ev.legacy)
        if jumped is not None and (jumped[:2], jumped[3]) == (key[:2], key[3]) and jumped != key:
            # The kernel reports no event for falling off a regular chain: say it here.
            lines.append(f"    {' '.join(jumped[:3]):<28} no rule matched, back to the caller")
        jumped = None
        if step.rule is not None:
            skipped = range(pos.get(key, 0) + 1, step.rule.number)
            if skipped:
                span = f"rule {skipped[0]}" if len(skipped) == 1 else f"rules {skipped[0]}-{skipped[-1]}"
                where = f"{ev.family} {ev.table} {ev.chain}" + (" [legacy]" if ev.legacy else "")
                lines.append(f"    {where:<28} {span}: no match")
            pos[key] = step.rule.number
            v = ev.action
            if v is not None and v.action in (Action.JUMP, Action.GOTO) and v.target:
                jumped = (ev.family, ev.table, v.target, ev.legacy)
                pos[jumped] = 0
        lines += held
        held = []
        h = parse_headers(step.event.packet) if step.event.packet else None
        if h is not None and last_hdr is not None and (h.dst, h.dport) != (last_hdr.dst, last_hdr.dport):
            lines.append(f"    (packet now addressed to {h.dst}:{h.dport})")
        if h is not None:
            last_hdr = h
        iface = f" [in {step.event.iif}]" if step.event.iif and step.event.packet else ""
        ct = f" [ct {step.event.ct_state}]" if step.event.ct_state else ""  # Linux 6.16+ traces say it
        lines.append(f"    {_step_line(step)}{iface}{ct}")
    lines += held
    if not r.steps:
        lines.append("    (no chain of the ruleset saw this packet)")
    if r.decided_by is not None:
        d = r.decided_by
        num = f" rule {d.rule.number}" if d.rule else ""
        legacy = " (iptables-legacy)" if d.legacy else ""
        lines.append(f"  verdict: {r.verdict.value.upper()} by {d.family} {d.table} {d.chain}{legacy}{num}: {d.text}")
    else:
        lines.append(f"  verdict: {r.verdict.value.upper()}")
    reply = r.reply.kind + (f"  ({r.reply.summary})" if r.reply.summary else "")
    lines.append(f"  reply:   {reply}")
    if r.conntrack is not None:
        # Linux 6.16+ traces carry the state at every step; older ones only leave the table
        traced = any(s.event.ct_state for s in r.steps)
        source = "" if traced else "  (read from the conntrack table after the probe: this kernel's trace events carry no conntrack state)"
        lines.append(f"  conntrack: {r.conntrack}{source}")
    for step in r.reply_steps:
        lines.append(f"    reply {_step_line(step)}")
    lines.extend(_verdict_lines(r))
    return lines


def _verdict_lines(r: PacketResult) -> list[str]:
    """The reply's own fate, and every base chain's outcome when more than one had a say."""
    lines = []
    if r.reply_dropped and r.reply_decided_by is not None:
        d = r.reply_decided_by
        num = f" rule {d.rule.number}" if d.rule else ""
        lines.append(f"  reply verdict: {r.reply_verdict.value.upper()} by {d.family} {d.table} {d.chain}{num}: {d.text}")
    if len(r.hooks) > 1:
        lines.append("  base chains: " + "; ".join(
            f"{h.ref.family} {h.ref.table} {h.ref.chain} ({h.hook} {h.priority:+d}) {h.verdict.value}"
            + (f" rule {h.ref.rule.number}" if h.ref.rule else " policy") for h in r.hooks))
    return lines


def render(report: ProbeReport) -> str:
    req = report.request
    target = req.netns or "the current namespace"
    mode = report.mode or req.mode
    if mode == "from-netns":
        how = f"sent from namespace {req.from_netns}"
    elif mode == "ingress":
        src = report.results[0].spec.src if report.results else req.src
        how = f"simulated as received on {report.via} from {src} (replies caught before leaving)"
    else:
        how = "sent locally (OUTPUT -> lo -> INPUT)"
    out = [f"fwtrace run {report.run_id}: probing {target}, {how}", ""]
    out.extend(f"caveat: {c}" for c in report.caveats)
    if report.caveats:
        out.append("")
    for i, r in enumerate(report.results, 1):
        out.extend(_packet(i, r))
        out.append("")
    if report.findings:
        out.append("findings:")
        for f in report.findings:
            out.append(f"  [{f.code}] {f.message}")
            if f.fix:
                out.append(f"      fix: {f.fix}")
            if f.proven is not None:
                out.append(f"      {'proven' if f.proven else 'not enough alone'} (--prove-fix, narrowed to the probe: {f.proven_with})")
        out.append("")
    for c in dict.fromkeys(report.conclusions):
        out.append(f"conclusion: {c}")
    for note in report.notes:
        out.append(f"note: {note}")
    if report.lost_events:
        out.append("warning: the kernel dropped some trace events (socket buffer full); the timeline may be incomplete")
    out.extend(cleanup_lines(report, mode))
    return "\n".join(out) + "\n"
