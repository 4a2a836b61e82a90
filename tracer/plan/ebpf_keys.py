"""The filter keys user space puts into the programs' `probes` map. Pure.

`struct key_t` of probes/drops.c and nfhook.c: u8 family, u8 proto, u16 port (host order),
u32 ident, u8 addr[16]. A probe gets two keys: itself (source address, source port or echo id,
IPv4 id / IPv6 flow label) and its replies (to its source address and port, any ident).
"""
from __future__ import annotations

import struct

from typing import TYPE_CHECKING

from tracer.model import PacketSpec, Proto

if TYPE_CHECKING:
    from tracer.plan.watchplan import WatchFilter

KEY = struct.Struct("<BBHI16s")
PROBE, REPLY = 1, 2
_PROTO = {Proto.TCP: 6, Proto.UDP: 17}


def keys(spec: PacketSpec) -> list[tuple[bytes, int]]:
    """(key bytes, role) for the probe and for its replies."""
    proto = _PROTO.get(spec.proto) or (1 if spec.family == 4 else 58)
    addr = spec.src.packed.ljust(16, b"\0")
    return [(KEY.pack(spec.family, proto, spec.sport, spec.ident, addr), PROBE),
            (KEY.pack(spec.family, proto, spec.sport, 0, addr), REPLY)]



WATCH = struct.Struct("<BBHI16s")  # struct watch_t of probes/drops.c


def watch_keys(f: "WatchFilter") -> dict[int, bytes]:
    """`watchf` map index (0: IPv4, 1: IPv6) -> `struct watch_t` for fwtrace watch's filter: a
    family --src does not name gets none (its slot stays all zero: no watch). 0 is "any" (port,
    protocol); prefix length 0: any source. ICMP is the family's own (1 / 58)."""
    out = {}
    for family in ((f.src.version,) if f.src is not None else (4, 6)):
        proto = 0 if f.proto is None else _PROTO.get(f.proto) or (1 if family == 4 else 58)
        addr = f.src.network_address.packed.ljust(16, b"\0") if f.src is not None else bytes(16)
        plen = f.src.prefixlen if f.src is not None else 0
        out[0 if family == 4 else 1] = WATCH.pack(family, proto, f.dport or 0, plen, addr)
    return out
