"""The command handlers of the system layer, one module per area; tracer/pipeline/driver.py holds the one
table from command type to handler (`HANDLERS`) and the run's state they share (`Run`).

Every handler is `handler(run, cmd) -> result`, the result the command's docstring names
(tracer/plan/commands.py, tracer/plan/ebpf_commands.py).
"""
from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "FWTRACE_TEST_KILL_AT"
SIGINT_ENV = "FWTRACE_TEST_SIGINT_AT"


def checkpoint(phase: str) -> None:
    """Fault injection for the tests: die by SIGKILL at the named phase (no cleanup at all), or
    get a SIGINT there (as from a Ctrl-C at that moment; a comma-separated list of phases)."""
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
    if phase in os.environ.get(SIGINT_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGINT)


def print_bpf(title: str, listing_: str) -> None:
    """--print-bpf: a generated BPF program (tc or eBPF) on stderr."""
    sys.stderr.write(f"# {title}\n{listing_}")
