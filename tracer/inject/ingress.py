"""Simulated ingress, the decisions: which interface, which frames, which tc programs. No I/O.

To make the target namespace receive a probe "from 203.0.113.5 on eth0" without a second host,
fwtrace adds a veth pair of its own inside that namespace (the injection port) and:

  * on the peer's tc ingress, a program that redirects the probe frames, addressed to eth0's own
    MAC, into eth0's receive path (bpf_redirect with BPF_F_INGRESS): the kernel then meets the
    packet exactly as if eth0 had received it: PREROUTING with iif eth0, routing, rp_filter,
    conntrack, INPUT or FORWARD;
  * on the tc egress of every interface a reply could leave by (the route back to the source, and
    the via interface), a program that takes only the probe's flow (addressed to the probe source
    and its source ports, or an ICMP error quoting them) and redirects it into the injection port,
    where an AF_PACKET socket captures it and the stack drops it (it is not addressed to the
    port's MAC: PACKET_OTHERHOST). Every other frame gets TC_ACT_UNSPEC: tc goes on with the next
    filter as if ours were not there. No netfilter rule is added for this.

This module computes those programs, the names and the undo commands, and parses the `ip -j`
and `tc -j` output they are based on.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Optional

from tracer.inject.bpfasm import (
    F_INGRESS,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    Field,
    Insn,
    Pattern,
    redirect_program,
)
from tracer.model import IPAddress, PacketSpec, Proto

# Documentation addresses (RFC 5737 TEST-NET-3, RFC 3849): a stranger nobody has rules for.
DEFAULT_SRC4 = ipaddress.ip_address("203.0.113.5")
DEFAULT_SRC6 = ipaddress.ip_address("2001:db8:ffff::5")

ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
TC_H_CLSACT = "ffff:"
FILTER_HANDLE = 1
PREF_WANTED = 1  # our egress filter must run before any other one


def port_names(run_id: str) -> tuple[str, str]:
    """(inject end, peer end) of the injection veth: 11 characters, under IFNAMSIZ."""
    return f"fwi{run_id}", f"fwp{run_id}"


def default_source(version: int) -> IPAddress:
    return DEFAULT_SRC4 if version == 4 else DEFAULT_SRC6


# ---------------------------------------------------------------------------------------------
# parsing `ip -j` / `tc -j`


@dataclass(frozen=True)
class Route:
    dev: Optional[str]
    gateway: Optional[IPAddress] = None
    kind: str = "unicast"  # "unicast", "local", "unreachable", "blackhole", "prohibit", ...


def parse_route_get(text: str) -> Optional[Route]:
    """The route of `ip -j route get ADDR` output, e.g.
    [{"dst":"203.0.113.5","gateway":"192.0.2.2","dev":"eth0","prefsrc":"192.0.2.1","flags":[],"uid":0,"cache":[]}]
    """
    try:
        routes = json.loads(text)
    except ValueError:
        return None
    if not isinstance(routes, list) or not routes or not isinstance(routes[0], dict):
        return None
    r = routes[0]
    gw = r.get("gateway")
    return Route(r.get("dev"), ipaddress.ip_address(gw) if gw else None, str(r.get("type", "unicast")))


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str
    link_type: str  # "ether", "none" (wireguard, tun), "loopback", ...
    mac: Optional[bytes]
    up: bool


def parse_links(text: str) -> dict[str, Link]:
    """`ip -j link show` output by interface name, e.g.
    [{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"link_type":"ether","address":"1a:2b:..."}]
    """
    out: dict[str, Link] = {}
    for link in json.loads(text):
        addr = link.get("address")
        mac = bytes.fromhex(addr.replace(":", "")) if link.get("link_type") == "ether" and addr else None
        out[link["ifname"]] = Link(int(link["ifindex"]), link["ifname"], str(link.get("link_type", "")), mac,
                                   "UP" in link.get("flags", []))
    return out


@dataclass(frozen=True)
class TcState:
    """What tc already has on one interface: its clsact (or ingress) qdisc and egress filters."""

    clsact: bool
    ingress_qdisc: bool  # an old-style `ingress` qdisc: clsact cannot be added beside it
    egress_prefs: tuple[int, ...]


def parse_tc_state(qdisc_json: str, egress_filter_json: str) -> TcState:
    """From `tc -j qdisc show dev IF` and `tc -j filter show dev IF egress`, e.g.
    [{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}},{"kind":"clsact","handle":"ffff:","parent":"ffff:fff1","options":{}}]
    [{"protocol":"all","pref":49152,"kind":"bpf","chain":0},{"protocol":"all","pref":49152,"kind":"bpf","chain":0,"options":{...}}]
    """
    kinds = {q.get("kind") for q in (json.loads(qdisc_json) if qdisc_json.strip() else [])}
    filters = json.loads(egress_filter_json) if egress_filter_json.strip() else []
    prefs = tuple(sorted({int(f["pref"]) for f in filters if "pref" in f}))
    return TcState("clsact" in kinds, "ingress" in kinds, prefs)


def egress_pref(state: TcState) -> Optional[int]:
    """The preference our egress filter takes so that it runs first; None when none can.

    tc runs filters in ascending preference; a direct-action filter's verdict other than
    TC_ACT_UNSPEC ends the walk, so a filter before ours could send the reply out.
    """
    if not state.egress_prefs:
        return PREF_WANTED
    first = state.egress_prefs[0]
    return first - 1 if first > 1 else None


@dataclass(frozen=True)
class Catcher:
    """How the reply catcher goes on one interface: "tcx", "classic" (with pref and whether a
    clsact qdisc must be added), or "none" with the reason."""

    how: str
    pref: int = PREF_WANTED
    add_clsact: bool = False
    reason: str = ""


def choose_catcher(dev: str, state: TcState, tcx_programs: Optional[int]) -> Catcher:
    """Decide where the reply catcher must sit to run before anything that could let a reply out.

    tcx (Linux 6.6+, `tcx_programs` is None before) runs before every classic clsact filter, and
    a tcx program returning TCX_PASS ends the walk: with tcx programs present, ours goes through
    tcx, in front of them. Without, a classic filter before every other one does it (and leaves
    the interface's tc state as fwtrace found it); where that is impossible (a filter at
    preference 1, an old `ingress` qdisc in clsact's place), tcx still can, if the kernel has it.
    """
    if tcx_programs:
        return Catcher("tcx")
    pref = egress_pref(state)
    if state.ingress_qdisc and not state.clsact:
        reason = f"{dev} has an `ingress` qdisc, beside which no clsact can be added"
    elif pref is None:
        reason = f"an egress filter at preference 1 on {dev} would run before fwtrace's reply catcher"
    else:
        return Catcher("classic", pref, not state.clsact)
    if tcx_programs is not None:
        return Catcher("tcx")
    return Catcher("none", reason=reason + " (and this kernel has no tcx, Linux 6.6+)")


# ---------------------------------------------------------------------------------------------
# the programs


def inject_patterns(mac: bytes) -> list[Pattern]:
    """Frames sent into the injection port addressed to the via interface's MAC."""
    return [tuple(Field.raw(0, mac))]


def _range(specs: list[PacketSpec]) -> tuple[int, int]:
    ports = [s.sport for s in specs]
    return min(ports), max(ports)


def reply_patterns(specs: list[PacketSpec], l2: int = ETH_HLEN) -> list[Pattern]:
    """Frames of the probes' flows going back to the (spoofed) source, `l2` bytes of link header.

    The source address is the one fwtrace made up, and the ports (TCP/UDP source ports, ICMP echo
    ids) are fwtrace's random ones: a packet matching both belongs to the probe, whatever else of
    that address's traffic the host carries. Kernel-made replies carry no IP options, so fixed
    offsets hold; ICMP errors quote the probe, which fwtrace built without options either.
    """
    protos = list(dict.fromkeys(s.proto for s in specs))
    if len(protos) > 1:  # --proto both: each protocol's flows by their own ports
        return [p for proto in protos for p in reply_patterns([s for s in specs if s.proto is proto], l2)]
    spec = specs[0]
    lo, hi = _range(specs)
    out: list[Pattern] = []
    if spec.family == 4:
        head: list[Field] = [Field.eq(l2 + 0, 1, 0x45)]  # version 4, no options
        if l2:
            head.insert(0, Field.eq(12, 2, ETH_P_IP))
        head += Field.raw(l2 + 16, spec.src.packed)  # daddr
        l4, proto_at, icmp, quoted = l2 + 20, l2 + 9, 1, l2 + 20 + 8
        inner_proto_at, inner_l4 = quoted + 9, quoted + 20
        echo_reply = 0
    else:
        head = [Field(l2 + 0, 1, 0x60, 0x6F)]  # version 6
        if l2:
            head.insert(0, Field.eq(12, 2, ETH_P_IPV6))
        head += Field.raw(l2 + 24, spec.src.packed)
        l4, proto_at, icmp, quoted = l2 + 40, l2 + 6, 58, l2 + 40 + 8
        inner_proto_at, inner_l4 = quoted + 6, quoted + 40
        echo_reply = 129
    if spec.proto is Proto.ICMP:
        out.append(tuple(head + [Field.eq(proto_at, 1, icmp), Field.eq(l4, 1, echo_reply), Field(l4 + 4, 2, lo, hi)]))
        out.append(tuple(head + [Field.eq(proto_at, 1, icmp), Field.eq(inner_proto_at, 1, icmp), Field(inner_l4 + 4, 2, lo, hi)]))
    else:
        p = 6 if spec.proto is Proto.TCP else 17
        out.append(tuple(head + [Field.eq(proto_at, 1, p), Field(l4 + 2, 2, lo, hi)]))
        out.append(tuple(head + [Field.eq(proto_at, 1, icmp), Field.eq(inner_proto_at, 1, p), Field(inner_l4, 2, lo, hi)]))
    return out


def inject_program(via_ifindex: int, via_mac: bytes) -> list[Insn]:
    """For the injection port's peer (ingress): our frames into via's receive path, the rest dropped."""
    return redirect_program(inject_patterns(via_mac), via_ifindex, F_INGRESS, TC_ACT_SHOT)


def reply_program(specs: list[PacketSpec], capture_ifindex: int, l2: int = ETH_HLEN) -> list[Insn]:
    """For an egress interface: the probe's replies into the injection port, the rest untouched."""
    return redirect_program(reply_patterns(specs, l2), capture_ifindex, F_INGRESS, TC_ACT_UNSPEC)


def link_header_len(link: Link) -> Optional[int]:
    """Bytes before the IP header at tc egress; None for link types fwtrace cannot match on."""
    return {"ether": ETH_HLEN, "none": 0}.get(link.link_type)


def frame(dst_mac: bytes, src_mac: bytes, packet: bytes) -> bytes:
    ethertype = ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6
    return dst_mac + src_mac + ethertype.to_bytes(2, "big") + packet


# ---------------------------------------------------------------------------------------------
# undo commands (run with `tc`/`ip` inside the target namespace; idempotent via `gone`)

# What ip/tc print when the thing is already gone (a second cleanup, or the crash came first):
# `ip link del` "Cannot find device", `tc qdisc del` "Invalid handle" / "Cannot find specified
# qdisc", `tc filter del` "Cannot find specified filter chain" (no clsact) or "Filter with
# specified priority/protocol not found". "Specified filter kind does not match" is NOT here:
# somebody else's filter sits at that preference, and it is left alone.
GONE = ("Cannot find device", "Invalid handle", "Cannot find specified qdisc", "Cannot find specified filter chain",
        "Filter with specified priority/protocol not found")


def undo_port(inject: str) -> tuple[str, ...]:
    return ("ip", "link", "del", inject)  # deletes the peer too


def clsact_in_use(ingress_filters_json: str, egress_filters_json: str) -> bool:
    """Are filters on a clsact qdisc (`tc -j filter show dev IF ingress` / `egress`)?"""
    return any(json.loads(text) for text in (ingress_filters_json, egress_filters_json) if text.strip())


def undo_filter(dev: str, direction: str, pref: int) -> tuple[str, ...]:
    return ("tc", "filter", "del", "dev", dev, direction, "pref", str(pref), "handle", str(FILTER_HANDLE), "bpf")


# ---------------------------------------------------------------------------------------------
# rp_filter


def rp_filter_drops(rp_all: Optional[int], rp_dev: Optional[int], via: str, back: Optional[Route]) -> bool:
    """Would reverse-path filtering drop a packet from the source arriving on `via`?

    The effective mode is max(conf.all, conf.IFACE) (Documentation/networking/ip-sysctl.rst):
    1 strict, the route back must leave by the arrival interface; 2 loose, any route back will do.
    """
    mode = max(rp_all or 0, rp_dev or 0)
    if mode == 0:
        return False
    if back is None or back.dev is None or back.kind != "unicast":
        return True
    return mode == 1 and back.dev != via


# ---------------------------------------------------------------------------------------------
# where a cls_bpf filter is attached (tracer.system.tcbpf.attach_filter)

PARENT = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{IN,E}GRESS)
ETH_P_ALL = 0x0003
