"""A tiny eBPF assembler for fwtrace's two tc programs. No I/O.

Simulated ingress needs two cls_bpf direct-action programs of a dozen instructions each: "redirect
the frames that match one of these byte patterns to interface X (ingress or egress), leave every
other frame alone (or drop it)". Compiling that with clang through bcc costs seconds and kernel
headers; assembling it here costs nothing, and the bytes are tested exactly. The C equivalent is
kept for reference in probes/ingress.c.

Encoding: struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm;} in host byte
order (Documentation/bpf/standardization/instruction-set.rst). Packet bytes are loaded with
direct packet access (__sk_buff.data / data_end), which the verifier accepts only after a bounds
check against data_end; loaded values are converted from network order with BPF_END so that
patterns are written as plain integers and ranges compare naturally.
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

# instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
MEM = 0x60
# ALU / JMP operations and operand source
K, X = 0x00, 0x08
ADD, MOV, END = 0x00, 0xB0, 0xD0
TO_BE = 0x08
JA, JEQ, JGT, JGE, JNE, JLT, JLE, CALL, EXIT = 0x00, 0x10, 0x20, 0x30, 0x50, 0xA0, 0xB0, 0x80, 0x90

# struct __sk_buff (include/uapi/linux/bpf.h): u32 data at 76, u32 data_end at 80
SKB_DATA, SKB_DATA_END = 76, 80
FN_REDIRECT = 23  # long bpf_redirect(u32 ifindex, u64 flags)
F_INGRESS = 1  # BPF_F_INGRESS: deliver to the device's receive path instead of transmitting
# tc actions (include/uapi/linux/pkt_cls.h)
TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = -1, 0, 2, 7

_SIZE = {1: B, 2: H, 4: W}


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self, byteorder: str = sys.byteorder) -> bytes:
        regs = (self.src << 4 | self.dst) if byteorder == "little" else (self.dst << 4 | self.src)
        return struct.pack("<BBhi" if byteorder == "little" else ">BBhi", self.code, regs, self.off, self.imm)


@dataclass(frozen=True)
class Field:
    """The `size`-byte big-endian field at frame offset `offset` lies in [lo, hi] (lo == hi: equals)."""

    offset: int
    size: int
    lo: int
    hi: int

    @staticmethod
    def eq(offset: int, size: int, value: int) -> "Field":
        return Field(offset, size, value, value)

    @staticmethod
    def raw(offset: int, data: bytes) -> list["Field"]:
        """Equality with a byte string, split into 4/2/1-byte fields."""
        tests, i = [], 0
        while i < len(data):
            size = 4 if len(data) - i >= 4 else 2 if len(data) - i >= 2 else 1
            tests.append(Field.eq(offset + i, size, int.from_bytes(data[i : i + size], "big")))
            i += size
        return tests


Pattern = tuple[Field, ...]  # all tests hold


def _imm32(value: int) -> int:
    """An unsigned 32-bit value as the signed immediate JMP32 compares its low 32 bits with."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def redirect_program(patterns: list[Pattern], ifindex: int, flags: int, default: int) -> list[Insn]:
    """Frames matching any pattern: bpf_redirect(ifindex, flags); all others: return `default`.

    Layout, with r2 = data, r3 = data_end:
        for each pattern:  r4 = r2 + end; if r4 > r3 goto next
                           for each test: r5 = load; r5 = be(r5); if w5 out of [lo, hi] goto next
                           goto redirect
                   next:   ...
        r0 = default; exit
    redirect: r1 = ifindex; r2 = flags; call bpf_redirect; exit
    """
    out: list[Insn] = [
        Insn(LDX | MEM | W, dst=2, src=1, off=SKB_DATA),
        Insn(LDX | MEM | W, dst=3, src=1, off=SKB_DATA_END),
    ]
    to_redirect: list[int] = []  # indices of `goto redirect` jumps to patch
    for pattern in patterns:
        to_next: list[int] = []
        end = max(t.offset + t.size for t in pattern)
        out.append(Insn(ALU64 | MOV | X, dst=4, src=2))
        out.append(Insn(ALU64 | ADD | K, dst=4, imm=end))
        to_next.append(len(out))
        out.append(Insn(JMP | JGT | X, dst=4, src=3))
        for t in pattern:
            out.append(Insn(LDX | MEM | _SIZE[t.size], dst=5, src=2, off=t.offset))
            if t.size > 1:
                out.append(Insn(ALU | END | TO_BE, dst=5, imm=t.size * 8))
            if t.lo == t.hi:
                to_next.append(len(out))
                out.append(Insn(JMP32 | JNE | K, dst=5, imm=_imm32(t.lo)))
            else:
                to_next.append(len(out))
                out.append(Insn(JMP32 | JLT | K, dst=5, imm=_imm32(t.lo)))
                to_next.append(len(out))
                out.append(Insn(JMP32 | JGT | K, dst=5, imm=_imm32(t.hi)))
        to_redirect.append(len(out))
        out.append(Insn(JMP | JA))
        for i in to_next:
            out[i] = _target(out[i], i, len(out))
    out.append(Insn(ALU64 | MOV | K, dst=0, imm=default))
    out.append(Insn(JMP | EXIT))
    if not patterns:
        return out  # the verifier refuses unreachable instructions
    redirect = len(out)
    for i in to_redirect:
        out[i] = _target(out[i], i, redirect)
    out += [
        Insn(ALU64 | MOV | K, dst=1, imm=ifindex),
        Insn(ALU64 | MOV | K, dst=2, imm=flags),
        Insn(JMP | CALL, imm=FN_REDIRECT),
        Insn(JMP | EXIT),
    ]
    return out


def _target(insn: Insn, at: int, to: int) -> Insn:
    return Insn(insn.code, insn.dst, insn.src, to - at - 1, insn.imm)


def assemble(insns: list[Insn], byteorder: str = sys.byteorder) -> bytes:
    return b"".join(i.encode(byteorder) for i in insns)


_JOPS = {JA: "goto", JEQ: "==", JGT: ">", JGE: ">=", JNE: "!=", JLT: "<", JLE: "<="}


def disassemble(insns: list[Insn]) -> str:
    """One line per instruction, in the kernel verifier's notation (for --print-bpf and logs)."""
    lines = []
    for pc, i in enumerate(insns):
        cls, op = i.code & 0x07, i.code & 0xF0
        if cls == LDX:
            size = {W: "u32", H: "u16", B: "u8", DW: "u64"}[i.code & 0x18]
            text = f"r{i.dst} = *({size} *)(r{i.src} {i.off:+d})"
        elif cls in (ALU, ALU64) and op == END:
            text = f"r{i.dst} = be{i.imm} r{i.dst}"
        elif cls in (ALU, ALU64):
            verb = {MOV: "=", ADD: "+="}[op]
            rhs = f"r{i.src}" if i.code & X else str(i.imm)
            text = f"{'w' if cls == ALU else 'r'}{i.dst} {verb} {rhs}"
        elif op == CALL:
            text = f"call {'bpf_redirect' if i.imm == FN_REDIRECT else i.imm}"
        elif op == EXIT:
            text = "exit"
        elif op == JA:
            text = f"goto pc{i.off:+d}"
        else:
            reg = "w" if cls == JMP32 else "r"
            rhs = f"r{i.src}" if i.code & X else (f"{i.imm & 0xFFFFFFFF:#x}" if cls == JMP32 else str(i.imm))
            text = f"if {reg}{i.dst} {_JOPS[op]} {rhs} goto pc{i.off:+d}"
        lines.append(f"{pc:3d}: {text}")
    return "\n".join(lines) + "\n"
