"""The contracts the run's sources keep: the nftrace socket, the NFLOG socket and the /dev/kmsg
reader are EventSources (tracer/system/collect.py, kmsg.py); the injector is a Sender
(tracer/system/raw.py, simulate.py). All are select()ed together while a probe is out."""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

from tracer.model import PacketSpec, TraceEvent
from tracer.packet import Headers

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


class Capture(Protocol):
    """A packet the injector caught coming back."""

    @property
    def headers(self) -> Headers: ...

    @property
    def data(self) -> bytes: ...

    @property
    def ifname(self) -> str: ...


class Sender(Pollable, Protocol):
    """The injector (raw sockets, or the simulated-ingress port): sends probes, reads what comes back."""

    def send(self, spec: PacketSpec, data: bytes) -> float:
        """Send; returns the monotonic time the packet left."""

    def poll(self, until: float) -> Sequence[Capture]:
        """The packets caught until the monotonic deadline `until` (at once when past it)."""
