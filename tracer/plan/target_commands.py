"""What the analysis asks about targets that neither accept nor drop (tracer/diagnose/targets.py),
as data like tracer/plan/commands.py. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from tracer.plan.commands import Command


@dataclass(frozen=True)
class QueueBindings(Command):
    """The NFQUEUE queues bound in the target and who bound them -> dict[int, str]: queue number
    -> "pid N (comm)" (or "netlink portid P" when no process holds the socket)."""
