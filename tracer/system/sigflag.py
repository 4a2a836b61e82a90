"""What the signal handler saw: the names of the signals received, first first.

The handler does nothing else -- it never raises. A handler runs in the main thread between two
bytecodes, wherever that is: raising from it inside the import machinery (the main thread
waiting on a module lock the scapy-import thread holds, or in a weakref callback of
`_get_module_lock`) left both threads in futex waits for good, or the exception was "ignored"
and the interrupt lost (issue 21). The run acts on the flag at its own safe points
(tracer/system/console.py `check`). This module imports nothing but os and signal (fcntl only when a std stream was closed): the entry point
takes the signals with it before anything else is imported.
"""
from __future__ import annotations

import os
import signal
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_seen: list[str] = []
_raised: list[bool] = []
_wakeup: list[int] = []  # the read end of the signal wakeup pipe, once made


def _on_signal(signum: int, frame: Any) -> None:
    _seen.append(signal.Signals(signum).name)


def take_signals() -> dict[int, Any]:
    """Route SIGINT/SIGTERM/SIGHUP to the flag (and the wakeup pipe, so a select() in progress
    returns at once); returns the handlers they had. Called first thing by the entry points, so a
    signal in the first milliseconds is not a traceback or a death by the default action."""
    old = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS}
    if not _wakeup:
        r, w = (_above_std(fd) for fd in os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        _wakeup.append(r)
    return old


def _above_std(fd: int) -> int:
    """The fd moved to a number above 2: with stdout closed at start, the pipe would otherwise
    take fd 1 and console.std_streams could not see that stdout was closed (exit 3, README)."""
    if fd >= 3:
        return fd
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high
