"""The evidence bundle's reads and writes (tracer/pipeline/bundle.py decides what goes in it): the
rulesets and the environment, each listed in the target namespace entered here, and the bundle
written as a directory or as one FILE.tar.gz."""
from __future__ import annotations

import io
import os
import tarfile
import time
from typing import Callable, Optional

from tracer import system
from tracer.system import listing


def _try(argv: list[str]) -> str:
    """A listing for the bundle: its output, or why there is none (a missing tool is not fatal here)."""
    try:
        c = system.run(argv, check=False)
    except Exception as e:  # noqa: BLE001 - the bundle says what it could not list
        return f"(not listed: {e})\n"
    return c.stdout if c.returncode == 0 else f"(`{' '.join(argv)}` failed with exit code {c.returncode}: {c.stderr.strip()})\n"


def rulesets() -> dict[str, str]:
    """The ruleset with counters, in every form the host has (calling thread's namespace)."""
    out = {"nft-ruleset.txt": _try(["nft", "-a", "list", "ruleset"]),
           "iptables-save-c.txt": _try(["iptables-save", "-c"]),
           "ip6tables-save-c.txt": _try(["ip6tables-save", "-c"])}
    for family in listing.legacy_families():
        tool = "iptables-legacy-save" if family == "ip" else "ip6tables-legacy-save"
        out[f"{tool}-c.txt"] = _try([tool, "-c"])
    return out


def rulesets_in(netns: Optional[str]) -> dict[str, str]:
    """rulesets() in the target namespace."""
    with system.netns(netns):
        return rulesets()


def environment_in(netns: Optional[str], sysctl_keys: tuple[str, ...],
                   via: Optional[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(sysctls, long listings, x_tables families in use) of the target namespace."""
    with system.netns(netns):
        sysctls = {k: v for k in sysctl_keys if (v := system.sysctl_get(k)) is not None}
        if via:
            key = f"net.ipv4.conf.{via}.rp_filter"
            sysctls[key] = system.sysctl_get(key) or "?"
        long = {"addresses.txt": _try(["ip", "addr", "show"]),
                "routes.txt": _try(["ip", "route", "show", "table", "all"]) + "\n" +
                _try(["ip", "-6", "route", "show", "table", "all"]) + "\n" + _try(["ip", "rule", "show"]),
                "listening.txt": _try(["ss", "-ltnup"]),
                "sysctls.txt": "".join(f"{k} = {v}\n" for k, v in sysctls.items())}
        legacy = [f for f in ("ip_tables_names", "ip6_tables_names") if system.proc_net(f).strip()]
    return sysctls, long, legacy


def write_dir(directory: str, files: dict[str, bytes]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, content in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


def write_tar(path: str, files: dict[str, bytes], top: str, now: Optional[Callable[[], float]] = None) -> None:
    """One file to attach: FILE.tar.gz with everything under `top/`."""
    mtime = (now or time.time)()
    tmp = path + ".part"
    with tarfile.open(tmp, "w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(content), int(mtime), 0o600
            tar.addfile(info, io.BytesIO(content))
    os.replace(tmp, path)
