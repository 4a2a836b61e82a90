"""Trace verdicts, typed: what a rule or policy told netfilter to do next. No I/O."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional


class Action(str, enum.Enum):
    """What a trace event says happened next: netfilter's verdicts and nft's chain verdicts."""

    ACCEPT = "accept"
    DROP = "drop"
    CONTINUE = "continue"
    JUMP = "jump"
    GOTO = "goto"
    RETURN = "return"
    BREAK = "break"
    QUEUE = "queue"
    STOLEN = "stolen"
    REPEAT = "repeat"
    OTHER = "other"


@dataclass(frozen=True)
class RuleVerdict:
    """A trace event's verdict text (`accept`, `jump fail2ban-SSH`) parsed once."""

    action: Action
    target: Optional[str] = None  # the chain of a jump / goto

    @classmethod
    def parse(cls, text: Optional[str]) -> Optional["RuleVerdict"]:
        if not text:
            return None
        word, _, rest = text.strip().partition(" ")
        try:
            action = Action(word.lower())
        except ValueError:
            action = Action.OTHER
        return cls(action, rest.strip() or None)

    @property
    def ends_chain(self) -> bool:
        """accept and drop end the base chain (and drop the packet's whole walk)."""
        return self.action in (Action.ACCEPT, Action.DROP)


@dataclass(frozen=True)
class TargetVerdict:
    """A rule whose target neither accepts nor drops as such (tracer/diagnose/targets.py): SYNPROXY
    answers the SYN for the server, NFQUEUE hands the packet to a program (or drops it when none is
    bound), TPROXY hands it to a local socket (or drops it when none is there). The rule itself
    stays the packet's `decided_by` rule."""

    kind: str  # "synproxy", "queue", "tproxy"
    verdict: str  # the probe's verdict in the report: "synproxy", "queue", "drop", "accept"
    target: str  # "SYNPROXY", "queue 3", "127.0.0.1:9000"
    cause: Optional[str] = None  # "no program bound to queue 3", "no transparent socket on 127.0.0.1:9000"
    program: Optional[str] = None  # "pid 812 (suricata)": bound to the queue, or holding the socket
    reached: Optional[bool] = None  # synproxy: did a completed handshake reach the listener (None: not checked)
    evidence: tuple[str, ...] = ()  # what the run saw that says so

    def words(self) -> str:
        """`SYNPROXY (answered for the server, ...)`, `QUEUE NFQUEUE 3 (pid 9 (ips))`, `DROP TPROXY to
        127.0.0.1:9000 (no transparent socket ...)`: the verdict line's and summary line's words."""
        if self.kind == "synproxy":
            return "SYNPROXY (answered for the server, " + ("service reached)" if self.reached else "listener not reached)")
        what = f"NFQUEUE {self.target.removeprefix('queue ')}" if self.kind == "queue" else f"TPROXY to {self.target}"
        return f"{self.verdict.upper()} {what}" + (f" ({self.cause})" if self.cause else f" ({self.program})" if self.program else "")

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "target": self.target, "cause": self.cause, "program": self.program,
                "listener_reached": self.reached, "evidence": list(self.evidence)}
