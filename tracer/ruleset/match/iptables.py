"""The iptables interpreter: does a rule in `iptables -S` form match the packet? Pure: no I/O."""
from __future__ import annotations

import shlex
from dataclasses import dataclass

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
    _not,
    _packet_flags,
    _port_in,
    _proto_is,
)
from tracer.model import Proto

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
