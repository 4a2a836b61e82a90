"""The nft interpreter: does a rule as `nft list` prints it match the packet? Pure: no I/O."""
from __future__ import annotations

import operator
import re
from typing import Callable, Optional

from tracer.ruleset.match.facts import (
    PacketFacts,
    Tri,
    _addr_in,
    _and,
    _any,
    _ct_in,
    _flag_bits,
    _icmp_is,
    _iface_is,
    _int,
    _not,
    _packet_flags,
    _port_in,
    _proto_is,
)
from tracer.ruleset.match.iptables import _ipt_target_action
from tracer.model import Proto

# ---------------------------------------------------------------------------------------------
# nft: `meta l4proto tcp ct state new tcp dport 22 counter accept`

# A quoted string (kept whole, quotes included), a brace, or a run of anything else.
_NFT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}]|[^\s{}"]+')
_NFT_EQ = ("", "==", "eq")
_NFT_NE = ("!=", "ne", "!")
_NFT_ORDER: dict[str, Callable[[int, int], bool]] = {
    "<": operator.lt, "lt": operator.lt, ">": operator.gt, "gt": operator.gt,
    "<=": operator.le, "le": operator.le, ">=": operator.ge, "ge": operator.ge,
}
_NFT_OPS = frozenset(_NFT_EQ[1:] + _NFT_NE) | frozenset(_NFT_ORDER)
# Verdicts and the statements that end a rule's evaluation (nat decides the packet's fate too).
_NFT_TERMINAL = {"accept": "accept", "drop": "drop", "reject": "reject", "return": "return",
                 "continue": "continue", "queue": "other", "dnat": "dnat", "snat": "snat",
                 "masquerade": "masquerade", "redirect": "redirect", "tproxy": "other",
                 "synproxy": "other", "jump": "jump", "goto": "goto", "vmap": "other"}


class _Unparsed(Exception):
    """The rest of the rule cannot be followed: stop, the answer is at best unknown."""


class _Cursor:
    def __init__(self, text: str) -> None:
        self.toks = _NFT_TOKEN.findall(text)
        self.i = 0

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ""

    def take(self) -> str:
        t = self.peek()
        self.i += 1
        return t

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def op(self) -> str:
        return self.take() if self.peek() in _NFT_OPS else ""

    def values(self) -> Optional[list[str]]:
        """One value, or an anonymous set's elements; None for a named set (`@blocked`)."""
        t = self.take()
        if t in ("", ".", "}", "vmap", "map") or self.peek() == ".":
            raise _Unparsed  # missing value, verdict map, or a concatenation `a . b`
        if t == "{":
            parts = []
            while not self.done() and self.peek() != "}":
                parts.append(self.take())
            self.take()
            return [e.strip() for e in " ".join(parts).split(",") if e.strip()]
        return None if t.startswith("@") else [t]


def _unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def _cmp(op: str, values: Optional[list[str]], test: Callable[[str], Tri]) -> Tri:
    if values is None:
        return None  # named set: its elements are not in the rule text
    if op in _NFT_EQ:
        return _any(test(v) for v in values)
    if op in _NFT_NE:
        return _not(_any(test(v) for v in values))
    return None


def _nft_matches(text: str, pkt: PacketFacts) -> Tri:
    c = _Cursor(text)
    results: list[Tri] = []
    try:
        while not c.done() and not _nft_at_terminal(c):
            results.append(_nft_expr(c, pkt))
    except _Unparsed:
        results.append(None)
    return _and(results)


def _nft_at_terminal(c: _Cursor) -> bool:
    t = c.peek()
    return t in _NFT_TERMINAL or (t == "xt" and c.peek(1) == "target")


def _nft_expr(c: _Cursor, pkt: PacketFacts) -> Tri:
    t = c.take()
    if t in ("ip", "ip6"):
        return _nft_l3(t, c, pkt)
    if t in ("tcp", "udp", "th", "udplite", "sctp", "dccp"):
        return _nft_l4(t, c, pkt)
    if t in ("icmp", "icmpv6"):
        key = c.take()
        if key == "type":
            op, vals = c.op(), c.values()
            return _cmp(op, vals, lambda v: _icmp_is(v, pkt, v6=t == "icmpv6"))
        return _and([_icmp_is("any", pkt, v6=t == "icmpv6"), _nft_other(c)])
    if t == "meta":
        return _nft_meta(c.take(), c, pkt)
    if t in ("iifname", "oifname", "iif", "oif", "mark", "skuid", "skgid", "nftrace"):
        return _nft_meta(t, c, pkt)  # meta keys nft prints without `meta`
    if t == "ct":
        return _nft_ct(c, pkt)
    if t == "counter":
        c.i += 4 if c.peek() == "packets" else 2 if c.peek() == "name" else 0
        return True
    if t == "log":
        _skip_log(c)
        return True
    if t == "comment":
        c.take()
        return True
    if t == "notrack":
        return True
    if t == "limit" and c.peek() == "rate":
        return _nft_limit(c)
    raise _Unparsed


def _nft_other(c: _Cursor) -> Tri:
    """A field fwtrace does not model (`ip dscp 0x04`), or a `set` statement (always true)."""
    if c.peek() == "set":
        c.take()
        c.values()
        return True
    c.op()
    c.values()
    return None


def _nft_l3(proto: str, c: _Cursor, pkt: PacketFacts) -> Tri:
    # In inet/bridge/netdev tables `ip ...` implies an IPv4 packet (nft adds the dependency).
    version = pkt.family == (4 if proto == "ip" else 6)
    key = c.take()
    if key in ("saddr", "daddr"):
        addr = pkt.src if key == "saddr" else pkt.dst
        op, vals = c.op(), c.values()
        return _and([version, _cmp(op, vals, lambda v: _addr_in(v, addr))])
    if (proto, key) in (("ip", "protocol"), ("ip6", "nexthdr")):
        op, vals = c.op(), c.values()
        return _and([version, _cmp(op, vals, lambda v: _proto_is(v, pkt))])
    return _and([version, _nft_other(c)])


def _nft_l4(proto: str, c: _Cursor, pkt: PacketFacts) -> Tri:
    # `th` reads the transport header without a protocol check: for ICMP its "ports" are the
    # type/code and checksum fields, which fwtrace does not model.
    l4: Tri = {"tcp": pkt.proto is Proto.TCP, "udp": pkt.proto is Proto.UDP,
               "th": None if pkt.proto is Proto.ICMP else True}.get(proto, False)
    key = c.take()
    if key in ("dport", "sport"):
        port = pkt.dport if key == "dport" else pkt.sport
        op, vals = c.op(), c.values()
        if l4 is None:
            return None
        if op in _NFT_ORDER:
            n = _int(vals[0]) if vals and len(vals) == 1 else None
            return _and([l4, None if n is None else _NFT_ORDER[op](port, n)])
        return _and([l4, _cmp(op, vals, lambda v: _port_in(v, port, "-"))])
    if proto == "tcp" and key == "flags":
        return _and([l4, _nft_tcp_flags(c, pkt)])
    return _and([l4, _nft_other(c)])


def _nft_tcp_flags(c: _Cursor, pkt: PacketFacts) -> Tri:
    # Forms: `tcp flags syn` (any of), `tcp flags == syn` (exactly), `tcp flags ! syn,ack`
    # (none of), `tcp flags syn / syn,ack` and `tcp flags & (syn|ack) == syn` (masked).
    have = _packet_flags(pkt)
    if c.peek() == "&":
        c.take()
        mask = _flag_bits(c.take())
        op, vals = c.op(), c.values()
        want = _flag_bits(vals[0]) if vals and len(vals) == 1 else None
    else:
        op, vals = c.op(), c.values()
        mask = None
        if c.peek() == "/":
            c.take()
            mask = _flag_bits(c.take())
        if vals is None or have is None:
            return None
        if mask is None and len(vals) > 1:  # set: the whole flags byte is one of these
            return _cmp(op, vals, lambda v: _eq_opt(have, _flag_bits(v)))
        want = _flag_bits(vals[0]) if len(vals) == 1 else None
        if mask is None and want is not None and op in ("", "!"):
            return (have & want) != 0 if op == "" else (have & want) == 0
        mask = 0xFF if mask is None else mask
    if have is None or mask is None or want is None:
        return None
    hit = (have & mask) == want
    return hit if op in _NFT_EQ else (not hit) if op in _NFT_NE else None


def _eq_opt(a: int, b: Optional[int]) -> Tri:
    return None if b is None else a == b


def _nft_meta(key: str, c: _Cursor, pkt: PacketFacts) -> Tri:
    if c.peek() == "set":
        return _nft_other(c)
    if key in ("iifname", "oifname", "iif", "oif"):
        name = pkt.iif if key.startswith("i") else pkt.oif
        op, vals = c.op(), c.values()
        return _cmp(op, vals, lambda v: _nft_iface(v, name))
    if key == "l4proto":
        op, vals = c.op(), c.values()
        return _cmp(op, vals, lambda v: _proto_is(v, pkt))
    if key == "nfproto":
        op, vals = c.op(), c.values()
        return _cmp(op, vals, lambda v: {"ipv4": pkt.family == 4, "ipv6": pkt.family == 6}.get(v))
    return _nft_other(c)


def _nft_iface(value: str, name: Optional[str]) -> Tri:
    if not value.startswith('"') and _int(value) is not None:
        return None  # an interface index (iif/oif of a vanished device)
    v = _unquote(value)
    if v.endswith("\\*"):  # an escaped star is a literal `*`
        return None if name is None else name == v[:-2] + "*"
    return _iface_is(v, name, "*")


def _nft_ct(c: _Cursor, pkt: PacketFacts) -> Tri:
    key = c.take()
    if key == "state":
        op, vals = c.op(), c.values()
        if vals is None:
            return None
        hit = _ct_in((s for v in vals for s in v.split(",")), pkt)
        return hit if op in _NFT_EQ else _not(hit) if op in _NFT_NE else None
    if key in ("original", "reply"):
        raise _Unparsed  # `ct original ip saddr ...`: direction-qualified, not modelled
    return _nft_other(c)


def _skip_log(c: _Cursor) -> None:
    # log [prefix "x"] [level warn] [flags tcp sequence,options] [group 1] [snaplen 64] ...
    while c.peek() in ("prefix", "level", "group", "snaplen", "queue-threshold", "flags"):
        if c.take() == "flags" and c.peek() in ("tcp", "ip"):
            c.take()
        c.take()


def _nft_limit(c: _Cursor) -> Tri:
    # limit rate [over] 10/second [burst 5 packets]; limit rate 1 mbytes/second
    c.take()
    over = c.peek() == "over"
    if over:
        c.take()
    for _ in range(3):
        if "/" in c.take():
            break
    if c.peek() == "burst":
        c.i += 3
    # Under the rate a single probe passes; `over` matches only once the rate is exceeded.
    return None if over else True


def _nft_action(text: str) -> str:
    c = _Cursor(text)
    depth = 0
    prev = ""
    while not c.done():
        t = c.take()
        depth += (t == "{") - (t == "}")
        # `ct status dnat` is a match, not the dnat statement.
        if depth == 0 and prev not in ("status", "set") and prev not in _NFT_OPS:
            if t in ("jump", "goto"):
                return f"{t} {_unquote(c.peek())}"
            if t in _NFT_TERMINAL:
                return _NFT_TERMINAL[t]
            if t == "xt" and c.peek() == "target":
                return _ipt_target_action(_unquote(c.peek(1)))
        prev = t
    return "continue"
