"""The command handlers of the system layer, one module per area; tracer/pipeline/driver.py holds the one
table from command type to handler (`HANDLERS`) and the run's state they share (`Run`).

Every handler is `handler(run, cmd) -> result`, the result the command's docstring names
(tracer/plan/commands.py, tracer/plan/ebpf_commands.py). Handlers type the run as `RunState`, the
part of `Run` they use, so they never import the driver that imports them.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

if TYPE_CHECKING:
    from tracer.collect.events import EventSource, Sender
    from tracer.model import ProbeRequest
    from tracer.plan import commands as c
    from tracer.plan.records import Undo
    from tracer.system.journal import Journal

KILL_ENV = "FWTRACE_TEST_KILL_AT"
SIGINT_ENV = "FWTRACE_TEST_SIGINT_AT"


def checkpoint(phase: str) -> None:
    """Fault injection for the tests: die by SIGKILL at the named phase (no cleanup at all), or
    get a SIGINT there (as from a Ctrl-C at that moment; a comma-separated list of phases)."""
    from tracer import system

    if os.environ.get(KILL_ENV) == phase:
        system.signal_self("SIGKILL")
    if phase in os.environ.get(SIGINT_ENV, "").split(","):
        system.signal_self("SIGINT")


def print_bpf(title: str, listing_: str) -> None:
    """--print-bpf: a generated BPF program (tc or eBPF) on stderr."""
    sys.stderr.write(f"# {title}\n{listing_}")


class RunState(Protocol):
    """What the handlers read and set of one run (tracer/pipeline/driver.py's `Run`)."""

    req: ProbeRequest
    log: Any
    run_id: str
    log_events: bool
    full_snapshot: bool
    extra: tuple[Any, ...]
    on_extra: Optional[Callable[[], None]]
    journal: Optional[Journal]
    port_lock: Optional[int]
    port_plan: Any
    sources: list[EventSource]
    kmsg: Optional[EventSource]
    nflog: Optional[EventSource]
    inj: Optional[Sender]
    finished: Optional[c.Finished]
    stack: contextlib.ExitStack[Any]
    undo_errors: Optional[list[str]]
    ebpf: Any
    app: Any

    @property
    def sender(self) -> Sender: ...

    def change(self, undo: Undo, apply: Callable[[], Any], atomic: bool = False) -> Any: ...

    def unlock(self) -> None: ...
