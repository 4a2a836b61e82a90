"""Would this rule match this packet? Answered without the kernel, to find shadowed rules.

The answer is three-valued: True (certainly matches), False (certainly not), None (the rule
uses something fwtrace does not understand, or the packet fact it needs is unknown). False
wins over None: the criteria of a rule are ANDed, so one known miss is enough.

iptables-nft rules are judged on their `iptables -S` form (`rule.ipt`), native rules on the
text nft prints. Pure: no I/O.
"""
from __future__ import annotations

import re
from typing import Optional

from tracer.ruleset.match.facts import PacketFacts, Tri, _and, _family_sees
from tracer.ruleset.match.iptables import _ipt_action, _ipt_matches
from tracer.ruleset.match.nft import _nft_action, _nft_matches
from tracer.model import Rule

__all__ = ["PacketFacts", "Tri", "ipt_spec", "rule_action", "rule_matches"]


def rule_matches(rule: Rule, pkt: PacketFacts) -> Tri:
    """Whether `rule` matches `pkt` (None: cannot tell). Verdicts and targets are ignored.

    The `iptables -S` form decides when there is one. iptables-nft can mistranslate what nft
    added to its tables (it prints `tcp dport { 1, 2 } accept` as `-p tcp -j ACCEPT`), so when
    nft's own text (if any) gives the opposite known answer the result is None, not a guess.
    """
    family = _family_sees(rule.family, pkt)
    if rule.ipt is None:
        return _and([family, _nft_matches(rule.text, pkt)])
    ipt = _ipt_matches(rule.ipt, pkt)
    nft = _nft_matches(rule.text, pkt) if rule.text.strip() else None
    if ipt is not None and nft is not None and ipt != nft:
        ipt = None
    return _and([family, ipt])


def rule_action(rule: Rule) -> str:
    """What the rule does when it matches.

    One of "accept", "drop", "reject", "return", "jump X", "goto X", "dnat", "snat",
    "masquerade", "redirect", "continue" (no verdict: LOG, counter, MARK, nftrace, ...) or
    "other" (queue, vmap, tproxy, ...).
    """
    if rule.ipt is not None:
        return _ipt_action(rule.ipt)
    return _nft_action(rule.text)


def ipt_spec(rule: Rule) -> Optional[str]:
    """The rule without its `-A CHAIN`: `-p tcp -m tcp --dport 8080 -j ACCEPT`."""
    if rule.ipt is None:
        return None
    m = re.match(r"\s*-[AI]\s+\S+", rule.ipt)
    return rule.ipt[m.end() :].strip() if m else rule.ipt.strip()
