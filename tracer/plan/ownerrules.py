"""The values of an owner command's translation (pure, a leaf: tracer/plan/ownercmd.py parses and
translates, tracer/plan/owner_ufw.py and owner_firewalld.py generate the owners' rules)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

@dataclass(frozen=True)
class Target:
    """What of the target's ruleset the owner's layout is read from (text, as listed)."""

    ipt4: str = ""  # iptables-save text of the table holding ufw's chains ("" when none)
    ipt6: str = ""
    ipt4_tool: str = "iptables-nft"  # the tool that wrote it: iptables-nft or iptables-legacy
    ipt6_tool: str = "ip6tables-nft"
    nft: str = ""  # native nft tables (`table inet firewalld` lives here)
    services: Mapping[str, str] = field(default_factory=dict)  # firewalld service name -> its XML, where the target has it


@dataclass(frozen=True)
class Step:
    """One change in the shadow. `argv` (with `input` on stdin) runs there; with `check`, it runs
    only when `check` succeeds (a delete of a rule that is there), else `absent` is noted;
    `nft_delete` (chain, rule): the rule's handle is looked up in the shadow, then deleted."""

    rule: str  # as shown to the admin: the command that adds or removes the owner's rule
    argv: tuple[str, ...] = ()
    input: Optional[str] = None
    check: tuple[str, ...] = ()
    absent: str = ""
    nft_delete: Optional[tuple[str, str]] = None  # (chain of inet firewalld, rule text)


@dataclass(frozen=True)
class Intent:
    """A parsed owner command: which tool, and its own parsed form (owner_ufw.Rule, owner_firewalld.Cmd)."""

    tool: str
    argv: tuple[str, ...]
    parsed: Any


@dataclass(frozen=True)
class Translation:
    tool: str
    owner: str
    command: tuple[str, ...]
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(s.rule for s in self.steps)

    def to_json(self) -> dict[str, object]:
        return {"tool": self.tool, "owner": self.owner, "command": list(self.command),
                "rules": list(self.rules), "notes": list(self.notes)}

    def render(self) -> list[str]:
        head = f"applied the rules `{' '.join(self.command)}` would write"
        if not self.steps:
            return [f"{head}: none"] + [f"  note: {n}" for n in self.notes]
        return [f"{head}:"] + [f"  {r}" for r in self.rules] + [f"  note: {n}" for n in self.notes]
