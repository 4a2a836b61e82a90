"""A progress line on stderr while a probe waits for packets, on a terminal only.

It watches the run's own log calls (the run logs every probe it sends) through a thin proxy, so
the run needs no hook of its own: the line says which packet of how many is out, and how long the
run has waited so far. It is transient: it disappears when the run ends.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator, Optional


class Progress:
    """A logger proxy: forwards every call to `log`, and moves the status line on "sent"."""

    def __init__(self, log: Any, total: int, what: str, timeout: float) -> None:
        self._log = log
        self._total = total
        self._what = what
        self._timeout = timeout
        self._sent = 0
        self._start = time.monotonic()
        self._status: Optional[Any] = None

    def __enter__(self) -> "Progress":
        from rich.console import Console

        console = Console(stderr=True)
        self._status = console.status(_Live(self), spinner="line")
        self._status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None

    def _line(self) -> str:
        waited = time.monotonic() - self._start
        if not self._sent:
            return f"fwtrace: preparing the probe of {self._what} ({waited:.0f}s)"
        return (f"fwtrace: {self._what} probe {self._sent}/{self._total} sent; waiting up to {self._timeout:g}s "
                f"for reply and trace ({waited:.0f}s)")

    def _event(self, event: str, kw: dict[str, Any]) -> None:
        if event == "sent" and "why" not in kw and self._sent < self._total:  # "why": the RST after a SYN-ACK
            self._sent += 1

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        self._event(event, kw)
        return self._log.debug(event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        self._event(event, kw)
        return self._log.info(event, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


class _Live:
    """The status text, asked again at each refresh so the waited seconds move."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> str:
        return self.progress._line()


@contextlib.contextmanager
def around(log: Any, wanted: bool, total: int, what: str, timeout: float) -> Iterator[Any]:
    """`log`, wrapped in a progress line when stderr is a terminal and `wanted` (nothing else
    writes there: no -v, the console log format)."""
    if not wanted or not sys.stderr.isatty():
        yield log
        return
    with Progress(log, total, what, timeout) as p:
        yield p
