"""What the watch pipeline (tracer/pipeline/watch.py) asks of the system beyond the probe's commands
(tracer/plan/commands.py), as data; tracer/pipeline/drive/watch.py carries them out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from tracer.model import TraceEvent
from tracer.packet import Headers
from tracer.plan.commands import Command


@dataclass(frozen=True)
class OpenCapture(Command):
    """Open the receive-side capture (AF_PACKET, the classic BPF `program` attached in the
    kernel) on `iface`, None: every interface -> tuple of the interface names watched
    (UsageError when `iface` does not exist in the target)."""

    program: bytes
    iface: Optional[str] = None


@dataclass(frozen=True)
class Seen:
    """A packet the capture saw arrive."""

    headers: Headers
    data: bytes
    ifname: str
    at: float
    otherhost: bool = False  # addressed to another link-layer address (PACKET_OTHERHOST)
    wall: float = 0.0  # seconds since the epoch (for the pcapng)


@dataclass(frozen=True)
class PollWatch(Command):
    """Wait for trace events and captured packets until the monotonic time `until` (or the first
    that arrive) -> WatchPolled."""

    until: float


@dataclass(frozen=True)
class MarkCapture(Command):
    """Read everything the capture queued so far -> tuple of Seen. Right after the table went in:
    these arrived before it (never traced: not "never reached netfilter") or in the instant
    since; the pipeline keeps only those a trace shows were traced."""


@dataclass(frozen=True)
class WatchPolled:
    at: float
    events: tuple[TraceEvent, ...] = ()
    seen: tuple[Seen, ...] = ()
    lost: bool = False  # the trace socket has lost events (ENOBUFS) so far


@dataclass(frozen=True)
class CaptureStats(Command):
    """The capture's kernel counts -> (packets its filter passed, packets its buffer dropped)."""


@dataclass(frozen=True)
class Now(Command):
    """The monotonic time -> float."""


@dataclass(frozen=True)
class Show(Command):
    """Hand the live view (tracer.report.watch.Live) to whoever renders it -> None."""

    live: Any


@dataclass(frozen=True)
class WatchEbpfFilter(Command):
    """Report the drops of the packets of the watch's filter from now on (`slots`:
    tracer/plan/ebpf_keys.py watch_keys); taken out again before the programs detach -> None."""

    slots: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class EbpfLost(Command):
    """Records the kernel could not put in the full ring buffer -> int (0 without eBPF)."""
