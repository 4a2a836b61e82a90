"""Would this rule match this packet? Answered without the kernel, to find shadowed rules.

The answer is three-valued: True (certainly matches), False (certainly not), None (the rule
uses something fwtrace does not understand, or the packet fact it needs is unknown). False
wins over None: the criteria of a rule are ANDed, so one known miss is enough.

iptables-nft rules are judged on their `iptables -S` form (`rule.ipt`), native rules on the
text nft prints. Pure: no I/O.
"""
from __future__ import annotations

import ipaddress
import operator
import re
import shlex
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from tracer.model import IPAddress, PacketSpec, Proto, Rule

Tri = Optional[bool]


@dataclass(frozen=True)
class PacketFacts:
    """What is known about a packet where a rule looks at it; None means not known."""

    family: int  # 4 or 6
    proto: Proto
    src: IPAddress
    dst: IPAddress
    sport: int  # ICMP echo: identifier
    dport: int  # ICMP echo: sequence number
    tcp_flags: str = "S"  # scapy letters: "S", "SA", "A", "FA", "R"
    iif: Optional[str] = None
    oif: Optional[str] = None
    ct_state: Optional[str] = None  # "new", "established", "related", "invalid", "untracked"
    icmp_type: Optional[int] = None

    @classmethod
    def from_spec(
        cls,
        spec: PacketSpec,
        iif: Optional[str] = None,
        oif: Optional[str] = None,
        ct_state: Optional[str] = None,
    ) -> "PacketFacts":
        # Probes of Proto.ICMP are echo requests: type 8 (ICMP) or 128 (ICMPv6).
        icmp = (8 if spec.family == 4 else 128) if spec.proto is Proto.ICMP else None
        return cls(spec.family, spec.proto, spec.src, spec.dst, spec.sport, spec.dport,
                   spec.flags, iif, oif, ct_state, icmp)


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


# ---------------------------------------------------------------------------------------------
# Three-valued logic and packet facts shared by both syntaxes


def _and(results: Iterable[Tri]) -> Tri:
    unknown = False
    for r in results:
        if r is False:
            return False
        unknown = unknown or r is None
    return None if unknown else True


def _any(results: Iterable[Tri]) -> Tri:
    unknown = False
    for r in results:
        if r is True:
            return True
        unknown = unknown or r is None
    return None if unknown else False


def _not(r: Tri) -> Tri:
    return None if r is None else not r


# Which packets a table of each family sees: bridge and netdev see both IP versions (and more),
# arp tables see no IP packet at all.
_FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6), "bridge": (4, 6),
                    "netdev": (4, 6), "arp": ()}


def _family_sees(family: str, pkt: PacketFacts) -> Tri:
    versions = _FAMILY_VERSIONS.get(family)
    return None if versions is None else pkt.family in versions


def _int(s: str) -> Optional[int]:
    if re.fullmatch(r"[0-9]{1,10}", s):
        return int(s)
    if re.fullmatch(r"0x[0-9a-fA-F]{1,8}", s):
        return int(s, 16)
    return None


# /etc/protocols names that may appear; any of them except ours means "certainly not this probe".
_PROTO_NUMBERS = {
    "icmp": 1, "igmp": 2, "ipip": 4, "ipencap": 4, "tcp": 6, "egp": 8, "udp": 17, "dccp": 33,
    "ipv6": 41, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "ospf": 89,
    "pim": 103, "ipcomp": 108, "vrrp": 112, "l2tp": 115, "sctp": 132, "udplite": 136,
}


def _l4_number(pkt: PacketFacts) -> int:
    if pkt.proto is Proto.TCP:
        return 6
    if pkt.proto is Proto.UDP:
        return 17
    return 1 if pkt.family == 4 else 58


def _proto_is(value: str, pkt: PacketFacts) -> Tri:
    v = value.lower()
    n = _int(v)
    if n is None:
        n = _PROTO_NUMBERS.get(v)
    return None if n is None else n == _l4_number(pkt)


def _port_in(spec: str, port: int, sep: str) -> Tri:
    """`22`, or a range `1000:2000` (iptables, sep ":") / `1000-2000` (nft, sep "-")."""
    lo, found, hi = spec.partition(sep)
    if not found:
        n = _int(spec)
        return None if n is None else port == n
    a = _int(lo) if lo else 0
    b = _int(hi) if hi else 65535
    return None if a is None or b is None else a <= port <= b


def _addr_in(spec: str, addr: IPAddress) -> Tri:
    """A prefix `10.0.0.0/8`, an address, or a range `10.0.0.1-10.0.0.9`."""
    try:
        if "-" in spec:
            lo, hi = (ipaddress.ip_address(s) for s in spec.split("-", 1))
            if lo.version != addr.version or hi.version != addr.version:
                return False
            return lo <= addr <= hi  # type: ignore[operator]  # same version checked above
        net = ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return None
    return net.version == addr.version and addr in net


def _iface_is(pattern: str, name: Optional[str], wildcard: str) -> Tri:
    """iptables `eth+` / nft `"eth*"`: a trailing wildcard is a prefix match."""
    if name is None:
        return None
    if pattern.endswith(wildcard):
        return name.startswith(pattern[: -len(wildcard)])
    return name == pattern


_CT_STATES = frozenset({"new", "established", "related", "invalid", "untracked"})


def _ct_in(states: Iterable[str], pkt: PacketFacts) -> Tri:
    if pkt.ct_state is None:
        return None
    wanted = {s.strip().lower() for s in states}
    if pkt.ct_state.lower() in wanted:
        return True
    # conntrack also knows SNAT/DNAT pseudo-states, which a plain state name cannot rule out.
    return False if wanted <= _CT_STATES else None


_TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20,
              "ecn": 0x40, "ece": 0x40, "cwr": 0x80,
              "all": 0x3F, "none": 0x00}  # iptables ALL = FIN,SYN,RST,PSH,ACK,URG
_SCAPY_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                "C": 0x80}


def _packet_flags(pkt: PacketFacts) -> Optional[int]:
    bits = 0
    for letter in pkt.tcp_flags:
        if letter not in _SCAPY_FLAGS:
            return None
        bits |= _SCAPY_FLAGS[letter]
    return bits


def _flag_bits(spec: str) -> Optional[int]:
    """`FIN,SYN,RST,ACK` (iptables), `syn,ack` or `(syn|ack)` (nft)."""
    bits = 0
    for name in re.split(r"[,|]", spec.strip("()").lower()):
        n = _TCP_FLAGS.get(name.strip(), _int(name.strip()))
        if n is None:
            return None
        bits |= n
    return bits


# Names both tools accept, as (type, code); code None means any code.
_ICMP4 = {
    "any": (-1, None), "echo-reply": (0, None), "pong": (0, None),
    "destination-unreachable": (3, None), "network-unreachable": (3, 0),
    "host-unreachable": (3, 1), "protocol-unreachable": (3, 2), "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4), "source-quench": (4, None), "redirect": (5, None),
    "echo-request": (8, None), "ping": (8, None), "router-advertisement": (9, None),
    "router-solicitation": (10, None), "time-exceeded": (11, None), "ttl-exceeded": (11, None),
    "parameter-problem": (12, None), "timestamp-request": (13, None),
    "timestamp-reply": (14, None), "info-request": (15, None), "info-reply": (16, None),
    "address-mask-request": (17, None), "address-mask-reply": (18, None),
}
_ICMP6 = {
    "any": (-1, None), "destination-unreachable": (1, None), "packet-too-big": (2, None),
    "time-exceeded": (3, None), "ttl-exceeded": (3, None), "parameter-problem": (4, None),
    "echo-request": (128, None), "echo-reply": (129, None), "mld-listener-query": (130, None),
    "mld-listener-report": (131, None), "mld-listener-done": (132, None),
    "mld-listener-reduction": (132, None), "nd-router-solicit": (133, None),
    "router-solicitation": (133, None), "nd-router-advert": (134, None),
    "router-advertisement": (134, None), "nd-neighbor-solicit": (135, None),
    "neighbour-solicitation": (135, None), "neighbor-solicitation": (135, None),
    "nd-neighbor-advert": (136, None), "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None), "nd-redirect": (137, None), "redirect": (137, None),
    "mld2-listener-report": (143, None),
}
_ECHO_TYPES = (0, 8, 128, 129)  # echo request/reply always carry code 0


def _icmp_is(spec: str, pkt: PacketFacts, v6: bool) -> Tri:
    """`8`, `3/1` or a name (`echo-request`); the ICMP (v6: ICMPv6) protocol is implied."""
    if pkt.proto is not Proto.ICMP or (pkt.family == 6) != v6:
        return False
    kind, sep, code_s = spec.lower().partition("/")
    known = (_ICMP6 if v6 else _ICMP4).get(kind)
    itype, code = known if known else (_int(kind), None)
    if sep:
        code = _int(code_s)
        if code is None:
            return None
    if itype == -1:
        return True
    if itype is None or pkt.icmp_type is None:
        return None
    if itype != pkt.icmp_type:
        return False
    if code is None:
        return True
    return code == 0 if pkt.icmp_type in _ECHO_TYPES else None


# ---------------------------------------------------------------------------------------------
# iptables: `-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT`

_IPT_TARGET = ("-j", "--jump", "-g", "--goto")
_IPT_NO_ARG = ("--syn", "-f", "--fragment", "-4", "--ipv4", "-6", "--ipv6")
# Options taking exactly one argument even when it looks like an option (`--comment -x`).
_IPT_ONE_ARG = frozenset({
    "-p", "--protocol", "-s", "--source", "--src", "-d", "--destination", "--dst", "-i",
    "--in-interface", "-o", "--out-interface", "--dport", "--destination-port", "--sport",
    "--source-port", "--dports", "--destination-ports", "--sports", "--source-ports", "--ports",
    "--state", "--ctstate", "--comment", "--icmp-type", "--icmpv6-type", "--limit",
    "--limit-burst", "-m", "--match",
})
_IPT_MODULES = frozenset({"tcp", "udp", "multiport", "state", "conntrack", "comment", "icmp",
                          "icmp6", "limit"})


@dataclass(frozen=True)
class _IptOption:
    negated: bool
    module: str  # the `-m` it follows, "" before any
    name: str
    args: tuple[str, ...]


def _ipt_split(line: str) -> tuple[list[_IptOption], list[str]]:
    """The match options of an `iptables -S` line, and the target words (`-j X ...`)."""
    try:
        toks = shlex.split(line)
    except ValueError:  # unbalanced quote
        toks = line.split()
    if toks[:1] in (["-A"], ["--append"], ["-I"], ["--insert"]):
        toks = toks[2:]
    options: list[_IptOption] = []
    module, negated, i = "", False, 0
    while i < len(toks):
        name = toks[i]
        i += 1
        if name == "!":
            negated = True
            continue
        if name in _IPT_TARGET:
            return options, toks[i - 1 :]
        if name in _IPT_NO_ARG:
            n = 0
        elif name == "--tcp-flags":
            n = 2
        elif name in _IPT_ONE_ARG:
            n = 1
        else:  # unknown option: its arguments run up to the next option
            n = 0
            while i + n < len(toks) and toks[i + n] != "!" and not toks[i + n].startswith("-"):
                n += 1
        args = tuple(toks[i : i + n])
        i += n
        if name in ("-m", "--match"):
            module = args[0] if args else ""
        options.append(_IptOption(negated, module, name, args))
        negated = False
    return options, []


def _ipt_matches(line: str, pkt: PacketFacts) -> Tri:
    options, _ = _ipt_split(line)
    results = []
    for o in options:
        r = _ipt_option(o, pkt)
        results.append(_not(r) if o.negated else r)
    return _and(results)


def _ipt_option(o: _IptOption, pkt: PacketFacts) -> Tri:
    a = o.args[0] if o.args else ""
    name, module = o.name, o.module
    if name in ("-m", "--match"):
        # A module without options (`-m socket`) still restricts: unknown unless understood.
        return True if a in _IPT_MODULES else None
    if name in ("-p", "--protocol"):
        return True if a.lower() in ("all", "0") else _proto_is(a, pkt)
    if name in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
        addr = pkt.src if name in ("-s", "--source", "--src") else pkt.dst
        return _any(_addr_in(x, addr) for x in a.split(","))
    if name in ("-i", "--in-interface"):
        return _iface_is(a, pkt.iif, "+")
    if name in ("-o", "--out-interface"):
        return _iface_is(a, pkt.oif, "+")
    if name in ("-f", "--fragment"):
        return False  # matches second and later fragments; probes are never fragmented
    if name in ("-4", "--ipv4", "-6", "--ipv6"):
        return pkt.family == (4 if name in ("-4", "--ipv4") else 6)
    if module in ("tcp", "udp", ""):
        return _ipt_tcpudp(o, pkt)
    if module == "multiport":
        return _ipt_multiport(o, pkt)
    if (module, name) in (("state", "--state"), ("conntrack", "--ctstate")):
        return _ct_in(a.split(","), pkt)
    if module in ("comment", "limit"):
        return True  # a rate limit is taken as matching: the probe is one packet
    if (module, name) in (("icmp", "--icmp-type"), ("icmp6", "--icmpv6-type")):
        return _icmp_is(a, pkt, v6=module == "icmp6")
    return None


def _ipt_tcpudp(o: _IptOption, pkt: PacketFacts) -> Tri:
    # "" = options given right after `-p tcp` without `-m tcp` (iptables loads it implicitly).
    l4 = {"tcp": (Proto.TCP,), "udp": (Proto.UDP,), "": (Proto.TCP, Proto.UDP)}[o.module]
    a = o.args[0] if o.args else ""
    if o.name in ("--dport", "--destination-port", "--sport", "--source-port"):
        port = pkt.dport if o.name in ("--dport", "--destination-port") else pkt.sport
        return _and([pkt.proto in l4, _port_in(a, port, ":")])
    if o.name == "--syn" and o.module != "udp":
        return _and([pkt.proto is Proto.TCP, _flags_equal(pkt, "FIN,SYN,RST,ACK", "SYN")])
    if o.name == "--tcp-flags" and o.module != "udp" and len(o.args) == 2:
        return _and([pkt.proto is Proto.TCP, _flags_equal(pkt, o.args[0], o.args[1])])
    return None


def _flags_equal(pkt: PacketFacts, mask_s: str, comp_s: str) -> Tri:
    have, mask, comp = _packet_flags(pkt), _flag_bits(mask_s), _flag_bits(comp_s)
    if have is None or mask is None or comp is None:
        return None
    return (have & mask) == comp


def _ipt_multiport(o: _IptOption, pkt: PacketFacts) -> Tri:
    ports = {"--dports": (pkt.dport,), "--destination-ports": (pkt.dport,),
             "--sports": (pkt.sport,), "--source-ports": (pkt.sport,),
             "--ports": (pkt.sport, pkt.dport)}.get(o.name)
    if ports is None or not o.args:
        return None
    specs = o.args[0].split(",")
    hit = _any(_port_in(s, p, ":") for s in specs for p in ports)
    return _and([pkt.proto in (Proto.TCP, Proto.UDP), hit])


# Targets that do not end the chain walk: the packet goes on to the next rule.
_IPT_CONTINUE = frozenset({
    "LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CONNSECMARK", "SECMARK", "TRACE", "CT",
    "NOTRACK", "TCPMSS", "TOS", "DSCP", "TTL", "HL", "CLASSIFY", "ECN", "IDLETIMER", "LED",
    "RATEEST", "SET", "AUDIT", "CHECKSUM", "TEE", "TCPOPTSTRIP", "HMARK", "CLUSTERIP",
})
_IPT_ACTIONS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return",
                "DNAT": "dnat", "SNAT": "snat", "MASQUERADE": "masquerade",
                "REDIRECT": "redirect"}
_IPT_OTHER = frozenset({"QUEUE", "NFQUEUE", "TPROXY", "SYNPROXY", "NETMAP"})


def _ipt_target_action(target: str) -> str:
    if target in _IPT_ACTIONS:
        return _IPT_ACTIONS[target]
    if target in _IPT_CONTINUE:
        return "continue"
    if target in _IPT_OTHER:
        return "other"
    return f"jump {target}"  # anything else is taken to be a user-defined chain


def _ipt_action(line: str) -> str:
    _, target = _ipt_split(line)
    if len(target) < 2:
        return "continue"
    if target[0] in ("-g", "--goto"):
        return f"goto {target[1]}"
    return _ipt_target_action(target[1])


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
