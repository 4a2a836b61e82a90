"""How a finished report reads (pure): each packet's outcome and the run's, the step that dropped a
reply, who owns the chains a packet met, and the fix in the owner's terms. The renderers
(tracer/render/) read these; they never ask the diagnosis themselves.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from tracer import diagnose
from tracer.diagnose import owners
from tracer.diagnose.owners import chain_owners, decider_owner, owner_of  # noqa: F401  (for the renderers)
from tracer.model import Finding, PacketResult, Step, Verdict

OUTCOMES = ("reached", "blocked", "no-listener", "reply-dropped", "unknown")


def packet_outcome(r: PacketResult, findings: Sequence[Finding]) -> str:
    """reached: the service answered (or accepted silently); no-listener: the firewall accepted
    the probe and the kernel refused it for want of a socket (checked against the listeners read
    in this run); reply-dropped: the probe got through but the firewall dropped the reply on its
    way back; unknown: nothing decided it (no trace); blocked: the firewall stopped it."""
    if r.verdict is Verdict.ACCEPT and r.reply_dropped:
        return "reply-dropped"
    if diagnose.reached(r, list(findings)):
        return "reached"
    if r.verdict is Verdict.ACCEPT and any(f.code == "no-listener" for f in findings):
        return "no-listener"
    if r.kernel is not None:
        return "blocked"  # by the kernel: decided_by says which check
    if r.verdict is Verdict.UNKNOWN and r.decided_by is None and not r.path:
        return "unknown"
    return "blocked"


def reply_drop(r: PacketResult) -> Optional[Step]:
    """The step that dropped the reply on its way out, if one did."""
    return next((s for s in r.reply_steps if s.event.verdict == "drop"), None)


def outcome(report: Any) -> str:
    """One word for the whole run: the first packet that did not reach, else reached."""
    if not report.results:
        return "unknown"
    for r in report.results:
        o = packet_outcome(r, report.findings)
        if o != "reached":
            return o
    return "reached"


def raw_fix(report: Any) -> Optional[str]:
    """The first raw command among the findings (the second line under an owner's fix)."""
    return next((f.commands[0] for f in report.findings if f.commands), None)


def owner_fix(report: Any, r: PacketResult) -> Optional[owners.OwnerFix]:
    h = diagnose.seen(r)
    return owners.fix(r, raw_fix(report), str(h.dst), h.dport)
