"""Is a rule a catch-all for a service, or a targeted block? Pure: no I/O.

A catch-all matches every packet of the probed flow no matter which client sends it: it may
look at the protocol, the port, the arrival interface and ordinary conntrack states, nothing
else. Everything that narrows by client or by circumstance (an address, a set or ipset, an
xt_recent list, a rate, a connection count, the time, the payload, a mark, conntrack INVALID /
UNTRACKED) makes it a targeted block: an ACCEPT moved above it would switch its protection off.
Anything fwtrace does not know counts as narrowing, so the answer errs on the protective side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tracer.ruleset.match.facts import _iface_is
from tracer.ruleset.match.iptables import _ipt_split, _IptOption
from tracer.ruleset.match.nft import _NFT_TOKEN
from tracer.model import Rule


@dataclass(frozen=True)
class Narrowing:
    """One criterion that makes a rule match only some clients or some moments."""

    kind: str  # source, destination, set, recent, limit, hashlimit, connlimit, time, string, mark,
    #            interface, ct-state, sport, unknown
    text: str  # the criterion as the rule writes it: `-s 203.0.113.0/24`, `ip saddr @blocked`
    name: Optional[str] = None  # set / recent list / hashlimit name
    value: Optional[str] = None  # address spec, rate, count, interface, states
    seconds: Optional[int] = None  # xt_recent window
    hitcount: Optional[int] = None  # xt_recent hits
    negated: bool = False
    direction: str = "src"  # for sets: which address the set is looked up with


# Matches that only restate the service: protocol, ports, flags, ICMP type, comments.
_IPT_SERVICE_MODULES = frozenset({"tcp", "udp", "multiport", "comment", "icmp", "icmp6", "state", "conntrack"})
_IPT_KIND = {"limit": "limit", "hashlimit": "hashlimit", "connlimit": "connlimit", "time": "time",
             "string": "string", "mark": "mark", "connmark": "mark", "set": "set", "recent": "recent",
             "iprange": "source", "mac": "source", "u32": "unknown", "bpf": "unknown"}
_NARROW_STATES = {"invalid", "untracked"}


def narrowings(rule: Rule, iif: Optional[str] = None, oif: Optional[str] = None) -> tuple[Narrowing, ...]:
    """What narrows `rule` beyond the service, for a packet that arrived on `iif` (left by `oif`)."""
    if rule.ipt is not None:
        return _ipt(rule.ipt, iif, oif)
    return _nft(rule.text, iif, oif)


def is_catch_all(rule: Rule, iif: Optional[str] = None, oif: Optional[str] = None) -> bool:
    return not narrowings(rule, iif, oif)


# ---------------------------------------------------------------------------------------------
# iptables


def _opt_text(o: _IptOption) -> str:
    return " ".join((["!"] if o.negated else []) + [o.name, *o.args])


def _ipt(line: str, iif: Optional[str], oif: Optional[str]) -> tuple[Narrowing, ...]:
    options, _ = _ipt_split(line)
    out: list[Narrowing] = []
    modules: dict[str, list[_IptOption]] = {}
    for o in options:
        if o.name in ("-m", "--match"):
            continue
        if o.module:
            modules.setdefault(o.module, []).append(o)
        n = _ipt_option(o, iif, oif)
        if n is not None:
            out.append(n)
    for module, opts in modules.items():
        if module not in _IPT_SERVICE_MODULES:
            out.append(_ipt_module(module, opts))
    # `-m foo` with no option of its own (`-m socket`) still restricts.
    named = {o.args[0] for o in options if o.name in ("-m", "--match") and o.args}
    out += [Narrowing("unknown", f"-m {m}") for m in sorted(named - set(modules) - _IPT_SERVICE_MODULES)]
    return tuple(out)


def _ipt_option(o: _IptOption, iif: Optional[str], oif: Optional[str]) -> Optional[Narrowing]:
    a = o.args[0] if o.args else ""
    text = _opt_text(o)
    if o.name in ("-s", "--source", "--src"):
        return Narrowing("source", text, value=a, negated=o.negated)
    if o.name in ("--sport", "--source-port", "--sports", "--source-ports"):
        # the client's port (kernel selftests' port-shadowing mitigation drops one): not the service
        return Narrowing("sport", text, value=a, negated=o.negated)
    if o.name in ("-d", "--destination", "--dst"):
        return Narrowing("destination", text, value=a, negated=o.negated)
    if o.name in ("-i", "--in-interface", "-o", "--out-interface"):
        name = iif if o.name.startswith("-i") or o.name == "--in-interface" else oif
        hit = _iface_is(a, name, "+")
        if hit is None or hit == o.negated:  # not the packet's own interface
            return Narrowing("interface", text, value=a, negated=o.negated)
        return None
    if (o.module, o.name) in (("state", "--state"), ("conntrack", "--ctstate")):
        states = {s.lower() for s in a.split(",")}
        if states & _NARROW_STATES and not o.negated:
            return Narrowing("ct-state", text, value=a)
    return None


def _ipt_module(module: str, opts: list[_IptOption]) -> Narrowing:
    text = f"-m {module} " + " ".join(_opt_text(o) for o in opts)
    args = {o.name: (o.args[0] if o.args else "") for o in opts}
    kind = _IPT_KIND.get(module, "unknown")
    if module == "conntrack":  # --ctorigsrc and friends: addresses of the connection
        kind = "source"
    if module == "recent":
        return Narrowing("recent", text.strip(), name=args.get("--name", "DEFAULT"),
                         seconds=_num(args.get("--seconds")), hitcount=_num(args.get("--hitcount")))
    if module == "set":
        o = next((o for o in opts if o.name == "--match-set"), None)
        name = o.args[0] if o and o.args else None
        direction = o.args[1] if o and len(o.args) > 1 else "src"
        return Narrowing("set", text.strip(), name=name, negated=bool(o and o.negated), direction=direction)
    value = (args.get("--limit") or args.get("--hashlimit-above") or args.get("--hashlimit-upto")
             or args.get("--hashlimit") or args.get("--connlimit-above") or args.get("--connlimit-upto"))
    return Narrowing(kind, text.strip(), name=args.get("--hashlimit-name"), value=value)


def _num(s: Optional[str]) -> Optional[int]:
    return int(s) if s is not None and s.isdigit() else None


# ---------------------------------------------------------------------------------------------
# nft

_L4 = frozenset({"tcp", "udp", "th", "udplite", "sctp", "dccp", "icmp", "icmpv6"})
_L3 = frozenset({"ip", "ip6", "ether", "arp", "vlan"})
_SERVICE_KEYS = frozenset({"l4proto", "nfproto", "protocol", "nexthdr"})
_KEY_KIND = {"mark": "mark", "hour": "time", "day": "time", "time": "time", "count": "connlimit"}
_NFT_VERDICTS = frozenset({"accept", "drop", "reject", "return", "jump", "goto", "queue", "continue",
                           "dnat", "snat", "masquerade", "redirect", "tproxy", "synproxy"})
_NFT_OPS = frozenset({"==", "!=", "eq", "ne", "!", "<", ">", "<=", ">=", "lt", "gt", "le", "ge", "over"})
_NEGATIONS = ("!=", "ne", "!")


def _nft(text: str, iif: Optional[str], oif: Optional[str]) -> tuple[Narrowing, ...]:
    toks = _NFT_TOKEN.findall(text)
    out: list[Narrowing] = []
    i = 0
    while i < len(toks) and toks[i] not in _NFT_VERDICTS:
        i, n = _nft_expr(toks, i, iif, oif)
        if n is not None:
            out.append(n)
    return tuple(out)


def _skip_words(toks: list[str], i: int, words: tuple[str, ...], args: int = 1) -> int:
    while i < len(toks) and toks[i] in words:
        i += 1 + args
    return i


def _nft_value(toks: list[str], i: int) -> tuple[str, str, int]:
    """(operator, value, next index): a word, `@set`, `{ ... }`, with `/ mask` or `. concatenation`."""
    op = ""
    if i < len(toks) and toks[i] in _NFT_OPS:
        op, i = toks[i], i + 1
    parts: list[str] = []
    while i < len(toks):
        if toks[i] == "{":
            j = toks.index("}", i) if "}" in toks[i:] else len(toks) - 1
            parts.append(" ".join(toks[i : j + 1]))
            i = j + 1
        else:
            parts.append(toks[i])
            i += 1
        if i < len(toks) and toks[i] in ("/", ".", "&", "|", "-"):  # mask, concatenation, bit ops, range
            parts.append(toks[i])
            i += 1
            continue
        break
    return op, " ".join(parts), i


def _nft_expr(toks: list[str], i: int, iif: Optional[str], oif: Optional[str]) -> tuple[int, Optional[Narrowing]]:
    start, t = i, toks[i]
    if t == "counter":
        return _skip_words(toks, i + 1, ("packets", "bytes", "name")), None
    if t == "log":
        return _skip_words(toks, i + 1, ("prefix", "level", "group", "snaplen", "queue-threshold", "flags")), None
    if t == "comment":
        return i + 2, None
    if t == "notrack":
        return i + 1, None
    if t == "limit":
        _, value, j = _nft_value(toks, i + 2 if i + 1 < len(toks) and toks[i + 1] == "rate" else i + 1)
        while j < len(toks) and toks[j] not in _NFT_VERDICTS and toks[j] not in _L3 | _L4 | {"ct", "meta", "counter", "log"}:
            value, j = value + " " + toks[j], j + 1  # `10/second burst 5 packets`, `over 1 mbytes/second`
        return j, Narrowing("limit", " ".join(toks[start:j]), value=value)
    if t in ("add", "update", "meter", "set") and i + 1 < len(toks) and toks[i + 1].startswith("@") or t == "meter":
        j = toks.index("}", i) + 1 if "}" in toks[i:] else len(toks)
        return j, Narrowing("hashlimit", " ".join(toks[start:j]), name=toks[i + 1].lstrip("@"))
    if t == "meta" and i + 1 < len(toks):
        i, t = i + 1, toks[i + 1]
    field = ""
    if t in _L3 | _L4 or t == "ct":
        field, i = (toks[i + 1] if i + 1 < len(toks) else ""), i + 2
        if t == "ct" and field in ("original", "reply"):  # `ct original ip saddr 10.0.0.1`
            field, i = "original", _nft_value(toks, i + 2)[2]
            return i, Narrowing("source", " ".join(toks[start:i]))
    else:
        i += 1
    if i < len(toks) and toks[i] == ".":  # a concatenation `ip saddr . tcp dport @allowed`
        j = i
        while j < len(toks) and not (toks[j].startswith("@") or toks[j] == "{") and toks[j] not in _NFT_VERDICTS:
            j += 1
        op, value, i = _nft_value(toks, j)
        if t in ("ip", "ip6") and field in ("saddr", "daddr") or "saddr" in toks[start:j] or "daddr" in toks[start:j]:
            return i, Narrowing("set", " ".join(toks[start:i]), name=value.lstrip("@") if value.startswith("@") else None)
        return i, _classify(t, field, op, value, " ".join(toks[start:i]), iif, oif)
    op, value, i = _nft_value(toks, i)
    return i, _classify(t, field, op, value, " ".join(toks[start:i]), iif, oif)


def _classify(key: str, field: str, op: str, value: str, text: str, iif: Optional[str],
              oif: Optional[str]) -> Optional[Narrowing]:
    negated = op in _NEGATIONS
    if key in _L4 and field == "sport":  # the client's port: a block of some flows (port shadowing), not the service
        return Narrowing("sport", text, value=value, negated=negated)
    if key in _L4 or key in _SERVICE_KEYS or (key, field) in (("ip", "protocol"), ("ip6", "nexthdr"), ("ip", "version")):
        return None
    if key in ("ip", "ip6") and field in ("saddr", "daddr"):
        if "@" in value:
            return Narrowing("set", text, name=value.split("@")[-1].split()[0], negated=negated,
                             direction="src" if field == "saddr" else "dst")
        return Narrowing("source" if field == "saddr" else "destination", text, value=value, negated=negated)
    if key in ("iifname", "oifname", "iif", "oif"):
        name = iif if key.startswith("i") else oif
        hit = _iface_is(value.strip('"'), name, "*") if not value.startswith("{") else None
        if hit is None or hit == negated:
            return Narrowing("interface", text, value=value.strip('"'), negated=negated)
        return None
    if key == "ct" and field == "state":
        states = set(re.split(r"[\s,{}]+", value.lower())) - {""}
        return Narrowing("ct-state", text, value=value) if states & _NARROW_STATES and not negated else None
    if key == "ct":
        return Narrowing(_KEY_KIND.get(field, "unknown"), text, value=value)
    if key == "ether":
        return Narrowing("source", text, value=value, negated=negated)
    return Narrowing(_KEY_KIND.get(key, "unknown"), text, value=value, negated=negated)
