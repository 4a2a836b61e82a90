"""Verdicts that are neither accept nor drop: a rule whose target answers, queues or diverts the
probe (issue 22). Pure: the result, the queue bindings and listeners read in the run in, a
`TargetVerdict` and its finding out.

* SYNPROXY (`-j SYNPROXY`, nft `synproxy`) steals the SYN (trace verdict `stolen`) and answers it
  with a SYN cookie itself; it opens the connection to the server only after the client's final
  ACK, so a lone SYN's SYN-ACK says nothing about the listener.
* NFQUEUE (`-j NFQUEUE`, nft `queue`) hands the packet to the program bound to the queue, whose
  verdict decides; with none bound the kernel drops it (nfqnl_enqueue_packet: -ESRCH) unless the
  rule has `--queue-bypass` / `bypass`. /proc/net/netfilter/nfnetlink_queue lists the bound queues:
      `    3   4013     0 2 65531     0     0        0  1`  (queue, peer portid, total, ...)
  and /proc/net/netlink the netlink sockets, whose inode names the process:
      `0000000000000000 12  4013  00000000 0 0 0 2 0 31337`  (sk, protocol, portid, ..., inode)
* TPROXY (`-j TPROXY`, nft `tproxy to`) hands the packet to a local socket: xt_TPROXY accepts
  it when a transparent (IP_TRANSPARENT) socket is found at the target and drops it otherwise
  (tproxy_tg4: nf_tproxy_sk_is_transparent).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Mapping, Optional, Sequence

from tracer.model import EventKind, Finding, Listener, PacketResult, Proto, Step, TargetVerdict
from tracer.collect.sockets import serves

_SYNPROXY = re.compile(r"-j SYNPROXY\b|\bsynproxy\b")
_QUEUE = re.compile(r"-j NFQUEUE\b|\bqueue\b")
_TPROXY = re.compile(r"-j TPROXY\b|\btproxy\b")
NETLINK_NETFILTER = 12


def step_of(r: PacketResult) -> Optional[tuple[str, Step]]:
    """(kind, step) of the probe's rule whose target took it: synproxy, queue, tproxy."""
    for s in r.steps:
        if s.rule is None or s.event.kind is not EventKind.RULE or s.event.source == "ebpf":
            continue
        text, verdict = s.rule.display, (s.event.verdict or "").split(" ")[0].lower()
        if verdict == "stolen" and _SYNPROXY.search(text):
            return "synproxy", s
        if verdict == "queue" and _QUEUE.search(text):
            return "queue", s
        if verdict in ("accept", "drop") and _TPROXY.search(text):
            return "tproxy", s
    return None


# --- the rules' parameters -------------------------------------------------------------------------
def queues(text: str) -> tuple[int, ...]:
    """The queue numbers a rule sends to: `--queue-num 3`, `--queue-balance 2:4`, nft `queue num 3`,
    `queue to 2-4`; queue 0 when none is given (both tools' default)."""
    m = re.search(r"--queue-balance (\d+):(\d+)|\bqueue\b[^;]*?\b(?:num|to) (\d+)(?:-(\d+))?|--queue-num (\d+)", text)
    if m is None:
        return (0,)
    lo, hi = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4)) if m.group(3) else (m.group(5), None)
    return tuple(range(int(lo), int(hi or lo) + 1))


def bypass(text: str) -> bool:
    return "--queue-bypass" in text or re.search(r"\bqueue\b[^;]*\bbypass\b", text) is not None


def tproxy_to(text: str, dst: ipaddress._BaseAddress, dport: int) -> tuple[ipaddress._BaseAddress, int]:
    """Where TPROXY hands the packet: `--on-ip`/`--on-port`, nft `tproxy [ip|ip6] to ADDR:PORT`
    (`to :PORT`); no address (or 0.0.0.0) is the packet's own destination, no port its own port."""
    addr, port = None, None
    if m := re.search(r"--on-ip (\S+)", text):
        addr = m.group(1)
    if m := re.search(r"--on-port (\d+)", text):
        port = int(m.group(1))
    if m := re.search(r"\btproxy (?:ip6? )?to (\[[^\]]*\]|[^\s:]*)(?::(\d+))?", text):
        addr, port = m.group(1).strip("[]") or addr, int(m.group(2)) if m.group(2) else port
    try:
        a = ipaddress.ip_address(addr) if addr else dst
    except ValueError:
        a = dst
    return (dst if a.is_unspecified else a), (port or dport)


def tproxy_port(r: PacketResult) -> Optional[int]:
    """The port a TPROXY rule hands the probe to (its socket's holder is looked up), else None."""
    took = step_of(r)
    if took is None or took[0] != "tproxy" or took[1].rule is None:
        return None
    return tproxy_to(took[1].rule.display, r.spec.dst, r.spec.dport)[1]


# --- what the system layer reads -------------------------------------------------------------------------
def parse_queue_bindings(text: str) -> dict[int, int]:
    """/proc/net/netfilter/nfnetlink_queue: queue number -> the bound program's netlink portid."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0].isdigit() and f[1].isdigit():
            out[int(f[0])] = int(f[1])
    return out


def netlink_inodes(text: str, portids: set[int]) -> dict[int, int]:
    """/proc/net/netlink: portid -> socket inode of the nfnetlink sockets with those portids."""
    out: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 10 and f[1] == str(NETLINK_NETFILTER) and f[2].lstrip("-").isdigit() and int(f[2]) in portids:
            out[int(f[2])] = int(f[9])
    return out


# --- the decision ----------------------------------------------------------------------------------
def decide(r: PacketResult, bound: Mapping[int, str], listeners: Sequence[Listener],
           dst: ipaddress._BaseAddress, dport: int) -> Optional[TargetVerdict]:
    """`bound`: queue number -> its program ("pid 812 (suricata)", or "netlink portid 4013" when no
    process was found) for the queues bound in the target; `dst`, `dport`: as the filter saw them."""
    took = step_of(r)
    if took is None:
        return None
    kind, s = took
    assert s.rule is not None
    rule = f"{s.event.family} {s.event.table} {s.event.chain} rule {s.rule.number}"
    said = f"trace: {rule} `{s.rule.display}` -> {s.event.verdict}"
    if kind == "synproxy":
        return _synproxy(r, said, listeners, dst, dport)
    if kind == "queue":
        qs = queues(s.rule.display)
        name = f"queue {qs[0]}" if len(qs) == 1 else f"queues {qs[0]}-{qs[-1]}"
        prog = next((bound[q] for q in qs if q in bound), None)
        read = f"/proc/net/netfilter/nfnetlink_queue: {name} " + (f"bound by {prog}" if prog else "not bound")
        if prog is not None:
            return TargetVerdict("queue", "queue", name, None, prog, None, (said, read))
        if bypass(s.rule.display):
            return TargetVerdict("queue", r.verdict.value, name, f"no program bound to {name}; the rule's bypass "
                                 "flag lets the packet go on", None, None, (said, read))
        return TargetVerdict("queue", "drop", name, f"no program bound to {name}", None, None, (said, read))
    addr, port = tproxy_to(s.rule.display, dst, dport)
    where = f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
    there = [x for x in listeners if x.proto is r.spec.proto and x.port == port and serves(x, addr)]
    holder = next((x.process for x in there if x.process), None)
    if s.event.verdict == "drop":
        cause = f"no transparent socket listens on {where}" + (
            f" (a socket listens there{', held by ' + holder if holder else ''}, but without IP_TRANSPARENT)" if there else "")
        return TargetVerdict("tproxy", "drop", where, cause, holder, None,
                             (said, f"listeners: {'a socket on ' + where if there else 'none on ' + where}"))
    return TargetVerdict("tproxy", r.verdict.value, where, None, holder, None,
                         (said, f"listeners: {'a socket on ' + where if there else 'none seen on ' + where}"))


def _synproxy(r: PacketResult, said: str, listeners: Sequence[Listener], dst: ipaddress._BaseAddress,
              dport: int) -> TargetVerdict:
    ev = [said, f"reply: {r.reply.kind}"]
    seen = r.after_accept.seen if r.after_accept is not None else None
    reached: Optional[bool] = None
    if seen == "data":  # the service's own bytes came through the connection synproxy completed
        reached = True
        ev.append("a real connection completed the handshake and the service sent data")
    elif seen == "reset":
        reached = False
        ev.append("a real connection completed the handshake with synproxy and was reset")
    elif seen in ("closed", "open"):
        ev.append(f"a real connection completed the handshake with synproxy and was {seen} without data "
                  "(synproxy completes it whether or not the listener answers)")
    if "forward" in r.path:  # the server is another host: its listeners are not this namespace's
        return TargetVerdict("synproxy", "synproxy", "SYNPROXY", None, None, reached, tuple(ev))
    mine = [x for x in listeners if x.proto is Proto.TCP and x.port == dport and serves(x, dst)]
    holder = next((x.process for x in mine if x.process), None)
    return TargetVerdict("synproxy", "synproxy", "SYNPROXY", None if mine else f"no socket listens on tcp port {dport}",
                         holder, reached, tuple(ev) + (f"listeners: {'a socket on' if mine else 'none on'} tcp port {dport}",))


def finding(r: PacketResult) -> Optional[Finding]:
    t, took = r.target, step_of(r)
    if t is None or took is None or took[1].rule is None:
        return None
    s = took[1]
    assert s.rule is not None
    rule = f"{s.event.family} {s.event.table} {s.event.chain} rule {s.rule.number}"
    said = "Evidence: " + "; ".join(t.evidence) + "."
    if t.kind == "synproxy":
        heard = {True: " A real connection from the client completed the handshake and the service answered "
                       "through the synproxy: the listener is reached.",
                 False: " A real connection from the client completed the handshake with the synproxy and was "
                        "then reset: the connection it opened to the server was refused."}.get(
            t.reached, " Whether a completed handshake reaches the listener was not shown by this run.")
        sock = f" {t.cause[0].upper()}{t.cause[1:]} here: the connection synproxy opens to the server after the " \
            "handshake would be refused." if t.cause else " The server is the host this one forwards to." \
            if "forward" in r.path else f" A socket listens on tcp port {r.spec.dport}" + (f" ({t.program})." if t.program else ".")
        return Finding(
            "synproxy",
            f"The SYN-ACK came from the SYNPROXY target of {rule}, not from the listener: synproxy answers the SYN "
            "with a SYN cookie itself and connects to the server only after the client's final ACK, so this probe "
            f"did not reach the listener.{heard}{sock} {said}",
            "no firewall change needed for the SYN; test the service with a full connection "
            f"(`nc -vz {r.spec.dst} {r.spec.dport}` from the client)" if t.reached is not True else None,
        )
    if t.kind == "queue":
        if t.program is not None:
            return Finding(
                "nfqueue",
                f"{rule} handed the packet to {t.target} (NFQUEUE), bound by {t.program}: that program's verdict "
                f"decides, not a rule; the reply was {r.reply.kind}. {said}",
                f"look at the program bound to {t.target} ({t.program}): its own rules or logs say why it "
                "accepted or dropped the packet",
            )
        return Finding(
            "nfqueue-unbound",
            f"{rule} sends the packet to {t.target} (NFQUEUE), but there is {t.cause}: "
            + ("the kernel lets it go on unfiltered." if t.verdict != "drop" else
               "the kernel drops every packet it queues there while none is bound.") + f" {said}",
            f"start the program that should read {t.target} (the IPS or daemon this rule was written for)"
            if t.verdict == "drop" else None,
        )
    if t.verdict == "drop":
        return Finding(
            "tproxy-no-socket",
            f"{rule} diverts the packet to a local socket at {t.target} (TPROXY), but {t.cause}: "
            f"the TPROXY target drops the packet when it finds none. {said}",
            f"start the transparent proxy listening on {t.target} with IP_TRANSPARENT (its tproxy mode), "
            "or point the rule's --on-ip/--on-port (nft `tproxy to`) at the port it listens on",
        )
    return Finding(
        "tproxy",
        f"{rule} diverted the packet to the local socket at {t.target} (TPROXY)"
        + (f", held by {t.program}" if t.program else "")
        + f": the answer ({r.reply.kind}) is the proxy's, not a service's on port {r.spec.dport}. {said}",
    )


def conclusion(r: PacketResult, subject: str) -> Optional[str]:
    t = r.target
    if t is None:
        return None
    if t.kind == "synproxy":
        if t.reached:
            return f"{subject} is reachable through SYNPROXY: a real connection reached the service (see synproxy)."
        return (f"{subject}: SYNPROXY answered the SYN for the server, so this probe did not reach the listener "
                "(see synproxy).")
    if t.kind == "queue":
        if t.program is not None:
            return f"{subject} is decided by the program bound to {t.target} ({t.program}), not by a rule: the reply was {r.reply.kind}."
        if t.verdict == "drop":
            return f"{subject} is dropped: the rule sends it to {t.target}, and there is {t.cause}."
        return None
    if t.verdict == "drop":
        return f"{subject} is dropped by TPROXY: {t.cause}."
    return None
