"""Read struct member offsets and enums from a BTF blob (/sys/kernel/btf/vmlinux). Pure: bytes in.

The eBPF programs are compiled against whatever kernel headers are at hand (Debian's 6.1 headers
on a 6.18 kernel), whose struct layouts are wrong for the running kernel. The offsets of the few
sk_buff / net_device fields the programs read are taken from the running kernel's BTF instead
and handed to the compiler as constants.

Format: include/uapi/linux/btf.h. A header, then the type section (type ids count from 1, each a
12-byte `struct btf_type` followed by kind-specific data), then the string section.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
# Bytes after the 12-byte header: fixed, and per vlen entry.
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8), FUNC_PROTO: (0, 8),
          VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BTFError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int


class BTF:
    """An index of one BTF blob: the named structs/unions/enums, read lazily."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HDR.size:
            raise BTFError("BTF blob too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(data)
        if magic != MAGIC:
            raise BTFError(f"not BTF (magic {magic:#x})")
        self.data = data
        self.strings = hdr_len + str_off
        self.str_end = self.strings + str_len
        self.starts: list[int] = [0]  # type id -> offset of its btf_type (id 0 is void)
        self.named: dict[tuple[int, str], int] = {}  # (kind, name) -> first type id
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack, starts, named, extra = _TYPE.unpack_from, self.starts, self.named, _EXTRA
        wanted = (STRUCT, UNION, ENUM, ENUM64)
        while pos < end:
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            starts.append(pos)
            if name_off and kind in wanted:
                key = (kind, self.string(name_off))
                named.setdefault(key, len(starts) - 1)
            fixed, each = extra.get(kind, (0, 0))
            pos += 12 + fixed + each * (info & 0xFFFF)
        if pos != end:
            raise BTFError("BTF type section is malformed")

    def string(self, off: int) -> str:
        start = self.strings + off
        stop = self.data.index(b"\0", start, self.str_end)
        return self.data[start:stop].decode()

    def _type(self, tid: int) -> tuple[int, int, int, int, int, int]:
        """(name_off, kind, vlen, kflag, size_or_type, offset of the kind-specific data)."""
        pos = self.starts[tid]
        name_off, info, size = _TYPE.unpack_from(self.data, pos)
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size, pos + 12

    def resolve(self, tid: int) -> int:
        """Skip typedefs and qualifiers."""
        while True:
            _, kind, _, _, ref, _ = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref

    def members(self, tid: int) -> list[Member]:
        _, kind, vlen, kflag, _, pos = self._type(tid)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"type {tid} is not a struct or union")
        out = []
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self.data, pos + 12 * i)
            out.append(Member(self.string(name_off) if name_off else "", mtype, (off & 0xFFFFFF) if kflag else off))
        return out

    def struct_id(self, name: str) -> Optional[int]:
        return self.named.get((STRUCT, name))

    def member_offset(self, struct_name: str, member: str) -> Optional[int]:
        """Byte offset of `member` in `struct struct_name`, looking into anonymous structs/unions."""
        tid = self.struct_id(struct_name)
        if tid is None:
            return None
        bits = self._find(tid, member)
        return None if bits is None or bits % 8 else bits // 8

    def _find(self, tid: int, member: str) -> Optional[int]:
        for m in self.members(tid):
            if m.name == member:
                return m.bit_offset
            if not m.name:
                inner = self.resolve(m.type_id)
                if self._type(inner)[1] in (STRUCT, UNION):
                    bits = self._find(inner, member)
                    if bits is not None:
                        return m.bit_offset + bits
        return None

    def member_size(self, struct_name: str, member: str) -> Optional[int]:
        tid = self.struct_id(struct_name)
        mt = self._member_type(tid, member) if tid is not None else None
        if mt is None:
            return None
        _, kind, _, _, size, _ = self._type(self.resolve(mt))
        return 8 if kind == PTR else size

    def _member_type(self, tid: int, member: str) -> Optional[int]:
        for m in self.members(tid):
            if m.name == member:
                return m.type_id
            if not m.name and self._type(self.resolve(m.type_id))[1] in (STRUCT, UNION):
                found = self._member_type(self.resolve(m.type_id), member)
                if found is not None:
                    return found
        return None

    def enum(self, name: str) -> dict[int, str]:
        """value -> name of `enum name` (ENUM or ENUM64)."""
        tid = self.named.get((ENUM, name)) or self.named.get((ENUM64, name))
        if tid is None:
            return {}
        _, kind, vlen, kflag, _, pos = self._type(tid)
        out: dict[int, str] = {}
        for i in range(vlen):
            if kind == ENUM:
                name_off, val = struct.unpack_from("<Ii" if kflag else "<II", self.data, pos + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from("<III", self.data, pos + 12 * i)
                val = lo | hi << 32
            out[val] = self.string(name_off)
        return out
