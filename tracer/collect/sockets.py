"""Parse /proc/net/{tcp,tcp6,udp,udp6}: who listens in the target namespace. No I/O.

Sample line (/proc/net/tcp):
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 ...
The address is the kernel's __be32 printed as a host-order integer, so on little-endian
machines each 4-byte group reads backwards.
"""
from __future__ import annotations

import ipaddress
import sys

from tracer.model import IPAddress, Listener, Proto

TCP_LISTEN = "0A"


def _addr(hexaddr: str) -> IPAddress:
    raw = bytes.fromhex(hexaddr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def parse_proc_net(text: str, proto: Proto) -> list[Listener]:
    """Listening TCP sockets, or bound UDP sockets, from one /proc/net table."""
    out: list[Listener] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or ":" not in f[1]:
            continue
        if proto is Proto.TCP and f[3] != TCP_LISTEN:
            continue
        if proto is Proto.UDP and f[2].rsplit(":", 1)[-1] != "0000":  # connected UDP: not a server
            continue
        hexaddr, hexport = f[1].rsplit(":", 1)
        try:
            inode = int(f[9]) if len(f) > 9 and f[9].isdigit() else 0
            out.append(Listener(proto, _addr(hexaddr), int(hexport, 16), inode=inode))
        except ValueError:
            continue
    return out


def serves(listener: Listener, addr: IPAddress) -> bool:
    """Would this socket receive a packet sent to addr? (wildcards, and :: taking IPv4 too)"""
    la = listener.addr
    if la.is_unspecified:
        return la.version == addr.version or (la.version == 6 and not listener.v6only)
    if la.version == 6 and addr.version == 4:
        mapped = getattr(la, "ipv4_mapped", None)
        return mapped == addr
    return la == addr


def socket_inode(link: str) -> int:
    """The inode of a /proc/PID/fd link to a socket (`socket:[12345]`), else 0."""
    if link.startswith("socket:[") and link.endswith("]"):
        num = link[len("socket:["):-1]
        return int(num) if num.isdigit() else 0
    return 0
