"""Global switches several fwtrace runs may need at once: set by the first, restored by the last.

net.netfilter.nf_log_all_netns is one value for the whole machine. Two runs probing two
namespaces at the same time must not take it from each other: the first to need it records the
original value and sets it, each run registers itself, and only when no live run is left is the
original value written back -- by the last run to finish, or by `fwtrace cleanup` after a crash
(a registered run whose process is gone no longer counts).

State under /run/fwtrace/shared/ (tmpfs; always there, whatever FWTRACE_RUN_DIR says, because
the switch is the machine's, not one journal directory's), changed under an exclusive flock:
  <key>.orig          the value before the first run set it
  <key>.users/<run>   "pid starttime" of each run relying on it
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable, Iterator, Optional

from tracer.system.journal import process_starttime

SHARED_DIR = os.environ.get("FWTRACE_SHARED_DIR", "/run/fwtrace/shared")

Read = Callable[[str], Optional[str]]
Write = Callable[[str, str], None]


def _alive(record: str) -> bool:
    try:
        pid, start = record.split()
    except ValueError:
        return False
    return process_starttime(int(pid)) == start


def _lock_path(key: str, directory: str) -> str:
    """The sysctl's own /proc file when there is one: it always exists, so no lock file has to be
    created (or left behind: a lock file cannot be removed safely while others may wait on it)."""
    proc = "/proc/sys/" + key.replace(".", "/")
    return proc if os.path.exists(proc) else os.path.join(directory, key + ".lock")


@contextlib.contextmanager
def _locked(key: str, directory: str) -> Iterator[str]:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    base = os.path.join(directory, key)
    lock_path = _lock_path(key, directory)
    with open(lock_path, "r" if lock_path.startswith("/proc/") else "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield base
        finally:
            _tidy(base, directory)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tidy(base: str, directory: str) -> None:
    """With no run registered and nothing to restore, leave no trace (still under the lock)."""
    if os.path.exists(base + ".orig"):
        return
    for path, remove in ((base + ".users", os.rmdir), (directory, os.rmdir)):
        try:
            remove(path)
        except OSError:  # not empty, or gone: both fine
            return


def _live_users(base: str, alive: Callable[[str], bool]) -> list[str]:
    users = base + ".users"
    os.makedirs(users, mode=0o700, exist_ok=True)
    live = []
    for name in sorted(os.listdir(users)):
        path = os.path.join(users, name)
        try:
            with open(path) as f:
                record = f.read().strip()
        except OSError:
            continue
        if alive(record):
            live.append(name)
        else:
            os.unlink(path)  # a run that died: its cleanup may never come
    return live


def acquire(key: str, value: str, run_id: str, read: Read, write: Write, directory: str = SHARED_DIR,
            alive: Callable[[str], bool] = _alive) -> Optional[str]:
    """Make sure `key` is `value` while this run lives. Returns the value to be restored at the
    end when this run is the first user (what the report says), else None."""
    with _locked(key, directory) as base:
        first = not _live_users(base, alive)
        orig: Optional[str] = None
        if first:
            if os.path.exists(base + ".orig"):  # left by runs that all died: still the real original
                with open(base + ".orig") as f:
                    orig = f.read().strip()
            else:
                orig = read(key)
                if orig is None:
                    return None
                with open(base + ".orig", "w") as f:
                    f.write(orig)
        pid = os.getpid()
        with open(os.path.join(base + ".users", run_id), "w") as f:
            f.write(f"{pid} {process_starttime(pid) or ''}")
        if read(key) != value:
            write(key, value)
        return orig


def release(key: str, run_id: str, write: Write, directory: str = SHARED_DIR,
            alive: Callable[[str], bool] = _alive) -> bool:
    """This run no longer needs `key`; restore the original when no live run does. Returns
    whether it was restored now. Idempotent: releasing twice, or without acquire, is harmless."""
    with _locked(key, directory) as base:
        try:
            os.unlink(os.path.join(base + ".users", run_id))
        except FileNotFoundError:
            pass
        if _live_users(base, alive) or not os.path.exists(base + ".orig"):
            return False
        with open(base + ".orig") as f:
            orig = f.read().strip()
        write(key, orig)
        os.unlink(base + ".orig")
        return True


def held(key: str, run_id: str, directory: str = SHARED_DIR) -> bool:
    """Is run `run_id` still registered as a user of `key`? (After its release it must not be.)"""
    return os.path.exists(os.path.join(directory, key + ".users", run_id))
