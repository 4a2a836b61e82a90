"""Netfilter's hook priorities, in one place (pure): nft's named priorities and x_tables' NF_IP_PRI_*.

Correlation (tracer/correlate/), the base chains' outcomes (basechains.py), the trace plan and the
kernel-log plan (tracer/plan/) all order base chains by these numbers; a leaf module, so none of them
imports another for it.
"""
from __future__ import annotations

from typing import Optional

from tracer.model import Ruleset, TraceEvent

# Named nft priorities (nft(8), "PRIORITY"): what x_tables' NF_IP_PRI_* numbers are called
# (include/uapi/linux/netfilter_ipv4.h); nat's depends on the hook: DNAT before filter, SNAT after.
NAMED_PRIORITY = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_X_TABLES = ("raw", "mangle", "filter", "security")
# x_tables' built-in chains and the hooks they sit on.
BUILTIN_HOOKS = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output",
                 "POSTROUTING": "postrouting"}


def priority_value(text: Optional[str]) -> int:
    """`-300`, `filter`, `srcnat + 10`, `mangle - 5` -> a number (0 when unreadable)."""
    if not text:
        return 0
    words = text.replace("+", " + ").replace(" - ", " + -").split()
    total = 0
    for w in words:
        if w == "+":
            continue
        try:
            total += int(w)
        except ValueError:
            total += NAMED_PRIORITY.get(w, 0)
    return total


def legacy_priority(table: str, chain: str) -> Optional[int]:
    """An x_tables table's priority on a chain's hook (None for a table netfilter does not know)."""
    if table == "nat":
        return NAMED_PRIORITY["dstnat"] if chain in ("PREROUTING", "OUTPUT") else NAMED_PRIORITY["srcnat"]
    return NAMED_PRIORITY[table] if table in _X_TABLES else None


def base_chain_of(ruleset: Ruleset, ev: TraceEvent) -> Optional[tuple[str, int]]:
    """(hook, priority) of the base chain `ev` was traced in: the snapshot's chain, or a built-in
    chain of an x_tables table fwtrace instantiated itself (for TRACE: not in the snapshot); None
    for a regular chain. Correlation orders events by it, the base chains' outcomes group by it."""
    chain = ruleset.chain(ev.family, ev.table, ev.chain, ev.legacy)
    if chain is not None and chain.hook is not None:
        return chain.hook, priority_value(chain.priority)
    if chain is None and ev.legacy and ev.hook:
        return ev.hook, legacy_priority(ev.table, ev.chain) or 0
    return None
