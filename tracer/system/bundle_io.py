"""The evidence bundle's reads and writes (tracer/pipeline/bundle.py decides what goes in it): the
rulesets and the environment, each listed in the target namespace entered here, and the bundle
written as a directory or as one FILE.tar.gz."""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from typing import Any, Callable, Optional

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
    """One file to attach: FILE.tar.gz with everything under `top/` (written at `path` itself:
    Reservation.write gives it a staging name and moves it into place)."""
    mtime = (now or time.time)()
    with tarfile.open(path, "w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(content), int(mtime), 0o600
            tar.addfile(info, io.BytesIO(content))


STAGING = ".fwtrace-writing"  # in --evidence DIR while a run holds it: its files, until all are written


class Reservation:
    """The --evidence path, held by this run from before the run until the bundle is written or
    given up: a FILE.tar.gz created empty with O_EXCL, a DIR created by us or, when it exists
    empty, claimed by creating DIR/.fwtrace-writing (mkdir is exclusive). A second run with the
    same path is refused (exit 2) instead of mixing its files in. Nothing partial stays behind:
    the files are written in the staging place and moved in at the end; when the disk is full
    (or anything fails) the staging place, and what we created, is removed."""

    def __init__(self, path: str) -> None:
        from tracer.errors import UsageError

        self.path = path
        self.tar = path.endswith(".tar.gz")
        self.made_dir = False
        self.done = False
        hint = "give a new or empty directory, or a new FILE.tar.gz (is another fwtrace run writing there?)"
        try:
            if self.tar:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return
            try:
                os.mkdir(path, 0o700)
                self.made_dir = True
            except FileExistsError:
                pass
            os.mkdir(os.path.join(path, STAGING), 0o700)
        except FileExistsError:
            raise UsageError(f"--evidence {path} is taken: another fwtrace run holds it", hint) from None
        except OSError as e:
            raise UsageError(f"--evidence {path}: {e.strerror}", hint) from None
        if os.listdir(path) != [STAGING]:  # somebody wrote in it after the check
            self.release()
            raise UsageError(f"--evidence {path} is a directory that is not empty; fwtrace never overwrites", hint)

    def write(self, files: dict[str, bytes], top: str) -> None:
        """All the files, or (raising EnvironmentProblem, exit 3) none of them."""
        from tracer.errors import EnvironmentProblem

        tmp = ""
        try:
            if self.tar:
                where = os.path.dirname(os.path.abspath(self.path))
                fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".part", dir=where)
                os.close(fd)
                write_tar(tmp, files, top)
                os.replace(tmp, self.path)
            else:
                staging = os.path.join(self.path, STAGING)
                write_dir(staging, files)
                for name in sorted(os.listdir(staging)):
                    os.rename(os.path.join(staging, name), os.path.join(self.path, name))
                os.rmdir(staging)
            self.done = True
        except OSError as e:
            if tmp:
                _quiet(os.unlink, tmp)
            self.release()
            raise EnvironmentProblem(f"could not write the evidence to {self.path}: {e.strerror or e}",
                                     "free space there, or give another --evidence path; the report above is complete"
                                     ) from None

    def release(self) -> None:
        """Give the path up, leaving it as it was before the run (once written: nothing to do)."""
        if self.done:
            return
        self.done = True
        if self.tar:
            _quiet(os.unlink, self.path)
            return
        import shutil

        shutil.rmtree(os.path.join(self.path, STAGING), ignore_errors=True)
        if self.made_dir:
            _quiet(os.rmdir, self.path)


def _quiet(fn: Callable[[str], Any], path: str) -> None:
    try:
        fn(path)
    except OSError:
        pass


def read_dir(directory: str) -> dict[str, bytes]:
    """Every file of a bundle directory by its path inside it ("report.json", "before/...")."""
    if not os.path.isdir(directory):
        raise ValueError("no such directory" if not os.path.exists(directory) else "not a directory or .tar.gz")
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def read_tar(path: str, limit: int = 256 << 20) -> dict[str, bytes]:
    """A FILE.tar.gz bundle's regular files by their path below its top directory (members
    that are not regular files, and absolute or `..` paths, are skipped; never extracted)."""
    out: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if not m.isfile() or m.name.startswith("/") or ".." in m.name.split("/"):
                    continue
                total += m.size
                if total > limit:
                    raise ValueError(f"more than {limit >> 20} MiB")
                f = tar.extractfile(m)
                if f is not None:
                    out[m.name.split("/", 1)[1] if "/" in m.name else m.name] = f.read()
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"not a readable .tar.gz ({e})") from e
    return out
