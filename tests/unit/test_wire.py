"""tracer/system/wire.py against scapy itself: the probes' bytes as scapy builds them, the replies'
summaries as scapy prints them (or None: then fwtrace asks scapy)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, TCPerror, UDPerror
from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest
from scapy.packet import Raw

from tracer.model import PacketSpec, Proto
from tracer.system import raw, wire

conf.noenum.add(TCP.sport, TCP.dport, UDP.sport, UDP.dport, TCPerror.sport, TCPerror.dport, UDPerror.sport, UDPerror.dport)

V4 = st.ip_addresses(v=4)
V6 = st.ip_addresses(v=6)
PORT = st.integers(0, 65535)
FLAGS = st.sampled_from(["S", "A", "SA", "F", "FA", "R", "RA", "P", "PA", "U", "SE", "SEC", "FSRPAUECN", "N"])


def scapy_build(spec: PacketSpec, seq: int) -> bytes:
    """What tracer/system/raw.py built with scapy before wire.py (the reference)."""
    l3 = (IP(src=str(spec.src), dst=str(spec.dst), id=spec.ident, ttl=64) if spec.family == 4
          else IPv6(src=str(spec.src), dst=str(spec.dst), fl=spec.ident, hlim=64))
    if spec.proto is Proto.TCP:
        l4 = TCP(sport=spec.sport, dport=spec.dport, flags=spec.flags, seq=seq, window=0 if "R" in spec.flags else 64240)
    elif spec.proto is Proto.UDP:
        l4 = UDP(sport=spec.sport, dport=spec.dport) / b"fwtrace"
    elif spec.family == 4:
        l4 = ICMP(type=8, id=spec.sport, seq=spec.dport) / b"fwtrace"
    else:
        l4 = ICMPv6EchoRequest(id=spec.sport, seq=spec.dport, data=b"fwtrace")
    return bytes(l3 / l4)


@settings(max_examples=400, deadline=None)
@given(family=st.sampled_from([4, 6]), proto=st.sampled_from(list(Proto)), data=st.data(), sport=PORT, dport=PORT,
       flags=FLAGS, ident=st.integers(0, 0xFFFFF), seq=st.integers(0, 0xFFFFFFFF))
def test_build_is_byte_for_byte_scapys(family: int, proto: Proto, data: st.DataObject, sport: int, dport: int,
                                       flags: str, ident: int, seq: int) -> None:
    addr = V4 if family == 4 else V6
    spec = PacketSpec(proto, data.draw(addr), data.draw(addr), sport, dport, flags,
                      ident & 0xFFFF if family == 4 else ident)
    assert wire.build(spec, seq) == scapy_build(spec, seq)


def test_raw_build_uses_the_probes_sequence_number() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 8080, "S", 77)
    assert raw.build(spec) == scapy_build(spec, raw.tcp_seq(spec))


def scapy_summary(data: bytes) -> str:
    return str((IPv6 if data[0] >> 4 == 6 else IP)(data).summary())


def l4s(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    payload = draw(st.sampled_from([b"", b"fwtrace", b"x" * 30]))
    if kind == "tcp":
        opts = draw(st.sampled_from([[], [("MSS", 1460)], [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]]))
        return TCP(sport=draw(PORT), dport=draw(PORT), flags=draw(st.integers(0, 511)), options=opts) / payload
    if kind == "udp":
        return UDP(sport=draw(PORT), dport=draw(PORT)) / payload
    if kind == "icmp":
        itype = draw(st.sampled_from([0, 3, 3, 3, 11, 5, 8, 12]))
        code = draw(st.integers(0, 16))
        inner = b""
        if itype in (3, 11, 5, 12):
            quoted = bytes(IP(src=str(draw(V4)), dst=str(draw(V4))) / draw(st.sampled_from([
                TCP(sport=draw(PORT), dport=draw(PORT), flags="S"), TCP(flags="S", options=[("MSS", 1460)]),
                UDP(sport=draw(PORT), dport=draw(PORT)) / b"fwtrace", UDP(), ICMP(type=8) / b"fwtrace", ICMP()])))
            cut = draw(st.sampled_from([len(quoted), 28, 20, len(quoted) - 1, 10]))
            inner = quoted[:cut] + draw(st.sampled_from([b"", b"", b"\0\0"]))
        return ICMP(type=itype, code=code, id=draw(st.integers(0, 65535))) / (inner or payload)
    return Raw(b"\x01\x02\x03\x04" + payload)


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_summary_is_scapys_or_none(data: st.DataObject) -> None:
    v6 = data.draw(st.booleans())
    l4 = l4s(data.draw)
    if v6:
        pkt = IPv6(src=str(data.draw(V6)), dst=str(data.draw(V6))) / l4
    else:
        frag = data.draw(st.sampled_from([0, 0, 0, 1]))
        pkt = IP(src=str(data.draw(V4)), dst=str(data.draw(V4)), frag=frag,
                 options=data.draw(st.sampled_from([[], [], b"\x01\x01\x01\x00"]))) / l4
    raw_bytes = bytes(pkt) + data.draw(st.sampled_from([b"", b"", b"\0" * 6]))
    fast = wire.summary(raw_bytes)
    if fast is not None:
        assert fast == scapy_summary(raw_bytes)


@pytest.mark.parametrize("pkt", [
    IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=8080, dport=40000, flags="SA", options=[("MSS", 1460)]),
    IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=8080, dport=40000, flags="RA"),
    IPv6(src="2001:db8:1::1", dst="2001:db8:1::2") / TCP(sport=8080, dport=40000, flags="RA"),
    IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=53, dport=40000) / b"fwtrace",
    IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=0, id=1, seq=2) / b"fwtrace",
    IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=10) / IP(src="192.0.2.2", dst="192.0.2.1") / TCP(flags="S"),
    IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=3) / IP(src="192.0.2.2", dst="192.0.2.1") / UDP() / b"fwtrace",
])
def test_the_replies_a_probe_gets_need_no_scapy(pkt: object) -> None:
    data = bytes(pkt)  # type: ignore[call-overload]
    assert wire.summary(data) is not None
    assert wire.summary(data) == scapy_summary(data) == raw.describe(data)
