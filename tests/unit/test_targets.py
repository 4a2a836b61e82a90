"""tracer/diagnose/targets.py's pure parts: the rules' parameters and the /proc files' parsers
(sample lines as the 6.18 kernel of the kernel tests wrote them)."""
from __future__ import annotations

import ipaddress

from tracer.diagnose import targets

DST = ipaddress.ip_address("192.0.2.1")


def test_queue_numbers() -> None:
    assert targets.queues("-A INPUT -p tcp -j NFQUEUE --queue-num 3") == (3,)
    assert targets.queues("-A INPUT -j NFQUEUE --queue-balance 2:4") == (2, 3, 4)
    assert targets.queues("tcp dport 81 counter queue num 3 bypass") == (3,)
    assert targets.queues("queue to 2-3") == (2, 3)
    assert targets.queues("-A INPUT -j NFQUEUE") == (0,)


def test_bypass() -> None:
    assert targets.bypass("-j NFQUEUE --queue-num 3 --queue-bypass")
    assert targets.bypass("queue num 3 bypass")
    assert not targets.bypass("-j NFQUEUE --queue-num 3")


def test_tproxy_target() -> None:
    ip = ipaddress.ip_address
    assert targets.tproxy_to("-j TPROXY --on-port 9000 --on-ip 127.0.0.1 --tproxy-mark 0x1/0x1", DST, 80) == (ip("127.0.0.1"), 9000)
    assert targets.tproxy_to("-j TPROXY --on-port 9000 --on-ip 0.0.0.0", DST, 80) == (DST, 9000)
    assert targets.tproxy_to("tcp dport 85 tproxy ip to 127.0.0.1:9000", DST, 85) == (ip("127.0.0.1"), 9000)
    assert targets.tproxy_to("tproxy to :9000 accept", DST, 85) == (DST, 9000)


def test_queue_bindings_and_netlink_sockets() -> None:
    assert targets.parse_queue_bindings("    3  -4013     0 2  65531     0     0        0  1\n") == {}
    assert targets.parse_queue_bindings("    3   4013     0 2  65531     0     0        0  1\n") == {3: 4013}
    netlink = ("sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
               "0000000000000000 12  4013       00000000 0        0        0     2        0        31337\n"
               "0000000000000000 0   4013       00000000 0        0        0     2        0        1\n")
    assert targets.netlink_inodes(netlink, {4013}) == {4013: 31337}
    assert targets.netlink_inodes(netlink, {7}) == {}
