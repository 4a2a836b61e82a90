"""A diagnosis's findings and the fixes they offer, with whom each lets in (moved whole from
tracer/model.py, which re-exports them: part of the model; a layer of its own just below it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


SCOPES = ("client", "service", "wider")
INTENTS = ("general", "source", "limit", "restricted")


@dataclass(frozen=True)
class Fix:
    """One way out of a finding, with whom it lets in: `client` (only the probed client, to the
    probed service), `service` (every source, to the probed service) or `wider`."""

    scope: str
    lets_in: str  # in words: "lets in only 192.0.2.2 to tcp/22"
    text: str  # the fix in words, its commands in it
    commands: tuple[str, ...] = ()  # in the order to run them (the owner's tool first)
    owner: Optional[str] = None  # the firewall manager whose tool the first commands are in
    why: Optional[str] = None  # owner: why not the raw command
    raw: Optional[str] = None  # owner: the raw iptables/nft command with the same effect

    def to_json(self) -> dict[str, object]:
        return {"scope": self.scope, "lets_in": self.lets_in, "text": self.text, "commands": list(self.commands),
                "owner": self.owner, "raw": self.raw}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    fix: Optional[str] = None  # what to do, in words and commands
    commands: tuple[str, ...] = ()  # the fix as commands to run on the target, in order
    failed_condition: Optional[str] = None  # near-miss: the one condition of the rule that failed
    # --prove-fix: one iptables/nft command with the fix's effect (when commands[0] is not one,
    # e.g. firewall-cmd), which fwtrace narrows to the probe's own flow to try it
    proof_rule: Optional[str] = None
    proven: Optional[bool] = None  # True: probe reached the service with it; False: not enough; None: not tried
    proven_with: Optional[str] = None  # the narrowed rule that was tried
    # What the block the packet met is for (tracer/diagnose/safe.py): general, source, limit,
    # restricted; None when the packet was not blocked.
    intent: Optional[str] = None
    # The ways out, safest first; `fix` is the first one's text (set by tracer/diagnose/safe.py).
    fixes: tuple[Fix, ...] = ()

    @property
    def scope(self) -> Optional[str]:
        return self.fixes[0].scope if self.fixes else None

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"code": self.code, "message": self.message, "fix": self.fix,
                                "commands": list(self.commands), "failed_condition": self.failed_condition,
                                "intent": self.intent, "scope": self.scope, "fixes": [f.to_json() for f in self.fixes]}
        if self.fix is not None or self.commands:
            d["proven"] = self.proven
            d["proven_with"] = self.proven_with
        return d
