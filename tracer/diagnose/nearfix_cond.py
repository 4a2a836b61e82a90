"""A near miss's failed condition rewritten for the packet, in the rule's own syntax (moved whole
from tracer/diagnose/nearfix.py). Pure: no I/O."""
from __future__ import annotations

import shlex
from typing import Optional

from tracer.ruleset.match.conditions import Condition
from tracer.ruleset.match.facts import PacketFacts
from tracer.model import Proto


# ---------------------------------------------------------------------------------------------
# The replaced condition


def _new_condition(cond: Condition, pf: PacketFacts, ipt: bool) -> Optional[str]:
    """The failed condition rewritten for this packet, in the rule's own syntax; None: no safe one."""
    plen = 32 if pf.family == 4 else 128
    l3 = "ip" if pf.family == 4 else "ip6"
    kind = cond.kind
    head = cond.text.split()[0] if cond.text else ""
    if kind == "iif" and pf.iif:
        return f"-i {pf.iif}" if ipt else f'iifname "{pf.iif}"'
    if kind == "oif" and pf.oif:
        return f"-o {pf.oif}" if ipt else f'oifname "{pf.oif}"'
    if kind in ("saddr", "daddr"):
        addr = pf.src if kind == "saddr" else pf.dst
        return f"{head} {addr}/{plen}" if ipt else f"{l3} {kind} {addr}"
    if kind == "dport" and pf.proto is not Proto.ICMP:
        if ipt:
            extra = f"{cond.value},{pf.dport}" if head in ("--dports", "--destination-ports") else str(pf.dport)
            return f"{head} {extra}"
        return f"{head} dport {pf.dport}"
    if kind == "state" and pf.ct_state in ("new", "untracked", "established", "related"):
        if ipt:
            return f"{head} {cond.value},{pf.ct_state.upper()}"
        old = [s.strip() for s in cond.value.strip("{} ").replace(",", " ").split() if s.strip()]
        return "ct state { " + ", ".join(old + [pf.ct_state]) + " }"
    return None


def _replace_proto(words: list[str], cond: Condition, pf: PacketFacts, ipt: bool) -> Optional[str]:
    """`-p udp ... -m udp` -> `-p tcp ... -m tcp`; nft `udp dport 80` -> `tcp dport 80`."""
    if pf.proto is Proto.ICMP:
        return None
    new = pf.proto.value
    old = cond.value.lower() if ipt else cond.text.split()[-1] if cond.text.split()[0] in ("meta", "ip", "ip6") else cond.text.split()[0]
    out = list(words)
    if ipt:
        for i in range(1, len(out)):
            if out[i - 1] in ("-p", "--protocol", "-m", "--match") and out[i].lower() == old:
                out[i] = new
        return " ".join(shlex.quote(w) for w in out)
    span = out[cond.start : cond.end]
    span = [new if w == old else w for w in span]
    return " ".join(out[: cond.start] + span + out[cond.end :])
