"""The contract every event source of a run keeps: the nftrace socket, the NFLOG socket, the
/dev/kmsg reader (tracer/trace/collect.py, kmsg.py) and, for replies, the injector."""
from __future__ import annotations

from typing import Callable, Optional, Protocol

from tracer.model import TraceEvent

OnEvent = Optional[Callable[[TraceEvent], None]]


class Pollable(Protocol):
    def fileno(self) -> int:
        """For select(): readable when something arrived."""

    def close(self) -> None: ...


class EventSource(Pollable, Protocol):
    """Reads trace events; keeps every datagram / record it read, for the evidence bundle."""

    raw: list[bytes]
    lost: bool  # the kernel dropped some (socket buffer full, ring buffer overrun)

    def poll(self, until: float, on_event: OnEvent = None) -> list[TraceEvent]:
        """The events that arrive until the monotonic deadline `until` (at once when past it)."""
