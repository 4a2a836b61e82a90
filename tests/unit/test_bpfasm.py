"""The tc programs of simulated ingress: exact bytes, and what they do to real frames.

The bytes were checked against the kernel (they load and the verifier accepts them, see
tests/kernel/test_ingress.py); here they are pinned, and a 30-line interpreter of the few opcodes
the assembler emits runs them on frames built with scapy, so the offsets are tested on packets.
"""
from __future__ import annotations

import ipaddress
import struct

import pytest

from tracer.inject import bpfasm
from tracer.inject.bpfasm import Field, Insn, assemble, disassemble, redirect_program
from tracer.inject.ingress import frame, inject_program, reply_patterns, reply_program
from tracer.model import PacketSpec, Proto

a = ipaddress.ip_address
MAC = bytes.fromhex("020000000001")
OTHER_MAC = bytes.fromhex("02aabbccddee")
SYN = PacketSpec(Proto.TCP, a("203.0.113.5"), a("192.0.2.1"), 40000, 8080, "S", 1234)
SYN2 = PacketSpec(Proto.TCP, a("203.0.113.5"), a("192.0.2.1"), 40001, 8080, "S", 1235)

INJECT_HEX = (
    "61124c0000000000 6113500000000000 bf24000000000000 0704000006000000 2d34070000000000 "
    "6125000000000000 dc05000020000000 5605040000000002 6925040000000000 dc05000010000000 "
    "5605010001000000 0500020000000000 b700000002000000 9500000000000000 b701000003000000 "
    "b702000001000000 8500000017000000 9500000000000000"
)
REPLY_HEX = (
    "61124c0000000000 6113500000000000 bf24000000000000 0704000026000000 2d340f0000000000 "
    "69250c0000000000 dc05000010000000 56050c0000080000 71250e0000000000 56050a0045000000 "
    "61251e0000000000 dc05000020000000 56050700057100cb 7125170000000000 5605050006000000 "
    "6925240000000000 dc05000010000000 a6050200409c0000 26050100419c0000 0500160000000000 "
    "bf24000000000000 0704000040000000 2d34110000000000 69250c0000000000 dc05000010000000 "
    "56050e0000080000 71250e0000000000 56050c0045000000 61251e0000000000 dc05000020000000 "
    "56050900057100cb 7125170000000000 5605070001000000 7125330000000000 5605050006000000 "
    "69253e0000000000 dc05000010000000 a6050200409c0000 26050100419c0000 0500020000000000 "
    "b7000000ffffffff 9500000000000000 b701000009000000 b702000001000000 8500000017000000 "
    "9500000000000000"
)


def test_instruction_encoding() -> None:
    # r2 = *(u32 *)(r1 + 76): the first instruction of every tc program reading packet data
    assert Insn(0x61, dst=2, src=1, off=76).encode("little") == bytes.fromhex("61124c0000000000")
    assert Insn(0x61, dst=2, src=1, off=76).encode("big") == bytes.fromhex("6121004c00000000")
    assert Insn(0xB7, dst=0, imm=-1).encode("little") == bytes.fromhex("b7000000ffffffff")


def test_inject_program_exact_bytes() -> None:
    assert assemble(inject_program(3, MAC), "little") == bytes.fromhex(INJECT_HEX.replace(" ", ""))


def test_reply_program_exact_bytes() -> None:
    assert assemble(reply_program([SYN, SYN2], 9), "little") == bytes.fromhex(REPLY_HEX.replace(" ", ""))


def test_disassembly_reads_like_the_verifier_log() -> None:
    text = disassemble(inject_program(3, MAC))
    assert text.splitlines()[:5] == [
        "  0: r2 = *(u32 *)(r1 +76)",
        "  1: r3 = *(u32 *)(r1 +80)",
        "  2: r4 = r2",
        "  3: r4 += 6",
        "  4: if r4 > r3 goto pc+7",
    ]
    assert "call bpf_redirect" in text and text.endswith("exit\n")


def test_raw_splits_into_words() -> None:
    assert Field.raw(0, MAC) == [Field(0, 4, 0x02000000, 0x02000000), Field(4, 2, 1, 1)]
    assert Field.raw(10, b"\x01\x02\x03") == [Field(10, 2, 0x0102, 0x0102), Field(12, 1, 3, 3)]


# ---------------------------------------------------------------------------------------------
# A tiny interpreter of the emitted subset (LDX, MOV/ADD, BE, JMP/JMP32 compares, CALL, EXIT)


def run(insns: list[Insn], pkt: bytes) -> tuple[int, tuple[int, int] | None]:
    """(r0, (ifindex, flags) of bpf_redirect or None) for one frame."""
    reg = [0] * 11
    DATA = 0x1000
    reg[1] = -1  # ctx
    redirect = None
    pc = 0
    while True:
        i = insns[pc]
        pc += 1
        cls, op = i.code & 7, i.code & 0xF0
        if cls == bpfasm.LDX:
            size = {bpfasm.W: 4, bpfasm.H: 2, bpfasm.B: 1}[i.code & 0x18]
            if reg[i.src] == -1:
                reg[i.dst] = {76: DATA, 80: DATA + len(pkt)}[i.off]
            else:
                at = reg[i.src] - DATA + i.off
                assert 0 <= at and at + size <= len(pkt), "the verifier would refuse this load"
                reg[i.dst] = int.from_bytes(pkt[at : at + size], "little")
        elif cls in (bpfasm.ALU, bpfasm.ALU64) and op == bpfasm.END:
            n = i.imm // 8
            reg[i.dst] = int.from_bytes((reg[i.dst] & ((1 << i.imm) - 1)).to_bytes(n, "little"), "big")
        elif cls == bpfasm.ALU64:
            rhs = reg[i.src] if i.code & bpfasm.X else i.imm
            reg[i.dst] = rhs if op == bpfasm.MOV else reg[i.dst] + rhs
        elif op == bpfasm.EXIT:
            return reg[0], redirect
        elif op == bpfasm.CALL:
            redirect = (reg[1], reg[2])
            reg[0] = bpfasm.TC_ACT_REDIRECT
        elif op == bpfasm.JA:
            pc += i.off
        else:
            lhs = reg[i.dst] & 0xFFFFFFFF if cls == bpfasm.JMP32 else reg[i.dst]
            rhs = reg[i.src] if i.code & bpfasm.X else (i.imm & 0xFFFFFFFF if cls == bpfasm.JMP32 else i.imm)
            taken = {bpfasm.JNE: lhs != rhs, bpfasm.JGT: lhs > rhs, bpfasm.JLT: lhs < rhs, bpfasm.JEQ: lhs == rhs}[op]
            if taken:
                pc += i.off


def eth(pkt: bytes) -> bytes:
    return frame(OTHER_MAC, MAC, pkt)


def scapy_reply(kind: str, spec: PacketSpec) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, IPv6

    from tracer.system.raw import build

    v4 = spec.family == 4
    l3 = IP(src=str(spec.dst), dst=str(spec.src)) if v4 else IPv6(src=str(spec.dst), dst=str(spec.src))
    if kind == "direct":
        l4 = TCP(sport=spec.dport, dport=spec.sport, flags="SA") if spec.proto is Proto.TCP else UDP(sport=spec.dport, dport=spec.sport)
    elif kind == "error":
        l4 = (ICMP(type=3, code=10) if v4 else ICMPv6DestUnreach(code=1)) / build(spec)
    else:
        l4 = ICMP(type=0, id=spec.sport, seq=spec.dport) if v4 else ICMPv6EchoReply(id=spec.sport, seq=spec.dport)
    return bytes(l3 / l4)


CASES = [
    SYN,
    PacketSpec(Proto.UDP, a("203.0.113.5"), a("192.0.2.1"), 40000, 53, "S", 7),
    PacketSpec(Proto.TCP, a("2001:db8:ffff::5"), a("2001:db8:1::1"), 40000, 8080, "S", 77777),
    PacketSpec(Proto.ICMP, a("203.0.113.5"), a("192.0.2.1"), 40000, 1, "S", 7),
    PacketSpec(Proto.ICMP, a("2001:db8:ffff::5"), a("2001:db8:1::1"), 40000, 1, "S", 7),
]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.summary())
@pytest.mark.parametrize("l2", [14, 0])
def test_reply_program_takes_the_probes_replies(spec: PacketSpec, l2: int) -> None:
    prog = reply_program([spec], 9, l2)
    wrap = eth if l2 else (lambda p: p)
    kinds = ["error", "echo"] if spec.proto is Proto.ICMP else ["direct", "error"]
    for kind in kinds:
        assert run(prog, wrap(scapy_reply(kind, spec))) == (bpfasm.TC_ACT_REDIRECT, (9, bpfasm.F_INGRESS)), kind


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.summary())
def test_reply_program_leaves_other_traffic_alone(spec: PacketSpec) -> None:
    prog = reply_program([spec], 9)
    other_port = PacketSpec(spec.proto, spec.src, spec.dst, spec.sport + 1, spec.dport, spec.flags, spec.ident)
    other_host = PacketSpec(spec.proto, a("203.0.113.6" if spec.family == 4 else "2001:db8:ffff::6"), spec.dst,
                            spec.sport, spec.dport, spec.flags, spec.ident)
    kinds = ["error", "echo"] if spec.proto is Proto.ICMP else ["direct", "error"]
    for other in (other_port, other_host):
        for kind in kinds:
            assert run(prog, eth(scapy_reply(kind, other))) == (bpfasm.TC_ACT_UNSPEC, None), (kind, other)
    assert run(prog, eth(b"\x45")) == (bpfasm.TC_ACT_UNSPEC, None)  # short frames: bounds check
    assert run(prog, b"") == (bpfasm.TC_ACT_UNSPEC, None)


def test_reply_program_covers_the_port_range_of_all_probes() -> None:
    specs = [PacketSpec(Proto.TCP, SYN.src, SYN.dst, 40000 + i, 8080, "S", i + 1) for i in range(5)]
    prog = reply_program(specs, 9)
    for s in specs:
        assert run(prog, eth(scapy_reply("direct", s)))[0] == bpfasm.TC_ACT_REDIRECT
    late = PacketSpec(Proto.TCP, SYN.src, SYN.dst, 40005, 8080, "S", 9)
    assert run(prog, eth(scapy_reply("direct", late)))[0] == bpfasm.TC_ACT_UNSPEC
    assert len(reply_patterns(specs)) == 2  # one range, not one pattern per probe


def test_inject_program_passes_frames_for_the_via_mac_only() -> None:
    from tracer.system.raw import build

    prog = inject_program(3, MAC)
    assert run(prog, frame(MAC, OTHER_MAC, build(SYN))) == (bpfasm.TC_ACT_REDIRECT, (3, bpfasm.F_INGRESS))
    assert run(prog, frame(OTHER_MAC, MAC, build(SYN))) == (bpfasm.TC_ACT_SHOT, None)
    assert run(prog, b"\x02\x00") == (bpfasm.TC_ACT_SHOT, None)


def test_generic_program_with_no_patterns_returns_default() -> None:
    prog = redirect_program([], 1, 0, bpfasm.TC_ACT_OK)
    assert run(prog, b"x" * 64) == (bpfasm.TC_ACT_OK, None)
    assert struct.calcsize("<BBhi") == 8


def test_reply_program_of_proto_both_catches_each_protocols_replies() -> None:
    """--proto both: the TCP and the UDP probe share a source port; each protocol's replies match."""
    tcp = PacketSpec(Proto.TCP, SYN.src, SYN.dst, 40000, 53, "S", 1)
    udp = PacketSpec(Proto.UDP, SYN.src, SYN.dst, 40000, 53, "S", 2)
    prog = reply_program([tcp, udp], 9)
    for s in (tcp, udp):
        assert run(prog, eth(scapy_reply("direct", s)))[0] == bpfasm.TC_ACT_REDIRECT, s.proto
    assert len(reply_patterns([tcp, udp])) == 4
