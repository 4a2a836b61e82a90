"""A diagnosis's findings and the fixes they offer, with whom each lets in (moved whole from
tracer/model.py, which re-exports them: part of the model; a layer of its own just below it)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


SCOPES = ("client", "service", "wider")
INTENTS = ("general", "source", "limit", "restricted")


@dataclass(frozen=True)
class Sampled:
    """One sampled (source, port) whose verdict a fix changed in a shadow copy."""

    source: str
    label: str  # why it was sampled ("-s 198.51.100.0/24 in INPUT -j DROP", "set banned", ...)
    port: int
    proto: str
    before: str  # "open", "drop", "reject (rst)", ...
    after: str

    @property
    def gains(self) -> bool:
        return self.after == "open" and self.before != "open"

    def who(self) -> str:
        """"198.51.100.0/24 sample 198.51.100.1 tcp/8443"."""
        net = re.search(r"[0-9a-fA-F.:]+/\d+", self.label)
        what = f"{net.group(0)} sample {self.source}" if net else \
            (f"{self.label} sample {self.source}" if self.label.startswith(("set ", "ipset ", "xt_recent "))
             else f"{self.source} ({self.label})")
        return f"{what} {self.proto}/{self.port}"

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "why_sampled": self.label, "port": self.port, "proto": self.proto,
                "before": self.before, "after": self.after}


@dataclass(frozen=True)
class Collateral:
    """What a fix changed for everyone but the probed client on the probed service, tried in a
    shadow copy of the firewall (`probe --check-fixes`, tracer/pipeline/checkfixes.py)."""

    changes: Optional[tuple[Sampled, ...]]  # None: not checked (`note` says why); (): nothing else changed
    note: str = ""  # why it was not checked, or how it was ("with its raw iptables command")
    sources: int = 0  # sources and ports sampled
    ports: int = 0
    contradicts: bool = False  # someone gains whom the fix's scope leaves out: not safe

    def lines(self, scope: str) -> list[str]:
        """The report's words: "changes nothing else (checked 4 sources, 2 ports)", "also lets in: ..."."""
        if self.changes is None:
            return [f"collateral not checked: {self.note}"]
        how = f"checked {self.sources} source{'s' * (self.sources != 1)}, {self.ports} port{'s' * (self.ports != 1)}"
        how += f"; {self.note}" if self.note else ""
        if not self.changes:
            return [f"changes nothing else ({how})"]
        out = []
        if self.contradicts:
            out.append(f"UNSAFE: its scope says {scope}, but in a copy of the firewall it lets in others too")
        for word, pick in (("also lets in", lambda c: c.gains), ("also shuts out", lambda c: c.before == "open"),
                           ("also changes", lambda c: not c.gains and c.before != "open")):
            got = [c for c in self.changes if pick(c)]
            if got:
                out.append(f"{word}: " + "; ".join(c.who() + (f" ({c.before} -> {c.after})" if word == "also changes" else "")
                                                   for c in got))
        return out + [f"({how})"]

    def to_json(self) -> dict[str, object]:
        return {"checked": self.changes is not None, "sources": self.sources, "ports": self.ports,
                "note": self.note, "contradicts_scope": self.contradicts}


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
    collateral: Optional[Collateral] = None  # --check-fixes: who else it changes (None: not run)

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"scope": self.scope, "lets_in": self.lets_in, "text": self.text,
                                "commands": list(self.commands), "owner": self.owner, "raw": self.raw}
        if self.collateral is not None:
            c = self.collateral.changes
            d["collateral"] = None if c is None else [x.to_json() for x in c]
            d["collateral_check"] = self.collateral.to_json()
        return d


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
