"""Kernel headers for bcc: the running kernel's own, else a merged tree of Debian's generic ones.

bcc compiles with clang against the headers in /lib/modules/$(uname -r)/build, or the directory
named by BCC_KERNEL_SOURCE. A kernel without matching headers (a custom build, as on the CI
machines) still compiles fwtrace's programs against Debian's `linux-headers-amd64`: its two
directories (`linux-headers-V-common` with the sources, `linux-headers-V-ARCH` with the generated
files) only work merged, so a tree of symlinks to both is made once under CACHE (never in
/lib/modules). The programs read no struct through these headers' layouts (see render.py).
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
from dataclasses import dataclass
from typing import Optional

from tracer import system
from tracer.errors import EnvironmentProblem

CACHE = "/var/cache/fwtrace"
USR_SRC = "/usr/src"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True)
class Headers:
    kind: str  # "matching" (the kernel's own), "debian" (merged generic tree), "none"
    path: Optional[str]  # the directory for BCC_KERNEL_SOURCE ("matching": the build dir itself)
    detail: str


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def pick_debian(names: list[str], arch: str) -> Optional[tuple[str, str]]:
    """(common, arch) directory names of the newest complete pair among `names` (pure)."""
    pairs = []
    for n in names:
        m = re.fullmatch(r"linux-headers-(.+)-common", n)
        if m and f"linux-headers-{m.group(1)}-{arch}" in names:
            pairs.append((n, f"linux-headers-{m.group(1)}-{arch}"))
    return max(pairs, key=lambda p: _version_key(p[0])) if pairs else None


def find(release: Optional[str] = None) -> Headers:
    """What bcc will compile against here (looks only, changes nothing)."""
    release = release or platform.release()
    build = f"/lib/modules/{release}/build"
    if os.path.isdir(os.path.join(build, "include")):
        return Headers("matching", build, f"{build} (the running kernel's own)")
    arch = _ARCH.get(platform.machine(), platform.machine())
    names = sorted(os.listdir(USR_SRC)) if os.path.isdir(USR_SRC) else []
    pair = pick_debian(names, arch)
    if pair is None:
        return Headers("none", None, f"no headers for {release}, and no Debian linux-headers-*-common/-{arch} pair "
                                     f"in {USR_SRC}")
    return Headers("debian", os.path.join(CACHE, "headers", pair[1]),
                   f"Debian's {pair[1]} merged with {pair[0]} (not this kernel's: offsets come from BTF)")


def prepare(found: Headers) -> str:
    """The directory to give as BCC_KERNEL_SOURCE, making the merged tree if it is not there yet.

    Idempotent and safe against a concurrent run: the tree is built under a temporary name and
    renamed into place; a finished tree has a stamp file."""
    if found.kind == "matching":
        assert found.path is not None
        return found.path
    if found.kind == "none" or found.path is None:
        raise EnvironmentProblem("bcc needs kernel headers to compile fwtrace's eBPF programs: " + found.detail,
                                 "install linux-headers-amd64 (scripts/setup does), or run with --ebpf off")
    target = found.path
    if os.path.exists(os.path.join(target, ".fwtrace-complete")):
        return target
    name = os.path.basename(target)
    common = os.path.join(USR_SRC, name.rsplit("-", 1)[0] + "-common")
    arch_dir = os.path.join(USR_SRC, name)
    tmp = f"{target}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        # symlinks to the files of both (the arch directory's generated files win), as
        # `cp -as common/. T/; cp -asf arch/. T/` makes them
        system.run(["cp", "-as", common + "/.", tmp + "/"])
        system.run(["cp", "-asf", arch_dir + "/.", tmp + "/"])
        open(os.path.join(tmp, ".fwtrace-complete"), "w").close()
        try:
            os.rename(tmp, target)
        except OSError:  # another run finished first: use its tree
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def available_debian() -> list[str]:
    return sorted(glob.glob(os.path.join(USR_SRC, "linux-headers-*")))
