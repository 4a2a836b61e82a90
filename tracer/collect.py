"""Read nftables trace events from the kernel: one nfnetlink socket per traced namespace.

The socket joins NFNLGRP_NFTRACE in the namespace it is created in (netlink sockets belong to the
creator's netns), so it must be opened inside the target namespace, before any probe is sent;
then nothing can be missed and no `nft monitor` process has to be started and waited for.
"""
from __future__ import annotations

import select
import socket
import time
from typing import Callable, Optional

from . import nftrace
from .model import TraceEvent

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
RCVBUF = 4 << 20


class TraceSocket:
    def __init__(self, ifnames: dict[int, str]) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nftrace.NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            try:  # root may go past net.core.rmem_max; under load a full buffer loses events
                self.sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE
            except OSError:
                pass
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, nftrace.NFNLGRP_NFTRACE)
        except OSError:
            self.sock.close()
            raise
        self.ifnames = ifnames
        self.raw: list[bytes] = []  # every datagram, kept for the evidence bundle and golden tests
        self.lost = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, until: float, on_event: Optional[Callable[[TraceEvent], None]] = None) -> list[TraceEvent]:
        """Read what arrives until the monotonic deadline `until` (returns at once when past it)."""
        events: list[TraceEvent] = []
        while True:
            left = until - time.monotonic()
            ready, _, _ = select.select([self.sock], [], [], max(left, 0))
            if not ready:
                return events
            try:
                data = self.sock.recv(1 << 16)
            except OSError:  # ENOBUFS: the kernel dropped notifications for us
                self.lost = True
                continue
            self.raw.append(data)
            for ev in nftrace.parse_messages(data, self.ifnames):
                events.append(ev)
                if on_event is not None:
                    on_event(ev)

    def close(self) -> None:
        self.sock.close()


def ruleset_generation() -> int:
    """The nftables ruleset generation of the calling thread's namespace (one netlink round trip)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nftrace.NETLINK_NETFILTER) as s:
        s.bind((0, 0))
        s.settimeout(2.0)
        s.send(nftrace.getgen_request(1))
        gen = nftrace.parse_generation(s.recv(1 << 16))
    if gen is None:
        raise OSError("no NFT_MSG_NEWGEN answer from the kernel")
    return gen
