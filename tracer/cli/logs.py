"""fwtrace's structured log (structlog), imported only when something is to be logged.

Importing structlog costs ~0.1 s (its console renderer pulls in rich's pretty-printer), a tenth of
a probe's wall time, while a default run logs nothing: warnings only, and most runs have none.
`Deferred` stands in for the logger: a call below the chosen level returns at once; the first
call at or above it configures structlog and hands over to it. The output is structlog's as before.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

from tracer.system import console

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL}


def level_for(verbose: int) -> int:
    """Quiet by default: warnings and errors only; -v fwtrace's own changes, -vv every event."""
    return logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING


def configure(fmt: str, level: int) -> Any:
    import structlog

    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolved at each call: sys.stderr may be replaced (pytest's capture, a redirect).
        logger_factory=lambda *_: structlog.PrintLogger(console.SafeStderr()),  # type: ignore[arg-type]  # file-like
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("fwtrace")


def _drop(*_: Any, **__: Any) -> None:
    return None


class Deferred:
    """A structlog bound logger in waiting (see the module's docstring)."""

    def __init__(self, fmt: str, verbose: int) -> None:
        self._fmt, self._level = fmt, level_for(verbose)
        self._real: Optional[Any] = None

    def real(self) -> Any:
        if self._real is None:
            self._real = configure(self._fmt, self._level)
        return self._real

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if LEVELS.get(name, logging.CRITICAL) < self._level:
            return _drop
        return getattr(self.real(), name)  # bind, new, a level it logs: structlog's own


def configure_logging(fmt: str, verbose: int) -> Deferred:
    return Deferred(fmt, verbose)
