"""Read nftables trace events from the kernel: one nfnetlink socket per traced namespace.

The socket joins NFNLGRP_NFTRACE in the namespace it is created in (netlink sockets belong to the
creator's netns), so it must be opened inside the target namespace, before any probe is sent;
then nothing can be missed and no `nft monitor` process has to be started and waited for.
"""
from __future__ import annotations

import os
import select
import socket
import time
from typing import Any, Callable, Optional

from tracer.errors import EnvironmentProblem
from tracer.model import TraceEvent
from tracer.collect import nftrace

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RCVBUF = 4 << 20


class _NetlinkSource:
    """An event source reading one netlink socket: subclasses say how a datagram parses."""

    sock: socket.socket
    raw: list[bytes]
    lost: bool

    def parse(self, data: bytes) -> list[TraceEvent]:
        raise NotImplementedError

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
            except OSError:  # ENOBUFS: the kernel dropped messages for us
                self.lost = True
                continue
            self.raw.append(data)  # every datagram, kept for the evidence bundle and golden tests
            for ev in self.parse(data):
                events.append(ev)
                if on_event is not None:
                    on_event(ev)

    def close(self) -> None:
        self.sock.close()


class TraceSocket(_NetlinkSource):
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
        self.raw = []
        self.lost = False

    def parse(self, data: bytes) -> list[TraceEvent]:
        return nftrace.parse_messages(data, self.ifnames)


class NflogSocket(_NetlinkSource):
    """fwtrace's NFLOG group in the namespace it is created in (the target's): bound before any
    rule logs to it, so no logged probe packet is missed."""

    def __init__(self, group: int, ctx: Any, ifnames: dict[int, str]) -> None:
        from tracer.collect import nflog

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nftrace.NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.sock.bind((0, 0))
            for req in ((nflog.config_request(group, 1, command=nflog.NFULNL_CFG_CMD_BIND),
                                       nflog.config_request(group, 2, copy_range=nflog.COPY_RANGE))):
                self.sock.send(req)
                errs = nflog.errors(self.sock.recv(1 << 16))
                if any(e != 0 for e in errs):
                    code = -next(e for e in errs if e != 0)
                    raise EnvironmentProblem(f"cannot bind NFLOG group {group}: {os.strerror(code)}",
                                             "another program may hold the group; rerun (the group follows the run id) "
                                             "or use --log kmsg")
        except BaseException:
            self.sock.close()
            raise
        self.group = group
        self.ctx = ctx
        self.ifnames = ifnames
        self.raw = []
        self.lost = False

    def parse(self, data: bytes) -> list[TraceEvent]:
        from tracer.collect import nflog

        return [ev for p in nflog.parse_packets(data) if (ev := nflog.to_event(p, self.ctx, self.ifnames)) is not None]

    def close(self) -> None:
        self.sock.close()  # closing the socket unbinds the group (nfulnl_rcv_nl_event)


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
