"""Packet facts and the three-valued logic both rule interpreters share. Pure: no I/O."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from tracer.model import IPAddress, PacketSpec, Proto

Tri = Optional[bool]


@dataclass(frozen=True)
class PacketFacts:
    """What is known about a packet where a rule looks at it; None means not known."""

    family: int  # 4 or 6
    proto: Proto
    src: IPAddress
    dst: IPAddress
    sport: int  # ICMP echo: identifier
    dport: int  # ICMP echo: sequence number
    tcp_flags: str = "S"  # scapy letters: "S", "SA", "A", "FA", "R"
    iif: Optional[str] = None
    oif: Optional[str] = None
    ct_state: Optional[str] = None  # "new", "established", "related", "invalid", "untracked"
    icmp_type: Optional[int] = None

    @classmethod
    def from_spec(
        cls,
        spec: PacketSpec,
        iif: Optional[str] = None,
        oif: Optional[str] = None,
        ct_state: Optional[str] = None,
    ) -> "PacketFacts":
        # Probes of Proto.ICMP are echo requests: type 8 (ICMP) or 128 (ICMPv6).
        icmp = (8 if spec.family == 4 else 128) if spec.proto is Proto.ICMP else None
        return cls(spec.family, spec.proto, spec.src, spec.dst, spec.sport, spec.dport,
                   spec.flags, iif, oif, ct_state, icmp)


# ---------------------------------------------------------------------------------------------
# Three-valued logic and packet facts shared by both syntaxes


def _and(results: Iterable[Tri]) -> Tri:
    unknown = False
    for r in results:
        if r is False:
            return False
        unknown = unknown or r is None
    return None if unknown else True


def _any(results: Iterable[Tri]) -> Tri:
    unknown = False
    for r in results:
        if r is True:
            return True
        unknown = unknown or r is None
    return None if unknown else False


def _not(r: Tri) -> Tri:
    return None if r is None else not r


# Which packets a table of each family sees: bridge and netdev see both IP versions (and more),
# arp tables see no IP packet at all.
_FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6), "bridge": (4, 6),
                    "netdev": (4, 6), "arp": ()}


def _family_sees(family: str, pkt: PacketFacts) -> Tri:
    versions = _FAMILY_VERSIONS.get(family)
    return None if versions is None else pkt.family in versions


def _int(s: str) -> Optional[int]:
    if re.fullmatch(r"[0-9]{1,10}", s):
        return int(s)
    if re.fullmatch(r"0x[0-9a-fA-F]{1,8}", s):
        return int(s, 16)
    return None


# /etc/protocols names that may appear; any of them except ours means "certainly not this probe".
_PROTO_NUMBERS = {
    "icmp": 1, "igmp": 2, "ipip": 4, "ipencap": 4, "tcp": 6, "egp": 8, "udp": 17, "dccp": 33,
    "ipv6": 41, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "ospf": 89,
    "pim": 103, "ipcomp": 108, "vrrp": 112, "l2tp": 115, "sctp": 132, "udplite": 136,
}


def _l4_number(pkt: PacketFacts) -> int:
    if pkt.proto is Proto.TCP:
        return 6
    if pkt.proto is Proto.UDP:
        return 17
    return 1 if pkt.family == 4 else 58


def _proto_is(value: str, pkt: PacketFacts) -> Tri:
    v = value.lower()
    n = _int(v)
    if n is None:
        n = _PROTO_NUMBERS.get(v)
    return None if n is None else n == _l4_number(pkt)


def _port_in(spec: str, port: int, sep: str) -> Tri:
    """`22`, or a range `1000:2000` (iptables, sep ":") / `1000-2000` (nft, sep "-")."""
    lo, found, hi = spec.partition(sep)
    if not found:
        n = _int(spec)
        return None if n is None else port == n
    a = _int(lo) if lo else 0
    b = _int(hi) if hi else 65535
    return None if a is None or b is None else a <= port <= b


def _addr_in(spec: str, addr: IPAddress) -> Tri:
    """A prefix `10.0.0.0/8`, an address, or a range `10.0.0.1-10.0.0.9`."""
    try:
        if "-" in spec:
            lo, hi = (ipaddress.ip_address(s) for s in spec.split("-", 1))
            if lo.version != addr.version or hi.version != addr.version:
                return False
            return lo <= addr <= hi  # type: ignore[operator]  # same version checked above
        net = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return None
    return net.version == addr.version and addr in net


def _iface_is(pattern: str, name: Optional[str], wildcard: str) -> Tri:
    """iptables `eth+` / nft `"eth*"`: a trailing wildcard is a prefix match."""
    if name is None:
        return None
    if pattern.endswith(wildcard):
        return name.startswith(pattern[: -len(wildcard)])
    return name == pattern


_CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked"})


def _ct_in(states: Iterable[str], pkt: PacketFacts) -> Tri:
    if pkt.ct_state is None:
        return None
    wanted = {s.strip().lower() for s in states}
    if pkt.ct_state.lower() in wanted:
        return True
    # conntrack also knows SNAT/DNAT pseudo-states, which a plain state name cannot rule out.
    return False if wanted <= _CT_STATES else None


_TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20,
              "ecn": 0x40, "ece": 0x40, "cwr": 0x80,
              "all": 0x3F, "none": 0x00}  # iptables ALL = FIN,SYN,RST,PSH,ACK,URG
_SCAPY_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                "C": 0x80}


def _packet_flags(pkt: PacketFacts) -> Optional[int]:
    bits = 0
    for letter in pkt.tcp_flags:
        if letter not in _SCAPY_FLAGS:
            return None
        bits |= _SCAPY_FLAGS[letter]
    return bits


def _flag_bits(spec: str) -> Optional[int]:
    """`FIN,SYN,RST,ACK` (iptables), `syn,ack` or `(syn|ack)` (nft)."""
    bits = 0
    for name in re.split(r"[,|]", spec.strip("()").lower()):
        n = _TCP_FLAGS.get(name.strip(), _int(name.strip()))
        if n is None:
            return None
        bits |= n
    return bits


# Names both tools accept, as (type, code); code None means any code.
_ICMP4 = {
    "any": (-1, None), "echo-reply": (0, None), "pong": (0, None),
    "destination-unreachable": (3, None), "network-unreachable": (3, 0),
    "host-unreachable": (3, 1), "protocol-unreachable": (3, 2), "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4), "source-quench": (4, None), "redirect": (5, None),
    "echo-request": (8, None), "ping": (8, None), "router-advertisement": (9, None),
    "router-solicitation": (10, None), "time-exceeded": (11, None), "ttl-exceeded": (11, None),
    "parameter-problem": (12, None), "timestamp-request": (13, None),
    "timestamp-reply": (14, None), "info-request": (15, None), "info-reply": (16, None),
    "address-mask-request": (17, None), "address-mask-reply": (18, None),
}
_ICMP6 = {
    "any": (-1, None), "destination-unreachable": (1, None), "packet-too-big": (2, None),
    "time-exceeded": (3, None), "ttl-exceeded": (3, None), "parameter-problem": (4, None),
    "echo-request": (128, None), "echo-reply": (129, None), "mld-listener-query": (130, None),
    "mld-listener-report": (131, None), "mld-listener-done": (132, None),
    "mld-listener-reduction": (132, None), "nd-router-solicit": (133, None),
    "router-solicitation": (133, None), "nd-router-advert": (134, None),
    "router-advertisement": (134, None), "nd-neighbor-solicit": (135, None),
    "neighbour-solicitation": (135, None), "neighbor-solicitation": (135, None),
    "nd-neighbor-advert": (136, None), "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None), "nd-redirect": (137, None), "redirect": (137, None),
    "mld2-listener-report": (143, None),
}
_ECHO_TYPES = (0, 8, 128, 129)  # echo request/reply always carry code 0


def _icmp_is(spec: str, pkt: PacketFacts, v6: bool) -> Tri:
    """`8`, `3/1` or a name (`echo-request`); the ICMP (v6: ICMPv6) protocol is implied."""
    if pkt.proto is not Proto.ICMP or (pkt.family == 6) != v6:
        return False
    kind, sep, code_s = spec.lower().partition("/")
    known = (_ICMP6 if v6 else _ICMP4).get(kind)
    itype, code = known if known else (_int(kind), None)
    if sep:
        code = _int(code_s)
        if code is None:
            return None
    if itype == -1:
        return True
    if itype is None or pkt.icmp_type is None:
        return None
    if itype != pkt.icmp_type:
        return False
    if code is None:
        return True
    return code == 0 if pkt.icmp_type in _ECHO_TYPES else None
