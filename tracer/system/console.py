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


def write_out(text: str) -> Optional[str]:
    """Write to stdout; the error (a broken pipe, a full disk) instead of raising it: the run is
    over and undone by now, and what it found about its cleanup must still decide the status."""
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


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """The first SIGINT/SIGTERM/SIGHUP raises Interrupted wherever the main thread is, so every
    undo on the way out runs; later ones are ignored: a second Ctrl-C must not cut the cleanup
    the first one started (nor raise again while the first is being reported)."""
    seen: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        if seen:
            return
        seen.append(signal.Signals(signum).name)
        raise Interrupted(seen[0])

    old = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def std_streams() -> None:
    """With fd 0, 1 or 2 closed, the next file or socket fwtrace opens would get that number and
    receive whatever is written to "stdout": point them at /dev/null first."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
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
