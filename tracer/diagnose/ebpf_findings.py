"""Findings from the kernel's own drop reasons (eBPF events in the timeline). Pure.

The rules say what netfilter's rules decided; `skb:kfree_skb` says why the kernel freed the
packet, wherever that happened. A reason confirms a finding made from other evidence, or names a
cause the rules cannot show: reverse-path filtering, a full accept queue, a netfilter drop in a
place no traced chain explains.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional

from tracer.correlate.ebpf_timeline import kernel_steps
from tracer.model import EventKind, Finding, PacketResult, Proto, TraceEvent, Verdict
from tracer.collect.sockets import serves

if TYPE_CHECKING:
    from tracer.diagnose.context import Probe, Seen

ACCEPT_QUEUE = ("TCP_LISTEN_OVERFLOW", "SOCKET_BACKLOG")
NOT_REACHED = ("accept-queue-full", "kernel-drop", "netfilter-drop-untraced")


def probe_drop(result: PacketResult) -> Optional[TraceEvent]:
    """The kernel's drop of the probe itself (the last one: a packet is freed once)."""
    drops = [e for e in kernel_steps(result) if e.kind is EventKind.DROP]
    return drops[-1] if drops else None


def _confirm(findings: list[Finding], code: str, words: str) -> bool:
    for i, f in enumerate(findings):
        if f.code == code:
            findings[i] = dataclasses.replace(f, message=f"{f.message} {words}")
            return True
    return False


def amend(p: Probe, findings: list[Finding]) -> list[Finding]:
    """`findings` confirmed, completed or replaced by what the kernel's drop reason says. The
    port and address are the packet's as the socket lookup saw them (`p.seen`: after DNAT or
    REDIRECT), as for the netfilter checks; `p.ctx` gives the probe's via, src and listeners."""
    result, ctx, h = p.result, p.ctx, p.seen
    drop = probe_drop(result)
    out = list(findings)
    via, src = ctx.via, ctx.src or result.spec.src
    # a kernel verdict of another cause (no route back: the SYN is consumed without an answer too)
    other = result.kernel is not None and result.kernel.reason not in ACCEPT_QUEUE
    queue = None if other else _silent_listener(result, ctx.listeners, h)
    if queue is not None:
        out = [f for f in out if f.code != "stack-drop"]
        out.append(queue)
        return out
    sent = [e for e in kernel_steps(result) if e.kind is EventKind.SEND]
    if drop is None and not sent:
        return out
    spec = result.spec
    where = f"{drop.reason} at {drop.location}" if drop is not None else ""
    said = f"The kernel confirms it (eBPF): drop reason {where}." if drop is not None else ""
    reason = drop.reason if drop is not None else None
    if reason == "NO_SOCKET" or (reason is None and sent and spec.proto is Proto.TCP):
        if not said:
            said = f"The kernel confirms it (eBPF): {sent[0].text}."
        if not _confirm(out, "no-listener", said) and result.verdict in (Verdict.ACCEPT, Verdict.UNKNOWN) and reason:
            out.append(Finding("no-listener", f"No socket took the packet: the kernel dropped it with reason {where} "
                               f"after the firewall (nothing listens on {spec.proto.value} port {h.dport} at {h.dst}).",
                               f"start the service on port {h.dport}"))
        return out
    if reason is None or drop is None:
        return out
    out = [f for f in out if f.code != "stack-drop"]  # a named cause replaces the generic one
    return _by_reason(result, drop, out, said, via, src, h)


def _by_reason(result: PacketResult, drop: TraceEvent, out: list[Finding], said: str, via: Optional[str],
               src: object, h: Seen) -> list[Finding]:
    """The finding a drop reason names (`out` amended in place and returned)."""
    spec, reason = result.spec, drop.reason
    where = f"{drop.reason} at {drop.location}"
    if reason == "IP_RPFILTER":
        dev = drop.iif or via or "IFACE"
        if not _confirm(out, "rp-filter", said):
            keys = f"net.ipv4.conf.all.rp_filter net.ipv4.conf.{dev}.rp_filter"
            out.append(Finding(
                "rp-filter",
                f"The kernel dropped the packet from {src} arriving on {dev} by reverse-path filtering "
                f"(drop reason {where}): the route back to {src} does not leave by {dev}. The firewall rules never saw it.",
                f"route {src} back via {dev}, or make the check loose for {dev}: sysctl -w "
                + " ".join(f"{k}=2" for k in keys.split()) + f" (now strict: see sysctl {keys})",
                (f"sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{dev}.rp_filter=2",),
            ))
    elif reason in ACCEPT_QUEUE:
        out.append(Finding(
            "accept-queue-full",
            f"A socket listens on {spec.proto.value} port {h.dport}, but the kernel dropped the packet with reason "
            f"{where}: the listener's accept queue (backlog) is full, so the process is not accepting connections "
            "(hung, overloaded, or stopped). The firewall is not the cause.",
            f"look at the service process; `ss -ltn 'sport = :{h.dport}'` shows Recv-Q (waiting connections) at "
            "Send-Q (the backlog); a larger listen() backlog (net.core.somaxconn) only helps a slow, not a stuck, process",
        ))
    elif reason == "NETFILTER_DROP" and result.verdict not in (Verdict.DROP, Verdict.REJECT):
        hook = drop.hook
        at = f"the {hook} hook" if hook else "a hook"
        look = f"`nft list ruleset | grep -B3 'hook {hook}'`" if hook else "`nft list ruleset`"
        out.append(Finding(
            "netfilter-drop-untraced",
            f"Netfilter dropped the packet at {at} ({where}), in a place no traced chain explains: a chain that runs "
            "before fwtrace's trace rule (netdev ingress, a priority below -1000), a flowtable, or a module "
            "outside nf_tables.",
            f"look at the chains of {at}: {look}",
        ))
    elif result.verdict in (Verdict.ACCEPT, Verdict.UNKNOWN) and reason != "NETFILTER_DROP":
        out.append(Finding(
            "kernel-drop",
            f"The kernel dropped the packet outside the firewall rules: drop reason {where}.",
            "the reason names the check that failed; see `nstat -az` for its counter",
        ))
    return out


def _silent_listener(result: PacketResult, listeners: Any, h: Seen) -> Optional[Finding]:
    """A SYN the listening socket took and dropped without an answer: no SYN-ACK, no RST, no drop
    reason; the kernel consumed it in TCP's receive path. A listener does that when its accept
    queue is full (tcp_conn_request: sk_acceptq_is_full -> drop, counted in ListenOverflows; the
    reason TCP_LISTEN_OVERFLOW exists for the handshake's last ACK only)."""
    spec = result.spec
    if spec.proto is not Proto.TCP or spec.flags != "S" or not result.reply.none or result.verdict is not Verdict.ACCEPT:
        return None
    evs = kernel_steps(result)
    if any(e.kind in (EventKind.DROP, EventKind.SEND) for e in evs):
        return None
    took = [e for e in evs if e.kind is EventKind.CONSUME and (e.location or "").startswith("tcp_")]
    mine = [sock for sock in listeners if sock.proto is Proto.TCP and sock.port == h.dport and serves(sock, h.dst)]
    if not took or not mine:
        return None
    return Finding(
        "accept-queue-full",
        f"A socket listens on tcp port {h.dport} ({mine[0].addr}:{mine[0].port}), and the kernel gave it the SYN, "
        f"but it answered nothing: eBPF saw the SYN consumed by {took[-1].location} without a drop reason or a reply. "
        "That is a listener whose accept queue (backlog) is full: the process is not accepting connections (hung, "
        "overloaded, or stopped). The firewall is not the cause.",
        f"look at the service process; `ss -ltn 'sport = :{h.dport}'` shows Recv-Q (connections waiting) at or "
        "above Send-Q (the backlog); a larger listen() backlog (net.core.somaxconn) only helps a slow, not a stuck, process",
    )


def conclusion(result: PacketResult, findings: list[Finding]) -> Optional[str]:
    """The one-line conclusion when a kernel drop reason decides it, else None."""
    spec = result.spec
    what = f"{spec.proto.value} port {spec.dport}" if spec.proto is not Proto.ICMP else "ping"
    codes = {f.code: f for f in findings}
    if "accept-queue-full" in codes:
        return f"{what} has a listener, but its accept queue is full: the process does not accept connections."
    drop = probe_drop(result)
    if drop is None:
        return None
    if "netfilter-drop-untraced" in codes:
        return f"{what} is blocked by netfilter at the {drop.hook or '?'} hook, outside the traced chains ({drop.reason})."
    if "kernel-drop" in codes:
        return f"{what} is not reachable: the kernel dropped the probe ({drop.reason} at {drop.location})."
    return None
