"""The compiled-object cache (tracer/system/ebpf_objcache.py) and the header tree bcc compiles with."""
from __future__ import annotations

import struct

import pytest


def test_relocate_points_map_references_at_the_new_fds() -> None:
    from tracer.system import ebpf_objcache as objcache

    ld_map = struct.pack("<BBhi", 0x18, (1 << 4) | 1, 0, 7) + struct.pack("<BBhi", 0, 0, 0, 0)  # r1 = map fd 7
    ld_const = struct.pack("<BBhi", 0x18, 2, 0, 7) + struct.pack("<BBhi", 0, 0, 0, 0)  # r2 = 7 (a number)
    exit_ = struct.pack("<BBhi", 0x95, 0, 0, 0)
    out = objcache.relocate(ld_map + ld_const + exit_, {7: 42})
    assert struct.unpack_from("<i", out, 4)[0] == 42
    assert out[16:] == ld_const + exit_  # a plain 64-bit constant is not a map
    with pytest.raises(ValueError, match="map fd 7"):
        objcache.relocate(ld_map, {})
    with pytest.raises(ValueError):
        objcache.relocate(b"\0" * 7, {})


def test_cached_object_round_trip_and_key() -> None:
    from tracer.system import ebpf_objcache as objcache

    obj = objcache.Object((objcache.Program("tracepoint__skb__kfree_skb", b"\x95" + bytes(7)),),
                          (objcache.MapShape("events", 7, 27, 0, 0, 262144, 0),), "GPL")
    assert objcache.loads(objcache.dumps(obj)) == obj
    assert obj.programs[0].tracepoint == ("skb", "kfree_skb")
    k = objcache.key("src", "6.18", "0.26.0")
    assert k != objcache.key("src2", "6.18", "0.26.0") and k != objcache.key("src", "6.1", "0.26.0")
    with pytest.raises(ValueError):
        objcache.loads('{"format": 0}')


def test_debian_header_pair() -> None:
    from tracer.system.ebpf_headers import pick_debian

    names = ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "linux-headers-6.1.0-9-common",
             "linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-60-common", "linux-kbuild-6.1", "python3.11"]
    # the newest complete pair (6.1.0-60 has no -amd64 directory)
    assert pick_debian(names, "amd64") == ("linux-headers-6.1.0-56-common", "linux-headers-6.1.0-56-amd64")
    assert pick_debian(names, "arm64") is None
