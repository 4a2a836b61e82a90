"""The filter keys user space puts into the programs' `probes` map. Pure.

`struct key_t` of probes/drops.c and nfhook.c: u8 family, u8 proto, u16 port (host order),
u32 ident, u8 addr[16]. A probe gets two keys: itself (source address, source port or echo id,
IPv4 id / IPv6 flow label) and its replies (to its source address and port, any ident).
"""
from __future__ import annotations

import struct

from tracer.model import PacketSpec, Proto

KEY = struct.Struct("<BBHI16s")
PROBE, REPLY = 1, 2
_PROTO = {Proto.TCP: 6, Proto.UDP: 17}


def keys(spec: PacketSpec) -> list[tuple[bytes, int]]:
    """(key bytes, role) for the probe and for its replies."""
    proto = _PROTO.get(spec.proto) or (1 if spec.family == 4 else 58)
    addr = spec.src.packed.ljust(16, b"\0")
    return [(KEY.pack(spec.family, proto, spec.sport, spec.ident, addr), PROBE),
            (KEY.pack(spec.family, proto, spec.sport, 0, addr), REPLY)]
