"""A pcapng file of the probe packets and their replies, each with its verdict as a packet
comment (opt_comment), readable by Wireshark, tshark, tcpdump and scapy. No I/O.

Written by hand (the format is four block types) so that rendering needs no scapy: a Section
Header Block, one Interface Description Block per address family (LINKTYPE_IPV4 228 /
LINKTYPE_IPV6 229: the packets are bare IP, as fwtrace sends and captures them), then one
Enhanced Packet Block per packet. Reference: draft-ietf-opsawg-pcapng, sections 4.1-4.3.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME = 2
LINKTYPE = {4: 228, 6: 229}


@dataclass(frozen=True)
class Packet:
    data: bytes  # an IPv4 or IPv6 packet
    when: float  # seconds since the epoch
    comment: str = ""


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(v)) + _pad(v) for code, v in opts)
    return out + struct.pack("<HH", OPT_END, 0)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def write(packets: list[Packet], application: str, comment: str = "") -> bytes:
    """The whole file; interfaces are numbered in the order their family first appears."""
    opts = [(SHB_USERAPPL, application.encode())] + ([(OPT_COMMENT, comment.encode())] if comment else [])
    out = [_block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts))]
    ifaces: dict[int, int] = {}
    for p in packets:
        fam = 6 if p.data and p.data[0] >> 4 == 6 else 4
        if fam not in ifaces:
            ifaces[fam] = len(ifaces)
            name = f"fwtrace-ipv{fam}".encode()
            out.append(_block(IDB, struct.pack("<HHI", LINKTYPE[fam], 0, 0) + _options([(IF_NAME, name)])))
        usec = int(round(p.when * 1_000_000))
        body = struct.pack("<IIIII", ifaces[fam], usec >> 32, usec & 0xFFFFFFFF, len(p.data), len(p.data))
        body += _pad(p.data) + _options([(OPT_COMMENT, p.comment.encode())] if p.comment else [])
        out.append(_block(EPB, body))
    return b"".join(out)
