"""`fwtrace watch`'s receive-side capture: one AF_PACKET socket in the target namespace with a
classic BPF filter attached in the kernel (tracer/plan/watchplan.py builds it), so only packets
of the filter (or near it) are copied to user space.

A packet socket's tap runs in the device's receive path before tc ingress, the netdev ingress
hook and netfilter: a packet it saw arrived on that interface, whatever happens to it later. Its
own outgoing copies (PACKET_OUTGOING) are skipped. The kernel's counts (PACKET_STATISTICS) say
how many matched the filter and how many the socket's buffer could not take.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Optional

from tracer.errors import EnvironmentProblem
from tracer.packet import parse_headers
from tracer.plan.watch_commands import Seen

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
PACKET_OTHERHOST = 3
RCVBUF = 1 << 20
MAX_READ = 512  # packets read per poll: a flood near the filter cannot hold the loop


class RxCapture:
    def __init__(self, program: bytes, ifname: Optional[str] = None) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            import ctypes

            buf = ctypes.create_string_buffer(program)
            fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            if ifname is not None:
                self.sock.bind((ifname, ETH_P_ALL))
            self.sock.setblocking(False)
        except OSError as e:
            self.sock.close()
            raise EnvironmentProblem(f"cannot open the receive-side capture: {e.strerror or e}",
                                     "fwtrace needs root (CAP_NET_RAW)") from None
        # Packets queued between the socket's creation and the filter's attachment: drop them,
        # and their counts (reading PACKET_STATISTICS resets it).
        self._drain()
        self.received = 0
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.stats()
        self.kernel_packets = self.kernel_drops = 0

    def _drain(self) -> None:
        try:
            while True:
                self.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self) -> list[Seen]:
        out: list[Seen] = []
        for _ in range(MAX_READ):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            h = parse_headers(data)
            if h is None:
                continue
            self.received += 1
            out.append(Seen(h, data[:256], addr[0], time.monotonic(), addr[2] == PACKET_OTHERHOST, time.time()))
        return out

    def stats(self) -> tuple[int, int]:
        """(packets the filter passed, packets the socket's buffer dropped) since the last call,
        added up in kernel_packets / kernel_drops."""
        try:
            packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return self.kernel_packets, self.kernel_drops
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        self.sock.close()


def interfaces() -> list[str]:
    """The target's interfaces (the capture watches all of them, or the one named)."""
    return [name for _, name in sorted(socket.if_nameindex())]
