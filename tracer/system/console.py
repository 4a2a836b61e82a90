"""The process around a run: std streams that cannot fail it, and interrupts that cannot cut its undo.

A closed terminal, a broken pipe (`fwtrace probe ... 2>&1 | head -1`) or a full disk must never
stop a run halfway, least of all its undo; a second Ctrl-C must not cut the cleanup the first
one started.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Iterator, Optional

from tracer.errors import Interrupted
from tracer.system.sigflag import SIGNALS, _on_signal, _raised, _seen, _wakeup, take_signals


# The std streams that were closed when fwtrace started (std_streams points them at /dev/null).
CLOSED: set[int] = set()


def write_out(text: str) -> Optional[str]:
    """Write to stdout; the error (a broken pipe, a full disk, a stdout closed from the start)
    instead of raising it: the run is over and undone by now, and what it found about its cleanup
    must still decide the status. A report nobody can read is a report not written (exit 3), so
    a closed stdout counts as a failed write, as /dev/full does."""
    if 1 in CLOSED:
        return "stdout is closed"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        return getattr(e, "strerror", None) or str(e)
    return None


def quietly(fn: Any, *args: Any, **kw: Any) -> None:
    """Call fn, and let nothing it raises (a closed stderr, a full disk) stop the caller: for
    the log and bookkeeping calls between undo steps."""
    try:
        fn(*args, **kw)
    except Exception:
        pass


def say(line: str) -> None:
    """One line on stderr, if stderr can take it."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


class SafeStderr:
    """fwtrace's log stream: sys.stderr as it is at each call, and a write that cannot fail. A
    closed terminal, a broken pipe (`2>&1 | head -1`) or a full disk must never stop a run
    halfway, least of all its undo."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError, AttributeError):
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass


def wakeup_fd() -> Optional[int]:
    """Readable once a signal arrived (for the run's select()), None before `take_signals`."""
    return _wakeup[0] if _wakeup else None


def check() -> None:
    """Raise Interrupted for the first signal received, once: later checks (the undo on the way
    out carries out commands too) and later signals do nothing, so a second Ctrl-C cannot cut
    the cleanup the first one started."""
    if _seen and not _raised:
        _raised.append(True)
        raise Interrupted(_seen[0])


def ignore_signals() -> None:
    """From now on INT/TERM/HUP change nothing (the interpreter's shutdown leaves ignored ones so)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP set the flag the run acts on (`check`) for the time of the block;
    the handlers they had come back after it. A block entered with the flag's handlers already
    in place (the entry point took them) keeps what they saw."""
    ours = all(signal.getsignal(sig) is _on_signal for sig in SIGNALS)
    if not ours:
        _seen.clear()
        _raised.clear()
    old = take_signals()
    try:
        yield
    finally:
        if not ours:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def std_streams() -> None:
    """With fd 0, 1 or 2 closed, the next file or socket fwtrace opens would get that number and
    receive whatever is written to "stdout": point them at /dev/null first."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            CLOSED.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def settle_streams() -> None:
    """A stream that cannot be flushed (EPIPE, ENOSPC) would make the interpreter's own flush at
    exit print an error and exit 120: point its fd at /dev/null so the status stays ours."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            except (OSError, ValueError):
                pass
