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
