"""Packet headers as the kernel hands them over (nftrace, NFLOG, captured replies): the few
IPv4/IPv6 and TCP/UDP/ICMP fields fwtrace correlates on. Pure: no I/O."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional

from tracer.model import IPAddress


@dataclass(frozen=True)
class Headers:
    version: int
    src: IPAddress
    dst: IPAddress
    proto: int  # IPPROTO_* of the transport header (6 tcp, 17 udp, 1 icmp, 58 icmpv6)
    sport: int = 0  # ICMP: type
    dport: int = 0  # ICMP: code
    tcp_flags: int = 0
    icmp_id: int = 0
    ident: int = 0  # IPv4 id, IPv6 flow label
    inner: Optional["Headers"] = None  # the quoted packet of an ICMP error


def parse_headers(buf: bytes) -> Optional[Headers]:
    """IPv4/IPv6 + TCP/UDP/ICMP headers; None when the bytes are not a packet we understand."""
    if not buf:
        return None
    version = buf[0] >> 4
    src: IPAddress
    dst: IPAddress
    if version == 4 and len(buf) >= 20:
        ihl = (buf[0] & 0x0F) * 4
        proto = buf[9]
        src, dst = ipaddress.IPv4Address(buf[12:16]), ipaddress.IPv4Address(buf[16:20])
        ident = struct.unpack(">H", buf[4:6])[0]
        l4 = buf[ihl:]
    elif version == 6 and len(buf) >= 40:
        # Extension headers are not followed: probes never carry any.
        proto = buf[6]
        src, dst = ipaddress.IPv6Address(buf[8:24]), ipaddress.IPv6Address(buf[24:40])
        ident = struct.unpack(">I", buf[0:4])[0] & 0xFFFFF
        l4 = buf[40:]
    else:
        return None
    h = Headers(version, src, dst, proto, ident=ident)
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack(">HH", l4[:4])
        flags = l4[13] if proto == 6 and len(l4) >= 14 else 0
        return Headers(version, src, dst, proto, sport, dport, flags, ident=ident)
    if proto in (1, 58) and len(l4) >= 8:
        itype, code = l4[0], l4[1]
        is_error = (proto == 1 and itype in (3, 4, 5, 11, 12)) or (proto == 58 and itype < 128)
        inner = parse_headers(l4[8:]) if is_error else None
        echo_id = struct.unpack(">H", l4[4:6])[0]
        return Headers(version, src, dst, proto, itype, code, icmp_id=echo_id, ident=ident, inner=inner)
    return h
