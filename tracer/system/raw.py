"""Send probe packets built with scapy and catch what comes back.

Packets are sent through raw IP sockets (the kernel routes them as it would any local packet) and
replies are read from an AF_PACKET socket; both are opened in the sending namespace, so a probe
"from" another namespace is simply sent with sockets created there. scapy builds the bytes and
describes the replies; only its inet layers are imported (the whole of scapy costs 0.7 s), its
IPv6 layers only for an IPv6 packet, and never `cryptography` (see `load_scapy`).
"""
from __future__ import annotations

import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from tracer.model import IPAddress, PacketSpec, Proto
from tracer.packet import Headers, parse_headers

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


@dataclass(frozen=True)
class Captured:
    when: float
    ifname: str
    data: bytes
    headers: Headers


def tcp_seq(spec: PacketSpec) -> int:
    """The probe's TCP sequence number: derived from its random ident, so it is known later."""
    return (spec.ident * 65536 + 1) & 0xFFFFFFFF


_SCAPY_LOCK = threading.Lock()


def load_scapy(ipv6: bool) -> None:
    """Import scapy's IPv4 layers (and its IPv6 ones when `ipv6`), nothing else.

    scapy.config probes for `cryptography` at import (for TLS/IPsec layers fwtrace never uses):
    0.03-0.1 s of a run. It is made unimportable while scapy.config loads, and importable again
    right after. scapy.layers.inet imports the IPv6 layers too (and reads the IPv6 routing table)
    unless conf.ipv6_enabled is off: it is, for that import only; IPv6 layers load when a packet
    needs them."""
    with _SCAPY_LOCK:  # the CLI's preload thread and the run may both get here
        if "scapy.layers.inet" not in sys.modules:
            hide = "cryptography" not in sys.modules
            if hide:
                sys.modules["cryptography"] = None  # type: ignore[assignment]  # import raises ImportError
            try:
                from scapy.config import conf
            finally:
                if hide and sys.modules.get("cryptography", 0) is None:
                    del sys.modules["cryptography"]
            # Nor do scapy's route tables (conf.route, conf.route6) read the kernel's at import:
            # every packet fwtrace builds names its source and goes out through fwtrace's own
            # socket, so scapy never routes one (~10 ms of each run; bytes unchanged).
            conf.route_autoload = conf.route6_autoload = False
            was, conf.ipv6_enabled = conf.ipv6_enabled, False
            try:
                import scapy.layers.inet  # noqa: F401
            finally:
                conf.ipv6_enabled = was
        if ipv6:
            import scapy.layers.inet6  # noqa: F401


def build(spec: PacketSpec, seq: Optional[int] = None) -> bytes:
    load_scapy(spec.family == 6)
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Packet

    l3: Packet
    l4: Packet
    if spec.family == 4:
        l3 = IP(src=str(spec.src), dst=str(spec.dst), id=spec.ident, ttl=64)
    else:
        from scapy.layers.inet6 import IPv6

        l3 = IPv6(src=str(spec.src), dst=str(spec.dst), fl=spec.ident, hlim=64)
    if spec.proto is Proto.TCP:
        l4 = TCP(sport=spec.sport, dport=spec.dport, flags=spec.flags, seq=tcp_seq(spec) if seq is None else seq,
                 window=0 if "R" in spec.flags else 64240)
    elif spec.proto is Proto.UDP:
        l4 = UDP(sport=spec.sport, dport=spec.dport) / b"fwtrace"
    elif spec.family == 4:
        l4 = ICMP(type=8, id=spec.sport, seq=spec.dport) / b"fwtrace"
    else:
        from scapy.layers.inet6 import ICMPv6EchoRequest

        l4 = ICMPv6EchoRequest(id=spec.sport, seq=spec.dport, data=b"fwtrace")
    return bytes(l3 / l4)


def describe(data: bytes) -> str:
    """scapy's one-line summary of a captured IP packet, ports as numbers (not /etc/services
    names such as http_alt: everything else fwtrace prints is numeric)."""
    load_scapy(bool(data) and data[0] >> 4 == 6)
    from scapy.config import conf
    from scapy.layers.inet import IP, TCP, UDP, TCPerror, UDPerror

    conf.noenum.add(TCP.sport, TCP.dport, UDP.sport, UDP.dport, TCPerror.sport, TCPerror.dport,
                    UDPerror.sport, UDPerror.dport)

    if data and data[0] >> 4 == 6:
        from scapy.layers.inet6 import IPv6

        return str(IPv6(data).summary())
    return str(IP(data).summary())


def source_address(dst: IPAddress) -> Optional[IPAddress]:
    """The address the kernel would pick to reach dst from the calling thread's namespace."""
    import ipaddress

    fam = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((str(dst), 9))  # UDP connect sends nothing; it only routes
        except OSError:
            return None
        return ipaddress.ip_address(s.getsockname()[0].split("%")[0])


class Injector:
    """Sockets of one sending namespace: open them there, use them from anywhere."""

    def __init__(self) -> None:
        self.send4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.send6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.recv = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.recv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def send(self, spec: PacketSpec, data: bytes) -> float:
        sock = self.send4 if spec.family == 4 else self.send6
        try:
            sock.sendto(data, (str(spec.dst), 0))
        except PermissionError:
            # A locally sent packet dropped in OUTPUT/POSTROUTING fails the send with EPERM;
            # the trace has already recorded who dropped it.
            pass
        return time.monotonic()

    def fileno(self) -> int:
        return self.recv.fileno()

    def poll(self, until: float) -> list[Captured]:
        """Incoming IP packets until the deadline (our own outgoing copies are skipped)."""
        out: list[Captured] = []
        while True:
            left = until - time.monotonic()
            ready, _, _ = select.select([self.recv], [], [], max(left, 0))
            if not ready:
                return out
            data, addr = self.recv.recvfrom(1 << 16)
            if addr[2] == PACKET_OUTGOING:
                continue
            h = parse_headers(data)
            if h is not None:
                out.append(Captured(time.monotonic(), addr[0], data, h))

    def close(self) -> None:
        for s in (self.send4, self.send6, self.recv):
            s.close()


def preload_scapy(ipv6: bool = False) -> None:
    """Import scapy ahead of its first use (the CLI does it on a thread while the run starts)."""
    try:
        load_scapy(ipv6)
    except ImportError:
        pass  # reported where it is used
