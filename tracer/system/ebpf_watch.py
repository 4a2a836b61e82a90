"""fwtrace watch's side of the drops program (probes/drops.c): its filter in the `watchf` map,
and the count of records the full ring buffer refused (`lost`). The loader (ebpf_loader.py) and
the ring buffer are the probe's own."""
from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from typing import Any

from tracer.system import bpfsys


def set_filter(source: Any, slots: dict[int, bytes]) -> None:
    """Put the watch's filter in (slot -> struct watch_t, tracer/plan/ebpf_keys.py watch_keys)."""
    for slot, value in slots.items():
        source._inst.update("watchf", struct.pack("<I", slot), value)


def clear_filter(source: Any, slots: dict[int, bytes]) -> None:
    """No packet matches any more (a zero family is no watch); before the programs detach."""
    for slot, value in slots.items():
        with contextlib.suppress(bpfsys.LoadError):
            source._inst.update("watchf", struct.pack("<I", slot), bytes(len(value)))


def lost(source: Any) -> int:
    """Records the kernel could not put in the full ring buffer so far."""
    inst = source._inst
    k, v = ctypes.c_uint32(0), ctypes.c_uint64(0)
    if inst.lib.bpf_lookup_elem(inst.maps["lost"], ctypes.byref(k), ctypes.byref(v)) < 0:
        raise bpfsys.LoadError(f"cannot read map lost: {os.strerror(ctypes.get_errno())}")
    return int(v.value)
