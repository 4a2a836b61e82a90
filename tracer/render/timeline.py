"""A report as labelled rows in sections: the one layout every renderer draws. No I/O.

A row is (marker, label, body, style): the marker column flags the deciding rule, the label says
what the row is ("rule 7", "rules 1-6", "policy", "reply"), the body carries the rule text (which
renderers fold, never cut), and the style names its meaning for colour ("decider-bad", "skip").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from tracer.model import EventKind, PacketResult, Proto, Step, Verdict
from tracer.packet import parse_headers
from tracer.report import classify
from tracer.render import appview
from tracer.render.replaycmd import replay_command  # noqa: F401  (markdown and html take it from here)


@dataclass(frozen=True)
class Row:
    label: str
    body: str
    style: str = ""
    marker: str = ""


Section = list[Row]
ChainKey = tuple[str, str, str, bool]  # family, table, chain, legacy


def _where(family: str, table: str, chain: str, legacy: bool) -> str:
    return f"{family} {table} {chain}" + (" [legacy]" if legacy else "")


def _step_row(step: Step, deciding: bool, bad: bool) -> Row:
    ev = step.event
    mark = ">" if deciding else ""
    style = ("decider-bad" if bad else "decider-good") if deciding else "step"
    verdict = f"  -> {ev.verdict}" if ev.verdict else ""
    if ev.kind is EventKind.CONNTRACK:
        return Row("conntrack", f"INVALID: {ev.text}", "warn")
    if ev.kind is EventKind.LOG:
        if ev.source == "nflog":
            return Row("nflog", f"\"{ev.text.split(' ', 1)[-1]}\" (fwtrace's NFLOG rule, read over netlink)", "dim")
        return Row("log", f"\"{ev.text.split(' IN=', 1)[0].strip()}\" (fwtrace's LOG rule; also in dmesg)", "dim")
    if ev.kind is EventKind.POLICY:
        return Row("policy", (ev.verdict or "?").upper(), style, mark)
    if ev.kind is EventKind.RETURN:
        return Row("return", "end of chain, back to the caller", "dim")
    if step.rule is not None:
        if ev.verdict and step.rule.display.endswith(ev.verdict):
            verdict = ""  # nft's own text already ends in "jump X" / "accept"
        return Row(f"rule {step.rule.number}", step.rule.display + verdict, style, mark)
    if ev.number is not None:
        return Row(f"rule {ev.number}", f"(not in the snapshot){verdict}", style, mark)
    return Row(f"handle {ev.handle}", f"(rule not read){verdict}", style, mark)


def _is_decider(step: Step, r: PacketResult) -> bool:
    d = r.decided_by
    if d is None or step.event.kind not in (EventKind.RULE, EventKind.POLICY):
        return False
    ev = step.event
    if (ev.family, ev.table, ev.chain, ev.legacy) != (d.family, d.table, d.chain, d.legacy):
        return False
    if d.rule is None:
        return ev.kind is EventKind.POLICY
    return step.rule is not None and step.rule.number == d.rule.number


def steps(r: PacketResult) -> Section:
    """The timeline: a chain row whenever the chain changes, every rule before the match accounted for."""
    rows: Section = []
    bad = r.verdict in (Verdict.DROP, Verdict.REJECT)
    pos: dict[ChainKey, int] = {}
    jumped: Optional[ChainKey] = None
    current: Optional[ChainKey] = None
    last_hdr = None
    decided = False
    held: Section = []  # a REJECT's own reply (eBPF), said after the rules its rule skipped
    for step in r.steps:
        ev = step.event
        if ev.source == "ebpf":
            row = _ebpf_row(step)
            if ev.kind is EventKind.SEND and "reject" in (ev.location or ""):
                held.append(row)
            else:
                rows.append(row)
            continue
        key: ChainKey = (ev.family, ev.table, ev.chain, ev.legacy)
        if jumped is not None and (jumped[:2], jumped[3]) == (key[:2], key[3]) and jumped != key:
            # The kernel reports no event for falling off a regular chain: say it here.
            rows.append(Row("", f"{' '.join(jumped[:3])}: no rule matched, back to the caller", "dim"))
        jumped = None
        if key != current and ev.kind is not EventKind.CONNTRACK:
            owner = classify.owner_of(ev.table, ev.chain, step.rule.display if step.rule else "")
            iif = f"  (in {ev.iif})" if ev.iif and ev.packet else ""
            rows.append(Row("chain", _where(*key) + (f"  [{owner.describe()}]" if owner else "") + iif, "chain"))
            current = key
        if step.rule is not None:
            skipped = range(pos.get(key, 0) + 1, step.rule.number)
            if skipped:
                span = f"rule {skipped[0]}" if len(skipped) == 1 else f"rules {skipped[0]}-{skipped[-1]}"
                rows.append(Row(span, "no match", "skip"))
            pos[key] = step.rule.number
            if ev.verdict and ev.verdict.split()[0] in ("jump", "goto"):
                jumped = (ev.family, ev.table, ev.verdict.split()[1], ev.legacy)
                pos[jumped] = 0
        rows += held
        held = []
        h = parse_headers(ev.packet) if ev.packet else None
        if h is not None and last_hdr is not None and (h.dst, h.dport) != (last_hdr.dst, last_hdr.dport):
            rows.append(Row("", f"(packet now addressed to {h.dst}:{h.dport})", "note"))
        if h is not None:
            last_hdr = h
        deciding = not decided and _is_decider(step, r)
        decided = decided or deciding
        row = _step_row(step, deciding, bad)
        if ev.ct_state:  # Linux 6.16+ traces carry the conntrack state at every step
            row = Row(row.label, f"{row.body}  [ct {ev.ct_state}]", row.style, row.marker)
        rows.append(row)
    rows += held
    if not r.steps:
        rows.append(Row("", "(no chain of the ruleset saw this packet)", "dim"))
    return rows


def _ebpf_row(step: Step) -> Row:
    """The kernel's own view (eBPF: drops with their reason, replies the stack sends)."""
    from tracer.render.ebpf_text import ebpf_line

    ev = step.event
    body = ebpf_line(ev).split("kernel (eBPF)", 1)[-1].strip() + (f"  (in {ev.iif})" if ev.iif else "")
    return Row("kernel", body, "warn" if ev.kind is EventKind.DROP else "dim")


def verdict_text(r: PacketResult) -> str:
    k = r.kernel
    if k is not None:
        at = f" ({k.reason}" + (f" in {k.function}" if k.function else "") + ")"
        fw = f"; the firewall's own verdict: {r.verdict.value}" if r.verdict is not Verdict.UNKNOWN else ""
        return f"DROP by the kernel: {k.cause}" + (f", {k.setting}" if k.setting else "") + at + fw
    d = r.decided_by
    if d is None:
        return r.verdict.value.upper()
    num = f" rule {d.rule.number}" if d.rule else ""
    legacy = " (iptables-legacy)" if d.legacy else ""
    word = r.target.words() if r.target is not None else r.verdict.value.upper()  # SYNPROXY, NFQUEUE, TPROXY
    return f"{word} by {d.family} {d.table} {d.chain}{legacy}{num}: {d.text}"


def packet(i: int, r: PacketResult) -> Section:
    bad = r.final_verdict in (Verdict.DROP, Verdict.REJECT)
    rows = [Row(f"packet {i}", r.spec.summary(), "packet")]
    if r.path:
        rows.append(Row("path", " -> ".join(r.path), "dim"))
    rows += steps(r)
    rows.append(Row("verdict", verdict_text(r), "bad" if bad else "good" if r.verdict is Verdict.ACCEPT else "warn"))
    reply = r.reply.kind + (f"  ({r.reply.summary})" if r.reply.summary else "")
    rows.append(Row("reply", reply, ""))
    if r.conntrack is not None:
        traced = any(s.event.ct_state for s in r.steps)
        rows.append(Row("conntrack", r.conntrack + ("" if traced else "  (read from the conntrack table after the "
                                                     "probe: this kernel's trace events carry no conntrack state)"), "dim"))
    for step in r.reply_steps:
        ev = step.event
        rows.append(Row("reply via", f"{_where(ev.family, ev.table, ev.chain, ev.legacy)}: {_step_row(step, False, False).label} "
                        f"{_step_row(step, False, False).body}".rstrip(), "dim"))
    if r.reply_dropped and r.reply_decided_by is not None:
        d = r.reply_decided_by
        num = f" rule {d.rule.number}" if d.rule else ""
        rows.append(Row("reply fate", f"{r.reply_verdict.value.upper()} by {d.family} {d.table} {d.chain}{num}: {d.text}",
                        "bad", ">"))
    if len(r.hooks) > 1:  # every base chain's outcome, when more than one had a say
        rows += [Row("base chain", f"{h.ref.family} {h.ref.table} {h.chain} ({h.hook} {h.priority:+d}) {h.verdict.value}"
                     + (f" rule {h.ref.rule.number}" if h.ref.rule else " policy")
                     + (f" of {h.ref.chain}" if h.ref.chain != h.chain else ""), "dim") for h in r.hooks]
    return rows


def header(report: Any) -> str:
    req = report.request
    target = f"namespace {req.netns}" if req.netns else "the current namespace"
    mode = report.mode or req.mode
    if mode == "from-netns":
        how = f"sent from namespace {req.from_netns}"
    elif mode == "from-ssh":
        how = f"sent from the client host {_ssh_host(str(req.from_ssh))} over SSH"
    elif mode == "ingress":
        src = report.results[0].spec.src if report.results else req.src
        how = f"simulated as received on {report.via} from {src} (replies caught before leaving)"
    else:
        how = "sent locally (OUTPUT -> lo -> INPUT)"
    return f"fwtrace run {report.run_id}: probing {target}, {how}"


def findings(report: Any) -> Section:
    """Each finding with its fixes, safest first (tracer/diagnose/safe.py): an owner's fix with its
    commands in the manager's terms, the raw command under it, and whom each fix lets in."""
    rows: Section = []
    for f in report.findings:
        rows.append(Row("finding", f"[{f.code}] {f.message}", "finding"))
        if not f.fixes:
            if f.fix:
                rows.append(Row("fix", f.fix, "fix"))
            continue
        for i, x in enumerate(f.fixes):
            label = "fix" if i == 0 else "or"
            if x.owner is not None and x.raw is not None:
                own = [c for c in x.commands if c != x.raw]
                owner = classify.decider_owner(report.results[0]) if report.results else None
                name = owner.describe() if owner is not None and owner.key == x.owner else classify.NAMES.get(x.owner, x.owner)
                rows.append(Row(label, f"as {name} wants it: {own[0] if own else x.raw}", "fix"))
                rows += [Row("", c, "fix") for c in own[1:]]
                if x.why:
                    rows.append(Row("why", x.why, "dim"))
                if x.raw not in own[:1]:
                    rows.append(Row("raw fix", x.raw, "dim"))
            elif x.owner is not None and x.commands:
                name = classify.NAMES.get(x.owner, x.owner)
                owner = classify.decider_owner(report.results[0]) if report.results else None
                name = owner.describe() if owner is not None and owner.key == x.owner else name
                rest = x.text.split(x.commands[0], 1)[1].lstrip(";) ").strip() if x.commands[0] in x.text else ""
                rows.append(Row(label, f"as {name} wants it: {x.commands[0]}", "fix"))
                rows += [Row("", c, "fix") for c in x.commands[1:]]
                if rest:
                    rows.append(Row("", rest.removeprefix("(").removesuffix(")"), "step"))
                if x.why:
                    rows.append(Row("why", x.why, "dim"))
            else:
                rows.append(Row(label, x.text, "fix" if i == 0 else "step"))
            if x.lets_in and (x.commands or x.scope != "client"):
                rows.append(Row("scope", f"{x.scope}: {x.lets_in}", "dim"))
            if x.collateral is not None and x.commands:  # --check-fixes; UNSAFE: its scope says fewer than get in
                rows += [Row(*(("UNSAFE", t, "bad") if x.collateral.contradicts else ("checked", t, "dim")))
                         for t in x.collateral.lines(x.scope)]
    return rows


def summary(report: Any) -> str:
    """One line to paste into a ticket: outcome, what, where from, and who decided."""
    out = classify.outcome(report).upper()
    results = list(report.results)
    if not results:
        return f"{out}: no probe was sent (fwtrace run {report.run_id})"
    bad = [r for r in results if classify.packet_outcome(r, report.findings) != "reached"]
    r = bad[0] if bad and out != "REACHED" else results[0]
    s = r.spec
    what = f"{s.proto.value}/{s.dport}" if s.proto is not Proto.ICMP else "ping"
    d = r.decided_by
    dropped = r.reply_dropped
    rd = getattr(r, "reply_decided_by", None)
    step = classify.reply_drop(r)
    if dropped and rd is not None:
        by = f"DROP by {rd.table} {rd.chain} " + (f"rule {rd.rule.number}" if rd.rule else "policy")
    elif dropped and step is not None:
        ev = step.event
        what_rule = f"rule {step.rule.number}" if step.rule else "policy" if ev.kind is EventKind.POLICY else "a rule"
        by = f"DROP by {ev.table} {ev.chain} {what_rule}"  # the outcome word says it was the reply
    elif dropped:
        by = "the reply was dropped on its way out"
    elif r.kernel is not None:
        by = f"dropped by the kernel: {r.kernel.cause}" + (f", {r.kernel.setting}" if r.kernel.setting else "")
    elif r.target is not None and d is not None:
        by = f"{r.target.words()} by {d.table} {d.chain} " + (f"rule {d.rule.number}" if d.rule else "policy")
    elif d is None:
        by = f"no verdict traced, reply {r.reply.kind}"
    elif d.rule is not None:
        by = f"{r.verdict.value.upper()} by {d.table} {d.chain} rule {d.rule.number}"
    else:
        by = f"policy {(d.policy or r.verdict.value).upper()} of {d.table} {d.chain}"
    if r.verdict is Verdict.ACCEPT and not dropped and r.kernel is None:
        by += f" ({r.reply.kind})"
    many = f" ({len(bad)} of {len(results)} packets)" if len(results) > 1 and out != "REACHED" else ""
    return f"{out} {s.src} -> {s.dst} {what}: {by}{many}{appview.summary(report)}"


def tail(report: Any) -> Section:
    rows = [Row("conclusion", c, "conclusion") for c in dict.fromkeys(report.conclusions)]
    rows += [Row("note", n, "dim") for n in report.notes]
    if report.lost_events:
        rows.append(Row("warning", "the kernel dropped some trace events (socket buffer full); "
                        "the timeline may be incomplete", "warn"))
    style = "good" if report.cleanup_ok else "bad"
    rows += [Row("" if i else "cleanup", c, style) for i, c in enumerate(cleanup(report))]
    return rows


def cleanup(report: Any) -> list[str]:
    """The cleanup proof, a row each: when it failed, each leftover (with its remedy) on a row of
    its own after the one that says so, as a list of them reads best."""
    mode = str(report.mode or report.request.mode)
    return [line.removeprefix("cleanup: ").strip() for line in cleanup_lines(report, mode)]


def cleanup_lines(report: Any, mode: str) -> list[str]:
    """The cleanup proof: by content (every object fwtrace touched, listed before and after);
    the nf_tables generations only say whether anybody else wrote meanwhile."""
    g = report.generations
    port = "injection port and tc programs removed, interfaces' tc state as before; " if mode == "ingress" else ""
    own = "only fwtrace's add and delete" if not report.own_commits else \
        f"only fwtrace's add, its {report.own_commits // 2} --log rule(s) in and out, and its delete"
    gens = "" if len(g) != 3 else (f"generation {g[0]} -> {g[2]}: other writers committed during the run" if report.other_writers
                                   else f"generation {g[0]} -> {g[2]}: {own}")
    out = []
    if report.cleanup_ok and report.ruleset_unchanged:
        what = "; ".join(x for x in (", ".join(report.checked), gens) if x)
        out.append(f"cleanup: {port}instrumentation removed; what fwtrace touched equals its listing before the run"
                   + (f" ({what})" if what else ""))
    elif report.cleanup_ok:
        out.append(f"cleanup: {port}instrumentation removed" + (f" ({gens})" if gens else ""))
    if not report.cleanup_ok:
        out.append("cleanup: FAILED, not as before the run:")
        out.extend(f"  {line}" for line in report.leftover)
        if report.other_writers:
            out.append(f"  ({gens}: some of these may be theirs)")
    return out


def sections(report: Any) -> list[Section]:
    """The whole report: caveats, each packet, findings, conclusions and cleanup."""
    out: list[Section] = []
    if report.caveats:
        out.append([Row("caveat", c, "warn") for c in report.caveats])
    out += [_with_client(report, packet(i, r), r) for i, r in enumerate(report.results, 1)]
    out += [[Row(*row) for row in sec] for sec in appview.sections(report)]  # --app ftp
    f = findings(report)
    if f:
        out.append(f)
    out.append(tail(report))
    return out


def _with_client(report: Any, rows: Section, r: PacketResult) -> Section:
    """--from ssh://: both ends of the exchange: sent from the client host, seen by the target
    (the trace rows), and what the client's socket saw come back."""
    saw = next((x for x in getattr(report, "client", ()) if x[0] == r.spec.sport), None)
    if report.request.from_ssh is None:
        return rows
    sent = Row("sent", f"by the client host {_ssh_host(report.request.from_ssh)} (its own address and route, a plain "
                       "socket), seen by the target as traced below", "dim")
    if saw is None:
        return [rows[0], sent] + rows[1:] + [Row("client saw", "(not known: the client's answer did not come back)", "warn")]
    _, kind, text = saw
    return [rows[0], sent] + rows[1:] + [Row("client saw", f"{kind}: {text}", "good" if kind in ("syn-ack", "reply") else "warn")]


def _ssh_host(url: str) -> str:
    return url[len("ssh://"):].rstrip("/") if url.startswith("ssh://") else url


def measured(report: Any) -> list[tuple[str, str]]:
    """How the run saw what it reports: for the reader who was not there."""
    mode = report.mode or report.request.mode
    how = {"ingress": f"simulated ingress: the probe was made to arrive on {report.via} as if from the network; "
                      "its replies were caught before leaving the machine",
           "local": "sent from the target namespace itself (OUTPUT -> lo -> INPUT)",
           "from-netns": f"sent from namespace {report.request.from_netns}, a host on a link",
           "from-ssh": f"sent from the client host {_ssh_host(str(report.request.from_ssh))} over SSH, with a plain "
                       "socket there (its real address and route); what its socket saw is reported beside the trace"
           }.get(mode, mode)
    sources = sorted({s.event.source for r in report.results for s in r.steps}) or ["nftrace"]
    return [
        ("run", report.run_id),
        ("probe", how),
        ("trace", f"kernel trace events ({', '.join(sources)}) of the probe's own packets only, from temporary "
                  f"non-terminal rules in table inet fwtrace_{report.run_id} (removed after the run)"),
        ("packets", f"{len(report.results)} sent, timeout {report.request.timeout:g}s each"),
    ]
