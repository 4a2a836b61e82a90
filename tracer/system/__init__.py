"""The thin system layer: run commands, switch network namespaces, read and write sysctls.

Every iptables/nft/ip call goes through `run()`: an argv list (never a shell), LC_ALL=C so the
output is what the parsers were tested on, and a `CommandError` naming the argv on failure.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterator, Optional

from tracer.errors import CommandError, EnvironmentProblem, UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"
# The namespace fwtrace was started in (normally the initial one, where the global netfilter
# sysctls live: nf_log_all_netns is registered for init_net only). `netns(HOME_NETNS)` goes
# back there from inside a target namespace; a journaled undo naming it is replayed by
# `fwtrace cleanup` in the namespace cleanup runs in. (/proc/1/ns/net may be unreadable even
# for root in a sandbox, so the namespace is kept open from import time instead.)
HOME_NETNS = "@home"
def _open_home() -> int:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if fd < 3:  # stdin/stdout/stderr was closed: leave its number free, console.std_streams must see it closed
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        fd = high
    return fd


_HOME_FD = _open_home()


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    stdout: str
    stderr: str
    returncode: int


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (os.kill(pid, 0); a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def require_tools(*names: str) -> None:
    """Fail before anything is touched when a command the run needs is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise EnvironmentProblem(
            f"required command{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
            "install them (Debian: scripts/setup installs iptables, nftables, iproute2)",
        )


def run(argv: list[str], input: Optional[str] = None, check: bool = True, timeout: float = 30.0) -> Completed:
    """Run one command in the calling thread's network namespace."""
    require_tools(argv[0])
    if argv[0] == "nft":  # in-process through libnftables where it is the same nft (tracer/system/nftlib.py)
        from tracer.system import nftlib

        done = nftlib.run(argv, input)
        if done is not None:
            if check and done[0] != 0:
                raise CommandError(argv, done[0], done[2])
            return Completed(tuple(argv), done[1], done[2], done[0])
    exe = shutil.which(argv[0]) or argv[0]
    env = dict(os.environ, LC_ALL="C")
    try:
        p = subprocess.run(
            [exe, *argv[1:]], input=input, capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, -1, f"timed out after {timeout}s") from e
    if check and p.returncode != 0:
        raise CommandError(argv, p.returncode, p.stderr)
    return Completed(tuple(argv), p.stdout, p.stderr, p.returncode)


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("fwtrace needs root (CAP_NET_ADMIN) to read and trace netfilter", "run it with sudo")


# ---------------------------------------------------------------------------------------------
# Network namespaces

# The C library the interpreter runs on (dlopen(NULL)): ctypes.util.find_library would run
# `ldconfig -p` in a subprocess on every start.
_libc = ctypes.CDLL(None, use_errno=True)


def libc() -> ctypes.CDLL:
    return _libc


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise EnvironmentProblem(f"setns failed: {os.strerror(err)}", "fwtrace needs root to enter namespaces")


def netns_path(name: str) -> str:
    if name == HOME_NETNS:
        return f"/proc/self/fd/{_HOME_FD}"
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid network namespace name: {name!r}", "see `ip netns list`")
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        raise EnvironmentProblem(f"unknown network namespace: {name}", "see `ip netns list` for the namespaces that exist")
    return path


@contextlib.contextmanager
def netns(name: Optional[str]) -> Iterator[None]:
    """Move the calling thread into namespace `name` for the block (None: stay where we are).

    setns() switches only the calling thread; subprocesses started inside the block inherit the
    namespace, and sockets created inside stay bound to it after we switch back.
    """
    if name is None:
        yield
        return
    path = netns_path(name)
    with open("/proc/thread-self/ns/net") as home, open(path) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@contextlib.contextmanager
def throwaway_netns() -> Iterator[None]:
    """Move the calling thread into a new, empty network namespace for the block. It has no name
    and nothing else enters it: it is gone once the block (and every child started in it) ends,
    also when fwtrace is killed."""
    with open("/proc/thread-self/ns/net") as home:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise EnvironmentProblem(f"cannot make a network namespace: {os.strerror(err)}", "fwtrace needs root")
        try:
            yield
        finally:
            _setns(home.fileno())


def in_initial_netns() -> bool:
    """Is the calling thread in the initial network namespace? Only init_net has
    nf_log_all_netns (net/netfilter/nf_log.c registers it for init_net alone)."""
    return os.path.exists("/proc/sys/net/netfilter/nf_log_all_netns")


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------
# sysctls (per network namespace for net.*: /proc/sys is resolved against the opener's netns)


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def sysctl_get(key: str) -> Optional[str]:
    try:
        with open(sysctl_path(key)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def sysctl_set(key: str, value: str) -> None:
    try:
        with open(sysctl_path(key), "w") as f:
            f.write(value)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise EnvironmentProblem(f"cannot set {key}: {e.strerror}", "run as root") from e
        raise


def load_module(name: str, keep: tuple[str, ...] = ()) -> bool:
    """Load a kernel module where the kernel has loadable modules and does not have this one
    yet (stock distribution kernels build netfilter's parts as modules and load many only on
    demand; a kernel without modules, like a CI machine's, has what it has built in). True when
    this call loaded it: the caller says so, since a module stays loaded after the run.

    `keep`: sysctls the module's load may change, put back to their values from before in the
    calling thread's namespace and the initial one (nf_log_syslog binds itself as the logger of
    every namespace that has none: net/netfilter/nf_log_syslog.c, nf_log_syslog_net_init)."""
    if os.path.isdir(f"/sys/module/{name}") or not os.path.isdir(f"/lib/modules/{os.uname().release}"):
        return False
    if shutil.which("modprobe") is None:
        return False
    with netns(HOME_NETNS):
        home = {k: sysctl_get(k) for k in keep}
    here = {k: sysctl_get(k) for k in keep}
    if run(["modprobe", "-q", name], check=False).returncode != 0:
        return False
    for where, before in ((HOME_NETNS, home), (None, here)):
        with netns(where):
            for k, v in before.items():
                if v is not None and sysctl_get(k) != v:
                    sysctl_set(k, v)
    return True


def proc_net(name: str) -> str:
    """/proc/self/net/NAME of the calling thread's namespace ('' when absent, e.g. no IPv6)."""
    try:
        with open(f"/proc/thread-self/net/{name}") as f:
            return f.read()
    except (FileNotFoundError, PermissionError):  # (ip_tables_names is root's alone)
        return ""


def interface_names() -> dict[int, str]:
    import socket

    return {idx: name for idx, name in socket.if_nameindex()}


def wait_readable(fds: list[int], timeout: float) -> None:
    """Block until one of `fds` is readable, a signal arrived (the wakeup pipe of
    tracer/system/sigflag.py: the run's next command acts on it), or `timeout` seconds passed."""
    import select

    from tracer.system.console import wakeup_fd

    wake = wakeup_fd()
    ready = select.select(fds + ([wake] if wake is not None else []), [], [], timeout)[0]
    if wake is not None and wake in ready:
        try:
            while os.read(wake, 512):
                pass
        except BlockingIOError:
            pass


def signal_self(name: str) -> None:
    """Send this process the named signal ("SIGKILL", "SIGINT"): the tests' fault injection."""
    import signal

    os.kill(os.getpid(), getattr(signal, name))
