"""The command handlers of the system layer, one module per area; tracer/driver.py holds the one
table from command type to handler (`HANDLERS`) and the run's state they share (`Run`).

Every handler is `handler(run, cmd) -> result`, the result the command's docstring names
(tracer/commands.py, tracer/ebpf/commands.py).
"""
from __future__ import annotations

import sys


def print_bpf(title: str, listing_: str) -> None:
    """--print-bpf: a generated BPF program (tc or eBPF) on stderr."""
    sys.stderr.write(f"# {title}\n{listing_}")
