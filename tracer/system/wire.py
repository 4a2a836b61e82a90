"""The probe packets' bytes and the replies' one-line summaries without importing scapy (0.1-0.25 s
of a run): byte for byte what scapy builds, word for word what its summary() prints, for the shapes
fwtrace sends and the replies they get. `summary` returns None for any other shape, and the caller
asks scapy (tracer/system/raw.py). tests/unit/test_wire.py compares both with scapy itself. Pure."""
from __future__ import annotations

import socket
import struct
from typing import Optional

from tracer.model import PacketSpec, Proto

# scapy's TCP flag letters, in its order (bit 0 first).
TCP_FLAGS = "FSRPAUECN"
PAYLOAD = b"fwtrace"
# scapy's names (scapy.layers.inet icmptypes/icmpcodes) for the ICMP replies a probe gets; any
# other type is left to scapy.
ICMP_TYPES = {0: "echo-reply", 3: "dest-unreach", 11: "time-exceeded"}
ICMP_CODES = {
    3: {0: "network-unreachable", 1: "host-unreachable", 2: "protocol-unreachable", 3: "port-unreachable",
        4: "fragmentation-needed", 5: "source-route-failed", 6: "network-unknown", 7: "host-unknown",
        9: "network-prohibited", 10: "host-prohibited", 11: "TOS-network-unreachable", 12: "TOS-host-unreachable",
        13: "communication-prohibited", 14: "host-precedence-violation", 15: "precedence-cutoff"},
    11: {0: "ttl-zero-during-transit", 1: "ttl-zero-during-reassembly"},
}


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp_flag_bits(letters: str) -> int:
    return sum(1 << TCP_FLAGS.index(ch) for ch in set(letters))


def build(spec: PacketSpec, seq: int) -> bytes:
    """IPv4/IPv6 + TCP (no options), UDP or ICMP/ICMPv6 echo, with scapy's defaults and checksums."""
    src, dst = spec.src.packed, spec.dst.packed
    v6 = spec.family == 6
    if spec.proto is Proto.TCP:
        nh = 6
        win = 0 if "R" in spec.flags else 64240
        l4 = struct.pack("!HHIIBBHHH", spec.sport, spec.dport, seq, 0, 5 << 4 | tcp_flag_bits(spec.flags) >> 8,
                         tcp_flag_bits(spec.flags) & 0xFF, win, 0, 0)
    elif spec.proto is Proto.UDP:
        nh = 17
        l4 = struct.pack("!HHHH", spec.sport, spec.dport, 8 + len(PAYLOAD), 0) + PAYLOAD
    else:
        nh = 58 if v6 else 1
        l4 = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, spec.sport, spec.dport) + PAYLOAD
    pseudo = (src + dst + struct.pack("!IxxxB", len(l4), nh) if v6 else src + dst + struct.pack("!xBH", nh, len(l4)))
    ck = checksum(l4) if nh == 1 else checksum(pseudo + l4)
    if nh == 17 and ck == 0:
        ck = 0xFFFF
    at = {6: 16, 17: 6}.get(nh, 2)
    l4 = l4[:at] + struct.pack("!H", ck) + l4[at + 2:]
    if v6:
        return struct.pack("!IHBB", 6 << 28 | (spec.ident & 0xFFFFF), len(l4), nh, 64) + src + dst + l4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), spec.ident & 0xFFFF, 0, 64, nh, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + l4


def _flags(bits: int) -> str:
    return "".join(ch for i, ch in enumerate(TCP_FLAGS) if bits >> i & 1)


def _inner(q: bytes) -> Optional[str]:
    """The quoted packet of an ICMP error as scapy names its layers (' / IPerror / TCPerror')."""
    if len(q) < 20 or q[0] != 0x45:
        return None
    total = struct.unpack("!H", q[2:4])[0]
    rest = q[20:min(len(q), total)]
    if len(q) > total or struct.unpack("!H", q[6:8])[0] & 0x3FFF:
        return None  # padding after the quote, or a fragment: scapy's own business
    proto = q[9]
    if proto == 6 and (len(rest) == 8 or (len(rest) >= 20 and len(rest) == (rest[12] >> 4) * 4)):
        return " / IPerror / TCPerror"  # the 8 bytes RFC 792 quotes, or the whole header (Linux)
    if proto == 17 and len(rest) >= 8:
        return " / IPerror / UDPerror" + (" / Raw" if len(rest) > 8 else "")
    if proto == 1 and len(rest) >= 8:
        return " / IPerror / ICMPerror" + (" / Raw" if len(rest) > 8 else "")
    return None


def summary(data: bytes) -> Optional[str]:
    """scapy's `IP(data).summary()` (IPv6(data) for IPv6), ports as numbers, or None when the
    packet is not one of the shapes this knows."""
    if len(data) < 20:
        return None
    if data[0] >> 4 == 6:
        if len(data) < 40 or struct.unpack("!H", data[4:6])[0] != len(data) - 40:
            return None
        name, nh, l4 = "IPv6", data[6], data[40:]
        if nh not in (6, 17) or any(a[:2] == b"\x20\x02" or a[:4] == b"\x20\x01\0\0" for a in (data[8:24], data[24:40])):
            return None  # scapy adds the 6to4 gateway / Teredo details of such addresses
        src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40])
    else:
        if data[0] != 0x45 or struct.unpack("!H", data[2:4])[0] != len(data) or struct.unpack("!H", data[6:8])[0] & 0x3FFF:
            return None
        name, nh, l4 = "IP", data[9], data[20:]
        src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(socket.AF_INET, data[16:20])
    if nh == 6 and len(l4) >= 20:
        doff = (l4[12] >> 4) * 4
        bits = (l4[12] & 1) << 8 | l4[13]
        if doff < 20 or doff > len(l4) or not bits:
            return None
        sport, dport = struct.unpack("!HH", l4[:4])
        return f"{name} / TCP {src}:{sport} > {dst}:{dport} {_flags(bits)}" + (" / Raw" if len(l4) > doff else "")
    if nh == 17 and len(l4) >= 8:
        sport, dport, ulen = struct.unpack("!HHH", l4[:6])
        if ulen != len(l4):
            return None
        return f"{name} / UDP {src}:{sport} > {dst}:{dport}" + (" / Raw" if len(l4) > 8 else "")
    if nh == 1 and len(l4) >= 8 and l4[0] in ICMP_TYPES:
        itype, code = l4[0], l4[1]
        words = f"{name} / ICMP {src} > {dst} {ICMP_TYPES[itype]} {ICMP_CODES.get(itype, {}).get(code, code)}"
        if itype == 0:
            return words + (" / Raw" if len(l4) > 8 else "")
        inner = _inner(l4[8:])
        return None if inner is None else words + inner
    return None
