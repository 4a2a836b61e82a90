"""Findings that stand on their own (the mode, the path, the reply, the listener). No I/O."""
from __future__ import annotations

from typing import Optional

from tracer.correlate.basechains import overridden
from tracer.diagnose.context import Probe, verb, what, where
from tracer.diagnose.fixes import accept_rule, reply_rule
from tracer.ruleset.match import rule_action
from tracer.ruleset.match.scope import narrowings
from tracer.model import Backend, EventKind, Finding, Proto, Verdict
from tracer.collect.sockets import serves


def local_probe(p: Probe) -> Optional[Finding]:
    ctx = p.ctx
    if not ctx.local:
        return None
    why = (f"Simulated ingress was not possible ({ctx.fallback}), so the probe was sent locally instead"
           if ctx.fallback else "The probe was sent from the target namespace itself (--local, or --from-netns naming the target)")
    return Finding(
        "local-probe",
        f"{why}: it took OUTPUT -> lo -> INPUT, so rules matching a real interface (-i eth0) or a remote "
        "source address were not exercised, and an early `-i lo -j ACCEPT` may accept it where a remote "
        "client would be blocked.",
        "send it as a remote client would: drop --local (fwtrace then injects it on the real interface as if "
        "received from --src), or --from-netns NS (a namespace on the other side of a link)"
        if not ctx.fallback else "probe from a real second host, or from a namespace on a link: --from-netns NS",
    )


def rp_filter(p: Probe) -> Optional[Finding]:
    ctx, r = p.ctx, p.result
    if not (ctx.rp_filter_drops and r.path and not {"input", "forward"} & set(r.path) and not p.blocked
            and ctx.via is not None):
        return None
    back = f"leaves by {ctx.route_dev}" if ctx.route_dev else "does not exist"
    return Finding(
        "rp-filter",
        f"The packet from {ctx.src} arrived on {ctx.via} and passed PREROUTING, then the kernel dropped it "
        f"before INPUT/FORWARD: reverse-path filtering (rp_filter) is on for {ctx.via}, and the route back "
        f"to {ctx.src} {back}, not {ctx.via}. The firewall rules never saw it.",
        f"route {ctx.src} back via {ctx.via} (`ip route add {ctx.src} via GATEWAY dev {ctx.via}`), or make the check "
        f"loose: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ctx.via}.rp_filter=2",
        (f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ctx.via}.rp_filter=2",),
    )


def forwarded(p: Probe) -> Optional[Finding]:
    r, h = p.result, p.seen
    if "forward" not in r.path:
        return None
    dnat = next((s for s in r.steps if s.rule is not None and rule_action(s.rule) == "dnat"), None)
    to = f"{h.dst}:{h.dport}" if r.spec.proto is not Proto.ICMP else str(h.dst)
    how = f"routed on to {to}"
    if dnat and dnat.rule:
        how = f"DNATed to {to} by {dnat.event.table} {dnat.event.chain} rule {dnat.rule.number} `{dnat.rule.display}`"
    ref = r.decided_by
    fix = None
    # Only a catch-all or a policy is opened for the service; a targeted FORWARD rule is left to
    # blocked-by-rule, whose fix is scoped to the client.
    if p.blocked and ref is not None and "forward" in ref.chain.lower() and (
            ref.rule is None or not narrowings(ref.rule, p.iif, p.oif)):
        fix = accept_rule(p, ref, ref.rule)
    return Finding(
        "forwarded",
        f"The packet was {how} and went through FORWARD, not INPUT: rules in INPUT do not apply to it "
        "(the usual case for Docker published ports, KVM guests and routers).",
        fix, (fix,) if fix else (),
    )


def mixed_backends(p: Probe) -> Optional[Finding]:
    """iptables-legacy and nf_tables rules on one host: both run on every packet, and each
    tool shows only its own half (`iptables` is iptables-nft on current distributions)."""
    r, ruleset = p.result, p.ctx.ruleset
    fam = r.spec.nfproto
    legacy_tables = sorted({f"{t.family} {t.name}" for t in ruleset.tables
                            if t.backend is Backend.IPTABLES_LEGACY and t.family == fam})
    nft_tables = sorted({f"{t.family} {t.name}" for t in ruleset.tables if t.backend is not Backend.IPTABLES_LEGACY
                         and t.family in (fam, "inet") and any(c.rules or c.is_base for c in t.chains)})
    if not (legacy_tables and nft_tables):
        return None  # one backend for this packet's family (the other family may differ)
    met = {("iptables-legacy" if s.event.legacy else "nf_tables") for s in r.steps if s.event.kind is not EventKind.CONNTRACK}
    ref = r.decided_by
    by = f" This packet's verdict came from the {'iptables-legacy' if ref.legacy else 'nf_tables'} side ({where(ref)})." \
        if ref is not None else ""
    msg = (f"This host has rules in both iptables-legacy (x_tables: {', '.join(legacy_tables)}) and nf_tables "
           f"({', '.join(nft_tables)}); every IPv{r.spec.family} packet passes through both, but `iptables -S` (iptables-nft) and "
           f"`nft list ruleset` do not show the legacy rules, and `iptables-legacy -S` does not show the nft ones. "
           f"The probe met {' and '.join(sorted(met)) or 'neither'}.{by}")
    fix = ("move to one backend: `iptables-legacy-save > legacy.rules`, load them with `iptables-nft-restore`, then "
           "flush the legacy tables (`iptables-legacy -F; iptables-legacy -X` per table) and stop whatever still "
           "calls iptables-legacy (update-alternatives --display iptables)")
    return Finding("mixed-backends", msg, fix)


def accept_overridden(p: Probe) -> Optional[Finding]:
    """A base chain accepted the packet, and a later base chain dropped it anyway."""
    pair = overridden(p.result.hooks)
    if pair is None:
        return None
    acc, drop = pair
    msg = (f"{where(acc.ref)} (hook {acc.hook}, priority {acc.priority}) accepted the packet with {what(acc.ref)}, but "
           f"an accept ends only its own base chain: {where(drop.ref)} (hook {drop.hook}, priority {drop.priority}) "
           f"ran next and {verb(drop.verdict)} it with {what(drop.ref)}. A packet must get through every base chain "
           "of its hooks.")
    fix = (f"allow the traffic in {where(drop.ref)} too (see the other findings), or remove one of the two chains if "
           "two firewall managers are loaded by mistake")
    return Finding("accept-overridden", msg, fix)


def reply_dropped(p: Probe) -> Optional[Finding]:
    r = p.result
    ref = r.reply_decided_by
    if not r.reply_dropped or ref is None:
        return None
    targeted = ref.rule is not None and bool(narrowings(ref.rule, None, None))
    fix = reply_rule(p, ref, targeted)
    msg = (f"{_accepted(p)} but the {reply_name(r.reply.kind)} was {verb(r.reply_verdict)} on its way out by "
           f"{where(ref)} {what(ref)}: the client never gets an answer.")
    return Finding("reply-dropped", msg, f"let the service's replies out, for connections conntrack already accepted: {fix}",
                   (fix,))


def _accepted(p: Probe) -> str:
    r = p.result
    ref = r.decided_by
    by = f" ({ref.chain} {'rule ' + str(ref.rule.number) if ref.rule else 'policy ' + (ref.policy or '?').upper()})" \
        if ref is not None else ""
    if r.verdict is Verdict.ACCEPT:
        return f"The {probe_name(r.spec.proto, r.spec.flags)} was accepted{by}"
    return f"The {probe_name(r.spec.proto, r.spec.flags)} was {verb(r.verdict)}{by}"


def probe_name(proto: Proto, flags: str) -> str:
    if proto is Proto.TCP:
        return {"S": "SYN", "A": "ACK", "F": "FIN", "FA": "FIN", "R": "RST", "SA": "SYN-ACK"}.get(flags.upper(), f"[{flags}] packet")
    return "UDP datagram" if proto is Proto.UDP else "echo request"


def reply_name(kind: str) -> str:
    return {"syn-ack": "SYN-ACK", "rst": "RST", "udp": "UDP reply", "echo-reply": "echo reply"}.get(
        kind, f"ICMP error ({kind})" if kind.startswith("icmp") else kind)


def stack_drop(p: Probe) -> Optional[Finding]:
    r = p.result
    if r.verdict is not Verdict.UNKNOWN or not r.path:
        return None
    return Finding(
        "stack-drop",
        f"The packet passed {' -> '.join(r.path)} without any drop verdict and then vanished: the kernel "
        "dropped it outside the firewall (no route, a martian source, reverse-path filtering, a full queue).",
        f"check `ip route get {r.spec.src} from {r.spec.dst}`, the rp_filter sysctls "
        "(net.ipv4.conf.*.rp_filter) and `nstat -az | grep -i drop`",
    )


def unobserved(p: Probe) -> Optional[Finding]:
    """The probe (or its reply) vanished, and the ruleset has chains no trace can show."""
    r, chains = p.result, p.ctx.unobserved
    gone = r.reply.none or not r.reply.captured
    if not chains or not (r.verdict is Verdict.UNKNOWN or (r.verdict is Verdict.ACCEPT and gone)):
        return None
    what_ = "the probe" if r.verdict is Verdict.UNKNOWN else "the reply"
    return Finding("unobserved-chains",
                   f"{what_[0].upper()}{what_[1:]} vanished, and these base chains are not instrumented by fwtrace (their "
                   f"trace may be missing), so any of them may have dropped it: {', '.join(chains)}.",
                   "list them with `nft list chain FAMILY TABLE CHAIN` and look for a drop matching this flow")


def reply_missing(p: Probe) -> Optional[Finding]:
    r, ctx = p.result, p.ctx
    if r.verdict is not Verdict.REJECT or not r.reply.none:
        return None
    if ctx.mode == "ingress" and ctx.route_dev is None:
        why = (f"this host has no route back to {r.spec.src}, so the reject's reply could not be sent at all: "
               "that client sees a silent drop, not a refusal")
    else:
        why = ("the kernel rate-limits ICMP errors (net.ipv4.icmp_ratelimit, net.ipv4.icmp_msgs_per_sec; "
               "icmpv6 likewise), so under load a client sees a silent drop instead of a refusal")
    return Finding("reply-missing", f"The packet was rejected, but no reply came back within the timeout: {why}.", None)


def no_listener(p: Probe) -> Optional[Finding]:
    r, spec, h = p.result, p.result.spec, p.seen
    if r.verdict is not Verdict.ACCEPT or "forward" in r.path or spec.proto is Proto.ICMP:
        return None
    refused = r.reply.kind == "rst" or r.reply.kind.endswith("port-unreachable")
    mine = [sock for sock in p.ctx.listeners if sock.proto is spec.proto and sock.port == h.dport]
    if not refused or any(serves(sock, h.dst) for sock in mine):
        return None
    elsewhere = ", ".join(f"{sock.addr}:{sock.port}" for sock in mine)
    msg = (f"The firewall accepted the packet, but nothing listens on {spec.proto.value} port {h.dport} "
           f"at {h.dst}: the kernel answered with {r.reply.kind}.")
    if elsewhere:
        msg += f" A listener exists on {elsewhere} only (see listener-address)."
        fix = None  # listener-address says how, naming the process
    else:
        fix = f"start the service on port {h.dport} (check with `ss -lnp{'t' if spec.proto is Proto.TCP else 'u'} 'sport = :{h.dport}'`)"
    return Finding("no-listener", msg, fix)


