"""The compiled programs, kept: bcc's clang compile costs ~2 s per run, loading bytecode a few ms.

After one compile, the instructions bcc produced for each tracepoint function and the shape of
each map are written to CACHE/bpf/<key>.json, keyed by the rendered source (which holds the
kernel's offsets and tracepoint set), the kernel release and the bcc version. A later run creates
its own maps, points the programs' map references at them (`relocate`) and loads them with
bpf(2): nothing is shared between runs and nothing stays in the kernel after one. Pure: bytes and
dicts in and out; the syscalls are in bpfsys.py.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

BPF_LD_IMM64 = 0x18
BPF_PSEUDO_MAP_FD = 1  # src_reg of a ld_imm64 whose imm is a map fd (include/uapi/linux/bpf.h)
FORMAT = 1


@dataclass(frozen=True)
class MapShape:
    name: str
    fd: int  # the map's fd in the compiling process: what the instructions' imm fields say
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class Program:
    name: str  # bcc's function name, e.g. tracepoint__skb__kfree_skb
    insns: bytes

    @property
    def tracepoint(self) -> tuple[str, str]:
        """(category, event) of a bcc TRACEPOINT_PROBE function name."""
        _, category, event = self.name.split("__", 2)
        return category, event


@dataclass(frozen=True)
class Object:
    programs: tuple[Program, ...]
    maps: tuple[MapShape, ...]
    license: str


def key(source: str, release: str, bcc_version: str) -> str:
    h = hashlib.sha256()
    for part in (str(FORMAT), release, bcc_version, source):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32]


def relocate(insns: bytes, fds: dict[int, int]) -> bytes:
    """`insns` with every map reference (ld_imm64 src_reg=BPF_PSEUDO_MAP_FD) pointing at the
    new fds: old fd -> new fd. A reference to an fd not in `fds` is an error."""
    if len(insns) % 8:
        raise ValueError("BPF instructions come in 8-byte units")
    out = bytearray(insns)
    i = 0
    while i < len(out):
        code, regs = out[i], out[i + 1]
        if code == BPF_LD_IMM64:
            if regs >> 4 == BPF_PSEUDO_MAP_FD:
                old = struct.unpack_from("<i", out, i + 4)[0]
                if old not in fds:
                    raise ValueError(f"instruction {i // 8} refers to map fd {old}, not one of the object's")
                struct.pack_into("<i", out, i + 4, fds[old])
            i += 16  # ld_imm64 takes two slots
        else:
            i += 8
    return bytes(out)


def dumps(obj: Object) -> str:
    return json.dumps({
        "format": FORMAT, "license": obj.license,
        "programs": [{"name": p.name, "insns": p.insns.hex()} for p in obj.programs],
        "maps": [vars(m) for m in obj.maps],
    }, indent=1, sort_keys=True)


def loads(text: str) -> Object:
    d = json.loads(text)
    if d.get("format") != FORMAT:
        raise ValueError("cached object of another format")
    return Object(tuple(Program(p["name"], bytes.fromhex(p["insns"])) for p in d["programs"]),
                  tuple(MapShape(**m) for m in d["maps"]), d["license"])
