"""Load a tc program with the bpf(2) syscall and attach it with one rtnetlink request.

No bcc and no clang: the programs are a few dozen instructions assembled by `tracer.inject.bpfasm`, so
loading them costs a syscall. `tc` itself cannot attach a program by file descriptor, hence the
netlink request, sent through pyroute2; removing it again is a plain
`tc filter del`, which is what the journal records. Failures raise `IngressUnavailable` with the
kernel's reason, so the caller can fall back and say why.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from typing import Optional

from tracer import system
from tracer.inject.bpfasm import Insn, assemble
from tracer.inject.ingress import ETH_P_ALL, FILTER_HANDLE, PARENT

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
ATTR_SIZE = 128  # the part of union bpf_attr fwtrace fills; the kernel zero-checks what it knows past it
_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}


class IngressUnavailable(Exception):
    """Simulated ingress cannot be done here (the kernel refused a step, an interface does not
    allow it); the message says which and why, and the caller falls back to a local probe."""


def load_sched_cls(insns: list[Insn], name: str) -> int:
    """BPF_PROG_LOAD a SCHED_CLS program; returns its fd (the caller closes it)."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise IngressUnavailable(f"bpf(2) syscall number unknown for {platform.machine()}")
    code = assemble(insns)
    insn_buf = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    for log_level in (0, 1):  # retry with the verifier log only when it failed: it costs time
        attr = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("=IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(insns),
                         ctypes.addressof(insn_buf), ctypes.addressof(license),
                         log_level, len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0,
                         0, 0, name.encode()[:15])
        fd = system.libc().syscall(ctypes.c_long(nr), ctypes.c_int(BPF_PROG_LOAD), attr, ctypes.c_uint(ATTR_SIZE))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if log_level == 0 and err in (errno.EACCES, errno.EINVAL):
            continue
        break
    # The verifier's reason is the last line before its statistics ("processed N insns ...").
    detail = [ln for ln in log.value.decode(errors="replace").strip().splitlines()
              if ln and not ln.startswith(("processed ", "verification time"))]
    why = f": {detail[-1]}" if detail else ""
    raise IngressUnavailable(f"bpf(BPF_PROG_LOAD) failed: {os.strerror(err)}{why}")


def attach_filter(ifindex: int, direction: str, pref: int, prog_fd: int, name: str) -> None:
    """Attach prog_fd as a direct-action cls_bpf filter on the clsact qdisc of ifindex:
    `tc filter add dev IF {ingress|egress} pref P handle 1 protocol all bpf da fd FD`, which tc
    itself cannot say (it takes an object file, not a loaded program's fd), through pyroute2.

    pyroute2's socket is opened here, in the calling thread's network namespace. The request
    carries NLM_F_EXCL: it fails rather than replace a filter somebody else has at that place.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            ipr.tc("add-filter", "bpf", ifindex, handle=FILTER_HANDLE, parent=PARENT[direction], prio=pref,
                   protocol=ETH_P_ALL, fd=prog_fd, name=name, direct_action=True)
    except NetlinkError as e:
        raise IngressUnavailable(f"adding the cls_bpf filter ({direction}, pref {pref}) failed: {os.strerror(e.code)}") from None


# ---------------------------------------------------------------------------------------------
# tcx (Linux 6.6+): bpf_link-based tc programs. They run BEFORE every classic clsact filter, and
# one that returns TCX_PASS ends the walk there: a classic reply catcher would never see the
# frame. Where tcx programs are attached, fwtrace attaches its own through tcx too, in front of
# them (BPF_F_BEFORE with no anchor: first of all). A tcx link lives as long as its fd: it goes
# away with the process, even on SIGKILL, so nothing has to be journaled for it.

BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_TCX = {"ingress": 46, "egress": 47}  # BPF_TCX_INGRESS, BPF_TCX_EGRESS (enum bpf_attach_type)
BPF_F_BEFORE = 1 << 3


def _bpf(cmd: int, attr: ctypes.Array) -> int:  # type: ignore[type-arg]
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise IngressUnavailable(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = system.libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


def tcx_count(ifindex: int, direction: str) -> Optional[int]:
    """How many tcx programs the interface has in that direction; None: this kernel has no tcx."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("=II", attr, 0, ifindex, BPF_TCX[direction])  # query.target_ifindex, attach_type
    ret = _bpf(BPF_PROG_QUERY, attr)
    if ret < 0:
        return None  # EINVAL before 6.6: no tcx, so nothing can run before classic filters
    return int(struct.unpack_from("=I", attr, 24)[0])  # query.prog_cnt


def tcx_attach(ifindex: int, direction: str, prog_fd: int) -> int:
    """Attach prog_fd first among the interface's tcx programs; returns the link fd (close = detach)."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    # link_create: prog_fd, target_ifindex, attach_type, flags; tcx.relative_fd 0 with BPF_F_BEFORE: first
    struct.pack_into("=IIII", attr, 0, prog_fd, ifindex, BPF_TCX[direction], BPF_F_BEFORE)
    ret = _bpf(BPF_LINK_CREATE, attr)
    if ret < 0:
        raise IngressUnavailable(f"attaching the tcx {direction} program failed: {os.strerror(-ret)}")
    return ret
