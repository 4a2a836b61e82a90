"""What the probe pipeline asks of the eBPF side, as data (like tracer/plan/commands.py; carried out by
tracer/pipeline/driver.py through tracer/system/ebpf_phase.py). Pure."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from tracer.plan.commands import Command
from tracer.model import PacketSpec


@dataclass(frozen=True)
class StartEbpf(Command):
    """Begin compiling/loading the programs in the background (they take a while) -> None."""

    print_source: bool = False


@dataclass(frozen=True)
class OpenEbpf(Command):
    """Wait for the programs and open their ring buffer as an event source of the run, in the
    target -> str: "loaded", or "unavailable: why" (the run goes on without them)."""


@dataclass(frozen=True)
class WatchEbpf(Command):
    """Report `spec`'s packets and its replies from now on -> None."""

    spec: PacketSpec


@dataclass(frozen=True)
class EbpfOutcome:
    status: str = ""  # "" not used, "loaded", "unavailable: why"
    notes: tuple[str, ...] = ()
    raw: tuple[bytes, ...] = ()  # the ring buffer's records as read (decode.py)
    names: Optional[dict[str, object]] = field(default=None)  # what their numbers meant (loader.names_json)


@dataclass(frozen=True)
class CollectEbpf(Command):
    """After Finish: what the eBPF side saw and said -> EbpfOutcome."""
