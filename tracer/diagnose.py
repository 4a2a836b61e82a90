"""Explain a verdict timeline: findings with a code, a message and a concrete fix. No I/O."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

from tracer import nearfix
from tracer.ebpf import findings as ebpf_findings
from tracer.match import PacketFacts, ipt_spec, rule_action, rule_matches
from tracer.model import (
    Backend,
    EventKind,
    Finding,
    IPAddress,
    Listener,
    PacketResult,
    Proto,
    Rule,
    RuleRef,
    Ruleset,
    Verdict,
)
from tracer.packet import parse_headers
from tracer.sockets import serves

REACHED_REPLIES = ("syn-ack", "udp", "echo-reply")


@dataclass(frozen=True)
class Context:
    ruleset: Ruleset
    listeners: tuple[Listener, ...]
    local: bool  # sent from the target namespace itself (OUTPUT + lo + INPUT)
    tcp_loose: Optional[int] = None  # net.netfilter.nf_conntrack_tcp_loose of the target, when read
    mode: str = ""  # "ingress", "local", "from-netns" ("" : as `local` says)
    via: Optional[str] = None  # simulated ingress: the interface it arrived on
    src: Optional[IPAddress] = None  # the probe's source address
    route_dev: Optional[str] = None  # the interface the route back to src leaves by
    rp_filter_drops: bool = False  # rp_filter is on for `via` and the route back does not pass it
    fallback: Optional[str] = None  # "eth0: why simulated ingress was not possible", when it fell back
    # The whole ruleset, for near misses in chains and tables the packet never entered (None:
    # only the chains it met are known)
    full_ruleset: Optional[Ruleset] = None
    full_sets: Optional[dict[tuple[str, str, str], tuple[str, ...]]] = None  # nft named sets' elements (tracer/nftsets.py)


NOT_REACHED = ("no-listener", "rp-filter") + ebpf_findings.NOT_REACHED


def reached(result: PacketResult, findings: list[Finding]) -> bool:
    """Did the probe get through to a service?"""
    if result.verdict is not Verdict.ACCEPT or any(f.code in NOT_REACHED for f in findings):
        return False
    return result.reply.kind in REACHED_REPLIES or result.reply.none


def _ipt_cmd(rule_family: str, legacy: bool = False) -> str:
    cmd = "ip6tables" if rule_family == "ip6" else "iptables"
    return cmd + "-legacy" if legacy else cmd


def _table_opt(table: str) -> str:
    return "" if table == "filter" else f"-t {table} "


def _backend(ruleset: Ruleset, ref: RuleRef) -> Backend:
    if ref.legacy:
        return Backend.IPTABLES_LEGACY
    t = ruleset.table(ref.family, ref.table)
    return t.backend if t else Backend.NFT


@dataclass(frozen=True)
class Seen:
    """The probe's addresses as the deciding chain saw them: after any DNAT or REDIRECT."""

    src: IPAddress
    dst: IPAddress
    dport: int


_NAT_TO = re.compile(r"(?:--to-destination|\bdnat(?: ip6?)? to)\s+(\S+)")
_REDIRECT_TO = re.compile(r"(?:--to-ports|\bredirect to)\s+:?(\d+)")


def nat_target(text: str) -> tuple[Optional[IPAddress], Optional[int]]:
    """(address, port) a DNAT/REDIRECT rule rewrites to, from its iptables or nft text."""
    m = _NAT_TO.search(text)
    if m is None:
        r = _REDIRECT_TO.search(text)
        return None, int(r.group(1)) if r else None
    tok = m.group(1)
    if tok.startswith("["):  # [2001:db8::2]:80
        addr, _, rest = tok[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif tok.count(":") == 1:  # 198.51.100.2:80
        addr, port = tok.split(":")
    else:
        addr, port = tok, ""
    try:
        ip: Optional[IPAddress] = ipaddress.ip_address(addr.split("-")[0])
    except ValueError:
        ip = None
    digits = port.split("-")[0]
    return ip, int(digits) if digits.isdigit() else None


def seen(result: PacketResult) -> Seen:
    """Follow the timeline: header dumps say where the packet is addressed; NAT rules change it."""
    spec = result.spec
    cur = Seen(spec.src, spec.dst, spec.dport)
    for step in result.steps:
        h = parse_headers(step.event.packet) if step.event.packet else None
        if h is not None:
            cur = Seen(h.src, h.dst, h.dport if spec.proto is not Proto.ICMP else spec.dport)
        if step.rule is not None and rule_action(step.rule) in ("dnat", "redirect"):
            addr, port = nat_target(step.rule.display)
            cur = Seen(cur.src, addr or cur.dst, port if port is not None and spec.proto is not Proto.ICMP else cur.dport)
    return cur


def facts(result: PacketResult, iif: Optional[str], oif: Optional[str], h: Seen) -> PacketFacts:
    spec = result.spec
    new = spec.proto is not Proto.TCP or spec.flags.upper() in ("S",)
    return PacketFacts(
        family=spec.family,
        proto=spec.proto,
        src=h.src,
        dst=h.dst,
        sport=spec.sport,
        dport=h.dport,
        tcp_flags=spec.flags,
        iif=iif,
        oif=oif,
        ct_state="new" if new else None,
        icmp_type=(8 if spec.family == 4 else 128) if spec.proto is Proto.ICMP else None,
    )


def accept_rule(result: PacketResult, ref: RuleRef, backend: Backend, h: Seen, position: Optional[Rule]) -> str:
    """A command adding an accept rule for this packet in ref's chain, before `position` if given."""
    spec = result.spec
    dport, dst = h.dport, h.dst
    forward = ref.chain.lower() == "forward" or "forward" in ref.chain.lower()
    if backend is Backend.NFT:
        l3 = "ip" if spec.family == 4 else "ip6"
        daddr = f"{l3} daddr {dst} " if forward and dst else ""
        if spec.proto is Proto.ICMP:
            match = f"{daddr}{'icmp' if spec.family == 4 else 'icmpv6'} type echo-request"
        else:
            match = f"{daddr}{spec.proto.value} dport {dport}"
        chain = f"{ref.family} {ref.table} {ref.chain}"
        where = f"insert rule {chain} position {position.handle}" if position and position.handle else f"add rule {chain}"
        return f"nft {where} {match} accept"
    cmd = _ipt_cmd(ref.family, ref.legacy)
    d = f"-d {dst} " if forward and dst else ""
    if spec.proto is Proto.ICMP:
        match = f"{d}-p {'icmp --icmp-type echo-request' if spec.family == 4 else 'ipv6-icmp --icmpv6-type echo-request'}"
    else:
        match = f"{d}-p {spec.proto.value} --dport {dport}"
    pos = f" {position.number}" if position else ""
    return f"{cmd} {_table_opt(ref.table)}-I {ref.chain}{pos} {match} -j ACCEPT"


def _verb(v: Verdict) -> str:
    return {Verdict.REJECT: "rejected", Verdict.DROP: "dropped", Verdict.ACCEPT: "accepted"}.get(v, "decided")


def _where(ref: RuleRef) -> str:
    legacy = " (iptables-legacy)" if ref.legacy else ""
    return f"{ref.family} {ref.table} {ref.chain}{legacy}"


def shadowed(result: PacketResult, ctx: Context, pf: PacketFacts) -> Optional[Finding]:
    ref = result.decided_by
    if ref is None or ref.rule is None or result.verdict not in (Verdict.DROP, Verdict.REJECT):
        return None
    chain = ctx.ruleset.chain(ref.family, ref.table, ref.chain, ref.legacy)
    if chain is None:
        return None
    for later in chain.rules[ref.rule.number :]:
        if rule_action(later) == "accept" and rule_matches(later, pf) is True:
            decider = ref.rule
            msg = (
                f"{ref.chain} rule {decider.number} `{decider.display}` {_verb(result.verdict)} the packet; "
                f"rule {later.number} `{later.display}` would have accepted it but is never reached, "
                f"because it comes after rule {decider.number} (appended with -A after a catch-all)."
            )
            if _backend(ctx.ruleset, ref) is Backend.NFT or later.ipt is None:
                where = f"{ref.family} {ref.table} {ref.chain}"
                cmds = (
                    f"nft insert rule {where} position {decider.handle} {later.text}",
                    f"nft delete rule {where} handle {later.handle}",
                )
                fix = f"move the rule before rule {decider.number}: {cmds[0]}; then remove the unreachable copy: {cmds[1]}"
            else:
                cmd = f"{_ipt_cmd(ref.family, ref.legacy)} {_table_opt(ref.table)}"
                cmds = (f"{cmd}-I {ref.chain} {decider.number} {ipt_spec(later)}", f"{cmd}-D {ref.chain} {later.number + 1}")
                fix = f"{cmds[0]}; then delete the unreachable copy (now rule {later.number + 1}): {cmds[1]}"
            return Finding("shadowed-rule", msg, fix, cmds)
    return None


def mixed_backends(result: PacketResult, ctx: Context) -> Optional[Finding]:
    """iptables-legacy and nf_tables rules on one host: both run on every packet, and each
    tool shows only its own half (`iptables` is iptables-nft on current distributions)."""
    fam = result.spec.nfproto
    legacy_tables = sorted({f"{t.family} {t.name}" for t in ctx.ruleset.tables
                            if t.backend is Backend.IPTABLES_LEGACY and t.family == fam})
    nft_tables = sorted({f"{t.family} {t.name}" for t in ctx.ruleset.tables if t.backend is not Backend.IPTABLES_LEGACY
                         and t.family in (fam, "inet") and any(c.rules or c.is_base for c in t.chains)})
    if not (legacy_tables and nft_tables):
        return None  # one backend for this packet's family (the other family may differ)
    met = {("iptables-legacy" if s.event.legacy else "nf_tables") for s in result.steps if s.event.kind is not EventKind.CONNTRACK}
    ref = result.decided_by
    by = ""
    if ref is not None:
        by = f" This packet's verdict came from the {'iptables-legacy' if ref.legacy else 'nf_tables'} side ({_where(ref)})."
    msg = (f"This host has rules in both iptables-legacy (x_tables: {', '.join(legacy_tables)}) and nf_tables "
           f"({', '.join(nft_tables)}); every IPv{result.spec.family} packet passes through both, but `iptables -S` (iptables-nft) and "
           f"`nft list ruleset` do not show the legacy rules, and `iptables-legacy -S` does not show the nft ones. "
           f"The probe met {' and '.join(sorted(met)) or 'neither'}.{by}")
    fix = ("move to one backend: `iptables-legacy-save > legacy.rules`, load them with `iptables-nft-restore`, then "
           "flush the legacy tables (`iptables-legacy -F; iptables-legacy -X` per table) and stop whatever still "
           "calls iptables-legacy (update-alternatives --display iptables)")
    return Finding("mixed-backends", msg, fix)


_INVALID_RULE = re.compile(r"(?:--ctstate|--state)\s+\S*INVALID|\bct state\s+\S*invalid\b", re.I)


def conntrack_invalid(result: PacketResult, ctx: Context) -> Optional[Finding]:
    """The probe was INVALID to conntrack: say why, and which rule then dropped it."""
    spec = result.spec
    lines = [s.event.text for s in result.steps if s.event.kind is EventKind.CONNTRACK]
    ref = result.decided_by
    by_invalid_rule = ref is not None and ref.rule is not None and bool(_INVALID_RULE.search(ref.rule.display))
    if not lines and not by_invalid_rule:
        return None
    if lines:
        why = f"conntrack logged: \"{lines[0]}\""
    elif spec.proto is Proto.TCP and "S" not in spec.flags and result.conntrack in (None, "none"):
        loose = ctx.tcp_loose
        why = (f"the TCP packet has flags [{spec.flags}] and no SYN, and conntrack holds no connection for it "
               f"(conntrack entry: {result.conntrack or 'not read'}); ")
        if loose == 0:
            why += ("with net.netfilter.nf_conntrack_tcp_loose=0 conntrack does not pick up connections in mid-stream, so "
                    "the packet gets no conntrack entry and matches --ctstate INVALID (the kernel logs nothing for this case)")
        else:
            why += "conntrack treats a packet it cannot place in a connection as INVALID"
    else:
        why = f"the deciding rule matches INVALID packets (conntrack entry: {result.conntrack or 'not read'})"
    dropped = ""
    if ref is not None and result.verdict in (Verdict.DROP, Verdict.REJECT):
        what = f"rule {ref.rule.number} `{ref.rule.display}`" if ref.rule else f"policy {ref.policy or '?'}"
        dropped = f" Then {_where(ref)} {what} {_verb(result.verdict)} it."
    msg = f"conntrack found the probe INVALID: {why}.{dropped}"
    fix = ("expected for a stray packet of no connection (a scan, a late ACK after the connection was forgotten); "
           "to test whether the port is open, probe with a SYN (--flags S). If mid-stream pickup is wanted (e.g. "
           "after a firewall failover), `sysctl -w net.netfilter.nf_conntrack_tcp_loose=1`")
    return Finding("conntrack-invalid", msg, fix)


def diagnose(result: PacketResult, ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    ref = result.decided_by
    spec = result.spec
    h = seen(result)
    iif = next((s.event.iif for s in result.steps if s.event.iif), None)
    oif = next((s.event.oif for s in result.steps if s.event.oif), None)
    pf = facts(result, iif, oif, h)

    if ctx.local:
        why = (f"Simulated ingress was not possible ({ctx.fallback}), so the probe was sent locally instead"
               if ctx.fallback else "The probe was sent from the target namespace itself (--local)")
        findings.append(Finding(
            "local-probe",
            f"{why}: it took OUTPUT -> lo -> INPUT, so rules matching a real interface (-i eth0) or a remote "
            "source address were not exercised, and an early `-i lo -j ACCEPT` may accept it where a remote "
            "client would be blocked.",
            "send it as a remote client would: drop --local (fwtrace then injects it on the real interface as if "
            "received from --src), or --from-netns NS (a namespace on the other side of a link)"
            if not ctx.fallback else "probe from a real second host, or from a namespace on a link: --from-netns NS",
        ))

    if ctx.rp_filter_drops and result.path and not {"input", "forward"} & set(result.path) and result.verdict is not Verdict.DROP \
            and result.verdict is not Verdict.REJECT and ctx.via is not None:
        back = f"leaves by {ctx.route_dev}" if ctx.route_dev else "does not exist"
        findings.append(Finding(
            "rp-filter",
            f"The packet from {ctx.src} arrived on {ctx.via} and passed PREROUTING, then the kernel dropped it "
            f"before INPUT/FORWARD: reverse-path filtering (rp_filter) is on for {ctx.via}, and the route back "
            f"to {ctx.src} {back}, not {ctx.via}. The firewall rules never saw it.",
            f"route {ctx.src} back via {ctx.via} (`ip route add {ctx.src} via GATEWAY dev {ctx.via}`), or make the check "
            f"loose: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ctx.via}.rp_filter=2",
            (f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{ctx.via}.rp_filter=2",),
        ))

    if "forward" in result.path:
        dnat = next((s for s in result.steps if s.rule is not None and rule_action(s.rule) == "dnat"), None)
        to = f"{h.dst}:{h.dport}" if spec.proto is not Proto.ICMP else str(h.dst)
        how = f"routed on to {to}"
        if dnat and dnat.rule:
            how = f"DNATed to {to} by {dnat.event.table} {dnat.event.chain} rule {dnat.rule.number} `{dnat.rule.display}`"
        fix = None
        if result.verdict in (Verdict.DROP, Verdict.REJECT) and ref is not None and "forward" in ref.chain.lower():
            fix = accept_rule(result, ref, _backend(ctx.ruleset, ref), h, ref.rule)
        findings.append(Finding(
            "forwarded",
            f"The packet was {how} and went through FORWARD, not INPUT: rules in INPUT do not apply to it "
            "(the usual case for Docker published ports, KVM guests and routers).",
            fix,
            (fix,) if fix else (),
        ))

    mixed = mixed_backends(result, ctx)
    if mixed is not None:
        findings.append(mixed)

    invalid = conntrack_invalid(result, ctx)
    if invalid is not None:
        findings.append(invalid)

    if ref is not None and ref.rule is None and ref.policy == "drop":
        fix = accept_rule(result, ref, _backend(ctx.ruleset, ref), h, None)
        findings.append(Finding(
            "policy",
            f"No rule in {_where(ref)} matched the packet; the chain's default policy DROP decided.",
            fix,
            (fix,),
        ))

    # Moving an ACCEPT before the INVALID drop would let stray packets in: not a fix to offer.
    sh = shadowed(result, ctx, pf) if invalid is None else None
    if sh is not None:
        findings.append(sh)
    elif invalid is None and ref is not None and ref.rule is not None and result.verdict in (Verdict.DROP, Verdict.REJECT):
        fix = accept_rule(result, ref, _backend(ctx.ruleset, ref), h, ref.rule)
        findings.append(Finding(
            "blocked-by-rule",
            f"{_where(ref)} rule {ref.rule.number} `{ref.rule.display}` {_verb(result.verdict)} the packet.",
            f"if this traffic should be allowed, accept it before that rule: {fix}",
            (fix,),
        ))

    # Near misses (tracer/nearmiss.py): the ACCEPT rules meant for a blocked packet that failed one condition.
    findings.extend(nearfix.check(result, ctx, pf))

    if result.verdict is Verdict.UNKNOWN and result.path and not any(f.code == "rp-filter" for f in findings):
        findings.append(Finding(
            "stack-drop",
            f"The packet passed {' -> '.join(result.path)} without any drop verdict and then vanished: the kernel "
            "dropped it outside the firewall (no route, a martian source, reverse-path filtering, a full queue).",
            f"check `ip route get {result.spec.src} from {result.spec.dst}`, the rp_filter sysctls "
            "(net.ipv4.conf.*.rp_filter) and `nstat -az | grep -i drop`",
        ))

    if result.verdict is Verdict.REJECT and result.reply.none:
        if ctx.mode == "ingress" and ctx.route_dev is None:
            why = (f"this host has no route back to {spec.src}, so the reject's reply could not be sent at all: "
                   "that client sees a silent drop, not a refusal")
        else:
            why = ("the kernel rate-limits ICMP errors (net.ipv4.icmp_ratelimit, net.ipv4.icmp_msgs_per_sec; "
                   "icmpv6 likewise), so under load a client sees a silent drop instead of a refusal")
        findings.append(Finding(
            "reply-missing",
            f"The packet was rejected, but no reply came back within the timeout: {why}.",
            None,
        ))

    if result.verdict is Verdict.ACCEPT and "forward" not in result.path and spec.proto is not Proto.ICMP:
        refused = result.reply.kind == "rst" or result.reply.kind.endswith("port-unreachable")
        dst, dport = h.dst, h.dport
        mine = [sock for sock in ctx.listeners if sock.proto is spec.proto and sock.port == dport]
        if refused and not any(serves(sock, dst) for sock in mine):
            elsewhere = ", ".join(f"{sock.addr}:{sock.port}" for sock in mine)
            msg = (
                f"The firewall accepted the packet, but nothing listens on {spec.proto.value} port {dport} "
                f"at {dst}: the kernel answered with {result.reply.kind}."
            )
            if elsewhere:
                msg += f" A listener exists on {elsewhere} only."
                fix = f"bind the service to {dst} or to all addresses (0.0.0.0 / [::]) instead of {elsewhere}"
            else:
                fix = f"start the service on port {dport} (check with `ss -lnp{'t' if spec.proto is Proto.TCP else 'u'} 'sport = :{dport}'`)"
            findings.append(Finding("no-listener", msg, fix))
    # the kernel's drop reasons (eBPF), when the run had them: confirm, complete, name the cause
    return ebpf_findings.amend(result, findings, ctx)


def conclusion(result: PacketResult, findings: list[Finding]) -> str:
    spec = result.spec
    ref = result.decided_by
    codes = {f.code for f in findings}
    what = f"{spec.proto.value} port {spec.dport}" if spec.proto is not Proto.ICMP else "ping"
    by_kernel = ebpf_findings.conclusion(result, findings)
    if by_kernel is not None:
        return by_kernel
    if "rp-filter" in codes:
        return f"{what} is blocked before the firewall: the kernel's reverse-path filter dropped the probe after PREROUTING."
    if result.verdict is Verdict.UNKNOWN and "stack-drop" in codes:
        return f"{what} is not reachable, but not because of a firewall rule: the kernel dropped the probe after {result.path[-1]}."
    if result.verdict is Verdict.UNKNOWN:
        return f"No trace of the probe was seen: it may not have reached {spec.dst} at all (routing, rp_filter, another host)."
    if "no-listener" in codes:
        return f"The firewall lets {what} through, but no service listens there."
    if result.verdict is Verdict.ACCEPT:
        by = f" ({_where(ref)}: {ref.text})" if ref else ""
        return f"{what} is reachable: the firewall accepted the probe{by} and the reply was {result.reply.kind}."
    assert ref is not None
    if "conntrack-invalid" in codes:
        rule = f"rule {ref.rule.number}" if ref.rule else "policy"
        return (f"{what}: conntrack found the probe INVALID and {_where(ref)} {rule} {_verb(result.verdict)} it; "
                f"a stray [{spec.flags}] packet says nothing about whether the port is open (probe with --flags S).")
    if "shadowed-rule" in codes:
        return f"{what} is blocked: {ref.chain} rule {ref.rule.number if ref.rule else '?'} {_verb(result.verdict)} it before the rule meant to accept it."
    if ref.rule is None:
        return f"{what} is blocked: nothing in {_where(ref)} accepted it and the chain's policy {ref.policy.upper() if ref.policy else ''} dropped it."
    return f"{what} is blocked: {_where(ref)} rule {ref.rule.number} {_verb(result.verdict)} it."
