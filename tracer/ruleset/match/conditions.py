"""A rule's conditions one by one, each with its own three-valued answer. Pure: no I/O.

`rule_matches` answers for the whole rule; near-miss search (tracer/diagnose/nearmiss.py) needs to know
*which* condition failed, and what it is about (interface, address, port, protocol, state), so
it can be changed alone. The same interpreters decide each condition, so the conjunction of the
answers here is the answer of `rule_matches` (tested), except that a transport port condition
(`--dport 80` after `-p udp`, nft `udp dport 80`) is split: its protocol part is reported as a
`proto` failure only, and the port part alone decides the port.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from tracer.ruleset.match.facts import (
    PacketFacts,
    Tri,
    _addr_in,
    _and,
    _any,
    _family_sees,
    _not,
    _port_in,
)
from tracer.ruleset.match.iptables import _ipt_option, _ipt_split, _IptOption
from tracer.ruleset.match.nft import _Cursor, _nft_at_terminal, _nft_expr, _Unparsed
from tracer.model import Proto, Rule

# What a condition is about: the near-miss search changes only a condition of a known kind.
KINDS = ("family", "iif", "oif", "saddr", "daddr", "proto", "dport", "sport", "state", "icmp", "other")


@dataclass(frozen=True)
class Condition:
    """One condition of a rule: its text as the rule writes it, its kind, and its answer."""

    text: str
    kind: str
    result: Tri
    start: int = 0  # token span in the rule (iptables: shlex words after `-A CHAIN`; nft: tokens)
    end: int = 0
    value: str = ""  # the condition's argument as written: "eth1", "10.0.0.0/8", "8000:8100", "NEW"
    negated: bool = False


Sets = Mapping[tuple[str, str, str], tuple[str, ...]]  # (family, table, name) -> elements (tracer/ruleset/nftsets.py)


def conditions(rule: Rule, pkt: PacketFacts, sets: Optional[Sets] = None) -> list[Condition]:
    """The conditions of `rule` for `pkt`, in rule order, the table's family first. With `sets`,
    a match on a named nft set (`ip saddr @allowed`) is judged on its elements."""
    family = Condition(f"table {rule.family} {rule.table}", "family", _family_sees(rule.family, pkt),
                       value=rule.family)
    if rule.ipt is not None:
        return [family] + ipt_conditions(rule.ipt, pkt)
    conds = nft_conditions(rule.text, pkt)
    if sets:
        conds = [_in_set(c, pkt, sets.get((rule.family, rule.table, c.value[1:]))) for c in conds]
    return [family] + conds


def _in_set(c: Condition, pkt: PacketFacts, elements: Optional[tuple[str, ...]]) -> Condition:
    if c.result is not None or elements is None or not c.value.startswith("@") or c.kind not in ("saddr", "daddr", "dport", "sport"):
        return c
    head = c.text.split()[0]
    if c.kind in ("saddr", "daddr"):
        if head not in ("ip", "ip6"):
            return c
        addr = pkt.src if c.kind == "saddr" else pkt.dst
        hit = _and([pkt.family == (4 if head == "ip" else 6), _any(_addr_in(e, addr) for e in elements)])
    else:
        if head not in ("tcp", "udp"):
            return c
        port = pkt.dport if c.kind == "dport" else pkt.sport
        hit = _and([pkt.proto is _L4[head], _any(_port_in(e, port, "-") for e in elements)])
    return dataclasses.replace(c, result=_not(hit) if c.negated else hit)


# ---------------------------------------------------------------------------------------------
# iptables

_IPT_KIND = {"-i": "iif", "--in-interface": "iif", "-o": "oif", "--out-interface": "oif",
             "-s": "saddr", "--source": "saddr", "--src": "saddr", "-d": "daddr",
             "--destination": "daddr", "--dst": "daddr", "-p": "proto", "--protocol": "proto",
             "--dport": "dport", "--destination-port": "dport", "--dports": "dport",
             "--destination-ports": "dport", "--sport": "sport", "--source-port": "sport",
             "--sports": "sport", "--source-ports": "sport", "--state": "state", "--ctstate": "state",
             "--icmp-type": "icmp", "--icmpv6-type": "icmp"}
_L4 = {"tcp": Proto.TCP, "udp": Proto.UDP}


def ipt_words(line: str) -> list[str]:
    """The words of an `iptables -S` line after `-A CHAIN`, as the option parser sees them."""
    import shlex

    try:
        toks = shlex.split(line)
    except ValueError:
        toks = line.split()
    return toks[2:] if toks[:1] in (["-A"], ["--append"], ["-I"], ["--insert"]) else toks


def ipt_conditions(line: str, pkt: PacketFacts) -> list[Condition]:
    options, _ = _ipt_split(line)
    words = ipt_words(line)
    out: list[Condition] = []
    pos = 0
    for o in options:
        start = _find(words, o, pos)
        end = start + 1 + len(o.args)
        if o.negated:
            start -= 1
        pos = end
        r = _ipt_option(o, pkt)
        r = _not(r) if o.negated else r
        kind = _IPT_KIND.get(o.name, "other")
        if o.name in ("-m", "--match"):
            kind = "module"
        if kind in ("dport", "sport") and o.module in _L4 and r is False and pkt.proto in _L4.values():
            # `-m udp --dport 80` for a TCP packet: the port alone decides the port condition;
            # the protocol is `-p udp`'s failure.
            alt = _ipt_option(o, dataclasses.replace(pkt, proto=_L4[o.module]))
            r = _not(alt) if o.negated else alt
        out.append(Condition(" ".join(words[start:end]), kind, r, start, end, o.args[0] if o.args else "", o.negated))
    return out


def _find(words: list[str], o: _IptOption, pos: int) -> int:
    for i in range(pos, len(words)):
        if words[i] == o.name and tuple(words[i + 1 : i + 1 + len(o.args)]) == o.args:
            return i
    return pos


# ---------------------------------------------------------------------------------------------
# nft

_NFT_META_KIND = {"iifname": "iif", "iif": "iif", "oifname": "oif", "oif": "oif", "l4proto": "proto",
                  "nfproto": "family"}


def nft_conditions(text: str, pkt: PacketFacts) -> list[Condition]:
    c = _Cursor(text)
    out: list[Condition] = []
    try:
        while not c.done() and not _nft_at_terminal(c):
            start = c.i
            r = _nft_expr(c, pkt)
            words = c.toks[start : c.i]
            kind, value = _nft_kind(words)
            if kind in ("dport", "sport") and r is False and words[0] in ("tcp", "udp") and pkt.proto in _L4.values() \
                    and pkt.proto is not _L4[words[0]]:
                # `udp dport 80` for a TCP packet to port 80: only the protocol is wrong; to port
                # 81 both are, which is two failed conditions in one expression.
                if _nft_expr(_Cursor(" ".join(words)), dataclasses.replace(pkt, proto=_L4[words[0]])) is True:
                    kind = "proto"
                else:
                    out.append(Condition(f"{words[0]} (the protocol of `{' '.join(words)}`)", "proto", False, start, start + 1,
                                         words[0]))
            out.append(Condition(" ".join(words), kind, r, start, c.i, value, "!=" in words))
    except _Unparsed:
        out.append(Condition(" ".join(c.toks[c.i :]), "other", None, c.i, len(c.toks)))
    return out


def _nft_kind(words: list[str]) -> tuple[str, str]:
    """(kind, value) of one nft match expression's tokens."""
    w = [t for t in words if t != "meta"]
    if not w:
        return "other", ""
    value = " ".join(t for t in w[2:] if t not in ("==", "!=", "eq", "ne")) if len(w) > 2 else (w[1] if len(w) > 1 else "")
    if w[0] in ("counter", "log", "comment", "limit", "notrack"):
        return "statement", ""
    if w[0] in ("ip", "ip6") and len(w) > 1:
        kind = {"saddr": "saddr", "daddr": "daddr", "protocol": "proto", "nexthdr": "proto"}.get(w[1], "other")
        return kind, value
    if w[0] in ("tcp", "udp", "th") and len(w) > 1:
        return {"dport": "dport", "sport": "sport"}.get(w[1], "other"), value
    if w[0] in ("icmp", "icmpv6"):
        return "icmp", value
    if w[0] == "ct" and len(w) > 1 and w[1] == "state":
        return "state", value
    if w[0] in _NFT_META_KIND:
        v = " ".join(t for t in w[1:] if t not in ("==", "!=", "eq", "ne"))
        return _NFT_META_KIND[w[0]], v
    return "other", value


def failed(conds: list[Condition]) -> tuple[list[Condition], bool]:
    """(the conditions that certainly fail, whether any condition's answer is unknown)."""
    return [c for c in conds if c.result is False], any(c.result is None for c in conds)


_SPACE = re.compile(r"\s+")


def replace_span(words: list[str], cond: Condition, new: Optional[str], quote: bool = False) -> str:
    """The rule's words with one condition replaced by `new` (or dropped when None); `quote`:
    shell-quote the other words (iptables words came out of shlex, nft tokens keep their quotes)."""
    if quote:
        import shlex

        words = [shlex.quote(w) for w in words]
    out = words[: cond.start] + ([new] if new else []) + words[cond.end :]
    return _SPACE.sub(" ", " ".join(out)).strip()
