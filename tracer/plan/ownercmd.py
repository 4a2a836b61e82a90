"""what-if for an owner's command (pure): `ufw ...` and `firewall-cmd ...` turned into the rules the
owner itself would write into the kernel, so the shadow can apply those instead of running a tool
whose configuration files and daemon it does not have.

`parse(argv)` checks the command's syntax (before anything is read or built); `translate(intent,
target)` needs the target's ruleset: it refuses when the owner's layout is not there (no ufw
chains, no `inet firewalld` table) and otherwise gives the steps to run in the shadow and the
rules they add or remove, in the owner's own form. The owners' generators are
tracer/plan/owner_ufw.py (ufw's backend_iptables.py, user.rules) and
tracer/plan/owner_firewalld.py (firewalld's core/nftables.py).
"""
from __future__ import annotations

import os

from tracer.errors import UsageError
from tracer.plan import owner_firewalld, owner_ufw
from tracer.plan.ownerrules import Intent, Target, Translation

OWNER_TOOLS = {"ufw": "ufw", "firewall-cmd": "firewalld"}


def is_owner_command(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) in OWNER_TOOLS


def parse(argv: list[str]) -> Intent:
    """The owner command's syntax checked (UsageError naming what is not supported)."""
    tool = os.path.basename(argv[0])
    if tool == "ufw":
        return Intent(tool, tuple(argv), owner_ufw.parse(argv[1:]))
    if tool == "firewall-cmd":
        return Intent(tool, tuple(argv), owner_firewalld.parse(argv[1:]))
    raise UsageError(f"what-if cannot translate {tool}", "give ufw or firewall-cmd, or the iptables/nft commands")


def translate(intent: Intent, target: Target) -> Translation:
    """The steps that write what the owner would write, on this target's layout."""
    if intent.tool == "ufw":
        steps, notes = owner_ufw.translate(intent.parsed, target)
    else:
        steps, notes = owner_firewalld.translate(intent.parsed, target)
    return Translation(intent.tool, OWNER_TOOLS[intent.tool], intent.argv, tuple(steps), tuple(notes))
