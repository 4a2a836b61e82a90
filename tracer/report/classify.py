"""How a finished report reads (pure): each packet's outcome and the run's, the step that dropped a
reply, who owns the chains a packet met, and the fix in the owner's terms. The renderers
(tracer/render/) read these; they never ask the diagnosis themselves.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from tracer import diagnose
from tracer.diagnose import owners
from tracer.diagnose.owners import NAMES, chain_owners, decider_owner, owner_of  # noqa: F401  (for the renderers)
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
    if r.target is not None and r.target.kind == "synproxy":
        return "unknown"  # SYNPROXY answered for the server; nothing showed whether the service answers
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
    """The first fix of the report when it is in a firewall manager's own terms: the same fix,
    in the same order, as findings[].fixes[0] and the text report (tracer/diagnose/safe.py)."""
    for f in report.findings:
        if not f.fixes:
            continue
        first = f.fixes[0]
        if first.owner is None:
            return None
        owner = owners.decider_owner(r)
        if owner is None or owner.key != first.owner:
            owner = owners.Owner(first.owner, owners.NAMES.get(first.owner, first.owner))
        cmds = tuple(c for c in first.commands if c != first.raw) or first.commands
        # A command its tool refused is never printed (tracer/pipeline/fixcheck.py); without one, no owner's fix.
        refused = getattr(report, "refused", ())
        kept = tuple(c for c in cmds if c not in refused)
        if not kept:
            return None
        return owners.OwnerFix(owner, first.why or owners.reload_note(owner), kept,
                               None if first.raw in refused else first.raw)
    return None
