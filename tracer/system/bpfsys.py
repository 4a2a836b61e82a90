"""bpf(2) and perf for a cached object (objcache.py): create its maps, load its programs, attach
them to their tracepoints, read its ring buffer. The attach and the ring buffer use libbcc's C
functions (bpf_attach_tracepoint: perf_event_open + PERF_EVENT_IOC_SET_BPF; libbpf's ring_buffer),
so no compile is involved. Everything lives as long as its fds: `close()` (or the process's end)
detaches and frees it all.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Any, Callable, Optional

from tracer import system
from tracer.system import ebpf_headers, ebpf_objcache as objcache

BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_TRACEPOINT = 5
ATTR_SIZE = 128
_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}
STACK_DEPTH = 127  # PERF_MAX_STACK_DEPTH: bcc's BPF_STACK_TRACE value is 127 u64 addresses


class LoadError(Exception):
    pass


def _bpf(cmd: int, attr: Any) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise LoadError(f"bpf(2) syscall number unknown for {platform.machine()}")
    libc = system.libc()
    # The verifier gives up with EAGAIN when a signal is pending for the thread (SIGCHLD of the
    # run's own subprocesses lands on any thread): try again, as libbpf does.
    for _ in range(8):
        ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ATTR_SIZE))
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise LoadError(os.strerror(err))


def map_create(m: objcache.MapShape) -> int:
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name[16]
    struct.pack_into("=IIIIIII16s", attr, 0, m.map_type, m.key_size, m.value_size, m.max_entries, m.flags, 0, 0,
                     m.name.encode()[:15])
    try:
        return _bpf(BPF_MAP_CREATE, attr)
    except LoadError as e:
        raise LoadError(f"bpf(BPF_MAP_CREATE) of {m.name}: {e}") from e


def prog_load(p: objcache.Program, insns: bytes, license: str) -> int:
    buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(1 << 16)
    for level in (0, 1):  # the verifier's log only to say why it failed: writing it costs time
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("=IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_TRACEPOINT, len(insns) // 8, ctypes.addressof(buf),
                         ctypes.addressof(lic), level, len(log) if level else 0, ctypes.addressof(log) if level else 0,
                         0, 0, p.name.encode()[-15:])
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except LoadError as e:
            err = e
    lines = [ln for ln in log.value.decode(errors="replace").splitlines() if ln and not ln.startswith("processed")]
    raise LoadError(f"bpf(BPF_PROG_LOAD) of {p.name}: {err}" + (f": {lines[-1]}" if lines else ""))


class Instance:
    """One run's copy of a cached object: its own maps and programs, attached."""

    def __init__(self, obj: objcache.Object) -> None:
        from bcc.libbcc import lib

        self.lib = lib
        self.fds: list[int] = []
        self.perf: list[int] = []
        self.maps: dict[str, int] = {}
        self._ring: Optional[int] = None
        try:
            renumber = {}
            for m in obj.maps:
                fd = map_create(m)
                self.fds.append(fd)
                self.maps[m.name] = fd
                renumber[m.fd] = fd
            for p in obj.programs:
                fd = prog_load(p, objcache.relocate(p.insns, renumber), obj.license)
                self.fds.append(fd)
                category, event = p.tracepoint
                pfd = lib.bpf_attach_tracepoint(fd, category.encode(), event.encode())
                if pfd < 0:
                    raise LoadError(f"cannot attach {p.name} to the tracepoint {category}:{event}")
                self.perf.append(pfd)
        except BaseException:
            self.close()
            raise

    def open_ring(self, name: str, callback: Callable[[bytes], None]) -> None:
        from bcc.libbcc import _RINGBUF_CB_TYPE

        def cb(ctx: Any, data: Any, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        self._cb = _RINGBUF_CB_TYPE(cb)  # kept: libbpf calls it later
        self._ring = self.lib.bpf_new_ringbuf(self.maps[name], self._cb, None)
        if not self._ring:
            raise LoadError("cannot open the ring buffer")

    def consume(self) -> None:
        if self._ring:
            self.lib.bpf_consume_ringbuf(self._ring)

    def update(self, name: str, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        if self.lib.bpf_update_elem(self.maps[name], k, v, 0) < 0:
            raise LoadError(f"cannot update map {name}: {os.strerror(ctypes.get_errno())}")

    def delete(self, name: str, key: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        if self.lib.bpf_delete_elem(self.maps[name], k) < 0:
            raise LoadError(f"cannot delete from map {name}: {os.strerror(ctypes.get_errno())}")

    def stack(self, name: str, stack_id: int) -> tuple[int, ...]:
        k = ctypes.c_uint32(stack_id)
        v = (ctypes.c_uint64 * STACK_DEPTH)()
        if self.lib.bpf_lookup_elem(self.maps[name], ctypes.byref(k), ctypes.byref(v)) < 0:
            return ()
        return tuple(a for a in v if a)

    def close(self) -> None:
        if self._ring:
            self.lib.bpf_free_ringbuf(self._ring)
            self._ring = None
        for fd in self.perf + self.fds:  # closing a perf event fd detaches its program
            try:
                os.close(fd)
            except OSError:
                pass
        self.perf, self.fds = [], []


def fentry_support() -> str:
    """Whether fentry programs can attach here (doctor's line; a refusal seen since boot is remembered)."""
    marker = refusal_path("fentry")
    if os.path.exists(marker):
        return "refused (tried since boot: EPERM)"
    try:
        from bcc import BPF
    except ImportError:
        return "unknown (no bcc)"
    return "trampolines present (untried)" if BPF.support_kfunc() else "absent"


def bcc_version() -> Optional[str]:
    """The bcc module's version, None when it cannot be imported."""
    try:
        import bcc
    except ImportError:
        return None
    return getattr(bcc, "__version__", "present")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def refusal_path(attach: str) -> str:
    """A marker that `attach` was refused since this boot (kernel features do not change before a reboot)."""
    return os.path.join(ebpf_headers.CACHE, f"refused-{attach}-{boot_id()}")
