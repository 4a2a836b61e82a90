"""/proc/net parsing on tables captured from a namespace with three sockets (see the data files)."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from tracer.model import Listener, Proto
from tracer.collect.sockets import parse_proc_net, serves

DATA = Path(__file__).parent.parent / "data"
a = ipaddress.ip_address


def load(name: str) -> str:
    return (DATA / name).read_text()


def test_tcp_listeners_v4_and_v6() -> None:
    assert parse_proc_net(load("proc-net-tcp.txt"), Proto.TCP) == [Listener(Proto.TCP, a("127.0.0.1"), 9090)]
    assert parse_proc_net(load("proc-net-tcp6.txt"), Proto.TCP) == [Listener(Proto.TCP, a("::"), 8080)]


def test_udp_bound_socket() -> None:
    assert parse_proc_net(load("proc-net-udp.txt"), Proto.UDP) == [Listener(Proto.UDP, a("0.0.0.0"), 5353)]


def test_established_connections_are_not_listeners() -> None:
    line = "   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1"
    assert parse_proc_net(load("proc-net-tcp.txt") + line + "\n", Proto.TCP) == [Listener(Proto.TCP, a("127.0.0.1"), 9090)]


def test_garbage_is_ignored() -> None:
    assert parse_proc_net("header\nnot a socket line\n 0: ZZ:1 0 0A\n", Proto.TCP) == []


def test_serves_wildcards() -> None:
    any6 = Listener(Proto.TCP, a("::"), 8080)
    assert serves(any6, a("192.0.2.1")) and serves(any6, a("2001:db8::1"))
    assert serves(Listener(Proto.TCP, a("0.0.0.0"), 80), a("192.0.2.1"))
    assert not serves(Listener(Proto.TCP, a("0.0.0.0"), 80), a("2001:db8::1"))
    assert not serves(Listener(Proto.TCP, a("127.0.0.1"), 80), a("192.0.2.1"))
