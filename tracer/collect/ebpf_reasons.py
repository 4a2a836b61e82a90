"""Drop-reason names as the running kernel spells them. Pure: text or BTF in, a table out.

The numbers of `enum skb_drop_reason` differ between kernel versions (NETFILTER_DROP is 12 on
6.18, another number on 6.1), so fwtrace keeps no table of its own: the names come from the
`skb:kfree_skb` tracepoint's print format in tracefs, whose __print_symbolic lists them, e.g.
    __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...)
or else from BTF's `enum skb_drop_reason` (SKB_DROP_REASON_NO_SOCKET = 3, ...).
"""
from __future__ import annotations

import re

from tracer.collect.btf import BTF

_PAIR = re.compile(r'\{\s*(-?\d+|0x[0-9a-fA-F]+)\s*,\s*"([A-Za-z0-9_]+)"\s*\}')


def from_format(text: str, field: str = "reason") -> dict[int, str]:
    """value -> name from the __print_symbolic(REC->`field`, ...) of a tracefs format file."""
    start = text.find(f"__print_symbolic(REC->{field},")
    if start < 0:
        return {}
    end = text.find(")", start + len("__print_symbolic("))
    # names contain no ')', so the first one after the opening closes the symbol list
    return {int(num, 0): name for num, name in _PAIR.findall(text[start:end])}


def from_btf(btf: BTF) -> dict[int, str]:
    prefix = "SKB_DROP_REASON_"
    return {v: n[len(prefix):] if n.startswith(prefix) else n for v, n in btf.enum("skb_drop_reason").items()}


def name(table: dict[int, str], value: int) -> str:
    """The kernel's name, or the number itself when the table does not know it."""
    return table.get(value, f"reason {value}")
