"""Services for the labs (tracer/cli/lab.py): a socket listening (TCP) or answering (UDP echo) in a
namespace, as the test and demo scenarios' servers."""
from __future__ import annotations

import socket
import threading

from tracer import system


def listen(ns: str, tcp: bool, port: int, addr: str = "::") -> socket.socket:
    """A socket listening (TCP) or answering (UDP echo, on a thread) in ns; the caller closes it."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with system.netns(ns):
        s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, port))
    if tcp:
        s.listen(16)
    else:
        threading.Thread(target=_udp_echo, args=(s,), daemon=True).start()
    return s


def _udp_echo(s: socket.socket) -> None:
    try:
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
    except OSError:
        return
