"""What a Change does (moved whole from tracer/plan/commands.py): run a command, set a sysctl,
acquire a machine-wide switch, or nothing but the probes themselves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from tracer.plan.records import Undo


@dataclass(frozen=True)
class RunArgv:
    argv: tuple[str, ...]
    input: Optional[str] = None


@dataclass(frozen=True)
class ProbesSent:
    """No command: the change is what the probes themselves leave in stateful matches (its undo
    removes that, tracer/plan/stateful.py); journaled before the first probe is sent."""


@dataclass(frozen=True)
class SetSysctl:
    key: str
    value: str


@dataclass(frozen=True)
class AcquireShared:
    """Turn a machine-wide switch on for this run (tracer/system/shared.py); its result is the
    original value when this run is the first user, else None."""

    key: str
    value: str
    run_id: str


Action = Union[RunArgv, SetSysctl, AcquireShared, ProbesSent]


@dataclass(frozen=True)
class Finished:
    errors: tuple[str, ...] = ()  # undos that failed
    trace: bytes = b""  # the raw nfnetlink trace datagrams
    lost: bool = False  # the kernel dropped trace events
    kmsg: tuple[bytes, ...] = ()
    nflog: bytes = b""
    port_left: tuple[str, ...] = ()  # what of the injection port differs from before (links, tc state)
    undos: tuple[Undo, ...] = ()  # every change the run journaled, in order (the sysctls' old values)
