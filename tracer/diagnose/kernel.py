"""Findings for a probe the kernel dropped, not a rule (`PacketResult.kernel`, tracer/diagnose/kernverdict.py),
and for a listener bound where the probe does not go. No I/O.

Each names the check, the setting behind it and the evidence the run used; the fix changes the
setting for the probe's own path (the arrival interface, a route to this client) where the kernel
allows that, never the firewall.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from tracer.diagnose import kernverdict as kv
from tracer.diagnose.checks import probe_name
from tracer.diagnose.context import Probe
from tracer.model import Finding, KernelDrop, PacketResult, Proto, Verdict
from tracer.collect.sockets import serves

GENERIC = ("stack-drop", "kernel-drop")  # what a named kernel cause replaces


def amend(result: PacketResult, findings: list[Finding], p: Probe) -> list[Finding]:
    """`findings` with the kernel's drop explained: its finding added (or, when one of that code
    exists, its evidence appended), the generic ones it replaces removed; when nothing explained a
    vanished probe, the stack-drop finding lists what was checked."""
    k = result.kernel
    if k is None:
        if result.kernel_checked:
            return [dataclasses.replace(f, message=f"{f.message} Checked, none of which explains it: "
                                        + "; ".join(result.kernel_checked) + ".") if f.code == "stack-drop" else f
                    for f in findings]
        return findings
    code = kv.CODES.get(k.cause, "kernel-drop")
    out = [f for f in findings if f.code not in GENERIC or f.code == code]
    said = f"Evidence: {kv.evidence_words(k)}."
    for i, f in enumerate(out):
        if f.code == code:
            out[i] = dataclasses.replace(f, message=f"{f.message} {said}")
            return out
    out.append(finding(p, k))
    return out


def finding(p: Probe, k: KernelDrop) -> Finding:
    r, h = p.result, p.seen
    src, iif = r.spec.src, p.ctx.via or p.iif or "its interface"
    said = f"Evidence: {kv.evidence_words(k)}."
    at = f" in {k.function}" if k.function else ""
    if k.cause == kv.RP_FILTER:
        back = f"leaves by {p.ctx.route_dev}, not {iif}" if p.ctx.route_dev and p.ctx.route_dev != iif else \
            f"does not leave by {iif}"
        return Finding(
            "rp-filter",
            f"The kernel dropped the packet from {src} arriving on {iif} by reverse-path filtering ({k.setting or 'rp_filter'}, "
            f"drop reason {k.reason}{at}): the route back to {src} {back}. The firewall rules never saw it. {said}",
            f"route {src} back via {iif} (`ip route add {src} via GATEWAY dev {iif}`), or make the check loose for "
            f"{iif}: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iif}.rp_filter=2",
            (f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{iif}.rp_filter=2",),
        )
    if k.cause == kv.FORWARDING:
        v6 = r.spec.family == 6
        key = "net.ipv6.conf.all.forwarding" if v6 else f"net.ipv4.conf.{iif}.forwarding"
        to = f"{h.dst}" + (f" (DNAT of {r.spec.dst})" if h.dst != r.spec.dst else "")
        return Finding(
            "forwarding-off",
            f"The packet is for {to}, another host, so this host must forward it, but forwarding is off "
            f"({k.setting}): the kernel dropped it{at} (drop reason {k.reason}) before FORWARD, so no forward "
            f"rule ever saw it. {said}",
            f"turn forwarding on for packets arriving on {iif}: sysctl -w {key}=1 (persist it in /etc/sysctl.d/); "
            "the FORWARD chain then decides what is forwarded, so check its rules first",
            (f"sysctl -w {key}=1",),
        )
    if k.cause == kv.NO_ROUTE:
        return Finding(
            "no-route",
            f"The kernel has no route to {h.dst} for the packet arriving on {iif}: it dropped it{at} "
            f"(drop reason {k.reason}). {said}",
            f"add a route to {h.dst} (`ip route add {h.dst} via GATEWAY`), or check `ip route get {h.dst} from {src} iif {iif}`",
        )
    if k.cause == kv.NO_ROUTE_BACK:
        answer = "SYN-ACK" if r.spec.proto is Proto.TCP else "reply"
        return Finding(
            "no-route-back",
            f"The {probe_name(r.spec.proto, r.spec.flags)} got through"
            + (" the firewall" if r.verdict is Verdict.ACCEPT else "")
            + f", but this host has no route back to {src}: the kernel could not send the {answer}{at} and dropped "
            f"it, so the client gets nothing. {said}",
            f"add a route back to {src} for this client: `ip route add {src}/32 via GATEWAY dev {iif}` "
            f"(or the default route it lacks); check with `ip route get {src} from {h.dst}`",
        )
    if k.cause == kv.OVERFLOW:
        return Finding(
            "accept-queue-full",
            f"A socket listens on tcp port {h.dport}, but its accept queue is full ({k.setting}): the kernel dropped "
            f"the SYN{at} without an answer, so the process is not accepting connections (hung, overloaded, or "
            f"stopped). The firewall is not the cause. {said}",
            f"look at the service process; `ss -ltn 'sport = :{h.dport}'` shows Recv-Q (connections waiting) at "
            "Send-Q (the backlog); a larger listen() backlog (net.core.somaxconn) only helps a slow, not a stuck, process",
        )
    if k.cause == kv.CONNTRACK_FULL:
        return Finding(
            "conntrack-full",
            f"The conntrack table is full ({k.setting or 'net.netfilter.nf_conntrack_max'}): the kernel dropped the "
            f"packet{at} because it could not track one more connection. {said}",
            "raise the limit (sysctl -w net.netfilter.nf_conntrack_max=N) or find what fills the table "
            "(`conntrack -S`, `conntrack -L | awk '{print $1}' | sort | uniq -c`)",
        )
    if k.cause == kv.MARTIAN:
        return Finding(
            "martian-source",
            f"The kernel dropped the packet as a martian ({k.setting}{at}, drop reason {k.reason}): a loopback, "
            f"multicast or local source address arriving from outside is never accepted. {said}",
            f"send from a real address of the client; `sysctl -w net.ipv4.conf.{iif}.log_martians=1` logs such packets",
        )
    return Finding("kernel-drop", f"The kernel dropped the packet outside the firewall rules: drop reason "
                   f"{k.reason}{at}. {said}", "the reason names the check that failed; see `nstat -az` for its counter")


def conclusion(result: PacketResult, subject: str) -> Optional[str]:
    k = result.kernel
    if k is None:
        return None
    setting = f" ({k.setting})" if k.setting else ""
    return (f"{subject} is dropped by the kernel, not by a firewall rule: {k.cause}{setting}; "
            f"evidence: {kv.evidence_words(k)}.")


def listener_address(p: Probe) -> Optional[Finding]:
    """Nothing listens where the probe goes, but a socket on its port is bound to another address
    (127.0.0.1, another interface's address, an IPv6 address for an IPv4 probe)."""
    r, spec, h = p.result, p.result.spec, p.seen
    if spec.proto is Proto.ICMP or r.verdict is not Verdict.ACCEPT:
        return None
    mine = [s for s in p.ctx.listeners if s.proto is spec.proto and s.port == h.dport]
    if not mine or any(serves(s, h.dst) for s in mine):
        return None
    def one(s: object) -> str:
        addr = getattr(s, "addr")
        where = f"[{addr}]" if addr.version == 6 else str(addr)
        kind = " (loopback only)" if addr.is_loopback else " (IPv6 only)" if addr.version == 6 and h.dst.version == 4 else ""
        who = getattr(s, "process", None)
        return f"{where}:{h.dport}{kind}" + (f", held by {who}" if who else "")
    bound = "; ".join(one(s) for s in mine)
    whom = next((s.process for s in mine if s.process), None)
    return Finding(
        "listener-address",
        f"A service listens on {spec.proto.value} port {h.dport}, but bound to another address than {h.dst}: {bound}. "
        f"The kernel delivers a packet only to a socket bound to its destination address or to all addresses, "
        "so the probe found no listener.",
        f"make {whom or 'the service'} listen on {h.dst} or on all addresses (0.0.0.0 / [::]) in its configuration "
        f"(its bind/listen address), and restart it",
    )


def reply_elsewhere(p: Probe) -> Optional[Finding]:
    """Simulated ingress: the reply was caught leaving by another interface than the one the probe
    arrived on (the route back to the source leaves elsewhere). A client behind the arrival
    interface never gets that reply."""
    r, ctx = p.result, p.ctx
    if ctx.mode != "ingress" or not ctx.via or not ctx.route_dev or ctx.route_dev == ctx.via:
        return None
    if r.verdict is not Verdict.ACCEPT or r.reply.none or not r.reply.captured or r.reply_dropped:
        return None
    src, reply = r.spec.src, r.reply.kind
    return Finding(
        "reply-elsewhere",
        f"The {reply} to {src} leaves by {ctx.route_dev} (the route back to {src}), not by {ctx.via}, where the "
        f"probe arrived: a client reached through {ctx.via} does not get it, unless the path behind {ctx.route_dev} "
        "leads to it too (asymmetric routing, which a stateful firewall or a strict reverse-path check on the "
        "way drops).",
        f"route {src} back via {ctx.via}: `ip route add {src} via GATEWAY dev {ctx.via}`",
    )
