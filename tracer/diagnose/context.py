"""What every check needs: the run's context, and the probe as the deciding chain saw it. No I/O."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

from tracer.ruleset.match import PacketFacts, rule_action
from tracer.model import (
    Backend,
    IPAddress,
    Listener,
    PacketResult,
    Proto,
    RuleRef,
    Ruleset,
    Verdict,
)
from tracer.packet import parse_headers
from tracer.diagnose.selinux import Selinux


@dataclass(frozen=True)
class Context:
    ruleset: Ruleset
    listeners: tuple[Listener, ...]
    local: bool  # sent from the target namespace itself (OUTPUT + lo + INPUT)
    tcp_loose: Optional[int] = None  # net.netfilter.nf_conntrack_tcp_loose of the target, when read
    mode: str = ""  # "ingress", "local", "from-netns" ("" : as `local` says)
    via: Optional[str] = None  # simulated ingress: the interface it arrived on
    src: Optional[IPAddress] = None  # the probe's source address
    route_dev: Optional[str] = None  # the interface the route back to src leaves by
    rp_filter_drops: bool = False  # rp_filter is on for `via` and the route back does not pass it
    fallback: Optional[str] = None  # "eth0: why simulated ingress was not possible", when it fell back
    unobserved: tuple[str, ...] = ()  # base chains no trace can show (bridge, netdev egress), see trace.plan.Floors
    # The tables on the input and forward hooks, for near misses in chains and tables the packet
    # never entered (None: only the chains it met are known), and their nft named sets' elements
    full_ruleset: Optional[Ruleset] = None
    full_sets: Optional[dict[tuple[str, str, str], tuple[str, ...]]] = None
    set_text: Optional[str] = None  # that listing's nft text: the sets' flags, timeouts and expiries
    selinux: Optional[Selinux] = None  # SELinux enforcing: its port labels and AVC denials (None: absent, or not asked)


@dataclass(frozen=True)
class Seen:
    """The probe's addresses as the deciding chain saw them: after any DNAT or REDIRECT."""

    src: IPAddress
    dst: IPAddress
    dport: int


@dataclass(frozen=True)
class Probe:
    """One packet's result with what the checks derive from it once."""

    result: PacketResult
    ctx: Context
    seen: Seen
    iif: Optional[str]
    oif: Optional[str]
    facts: PacketFacts

    @property
    def blocked(self) -> bool:
        return self.result.verdict in (Verdict.DROP, Verdict.REJECT)


def probe_of(result: PacketResult, ctx: Context) -> Probe:
    h = seen(result)
    iif = next((s.event.iif for s in result.steps if s.event.iif), None)
    oif = next((s.event.oif for s in result.steps if s.event.oif), None)
    return Probe(result, ctx, h, iif, oif, facts(result, iif, oif, h))


_NAT_TO = re.compile(r"(?:--to-destination|\bdnat(?: ip6?)? to)\s+(\S+)")
_REDIRECT_TO = re.compile(r"(?:--to-ports|\bredirect to)\s+:?(\d+)")


def nat_target(text: str) -> tuple[Optional[IPAddress], Optional[int]]:
    """(address, port) a DNAT/REDIRECT rule rewrites to, from its iptables or nft text."""
    m = _NAT_TO.search(text)
    if m is None:
        r = _REDIRECT_TO.search(text)
        return None, int(r.group(1)) if r else None
    tok = m.group(1)
    if tok.startswith("["):  # [2001:db8::2]:80
        addr, _, rest = tok[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif tok.count(":") == 1:  # 198.51.100.2:80
        addr, port = tok.split(":")
    else:
        addr, port = tok, ""
    try:
        ip: Optional[IPAddress] = ipaddress.ip_address(addr.split("-")[0])
    except ValueError:
        ip = None
    digits = port.split("-")[0]
    return ip, int(digits) if digits.isdigit() else None


def seen(result: PacketResult) -> Seen:
    """Follow the timeline: header dumps say where the packet is addressed; NAT rules change it."""
    spec = result.spec
    cur = Seen(spec.src, spec.dst, spec.dport)
    for step in result.steps:
        h = parse_headers(step.event.packet) if step.event.packet else None
        if h is not None:
            cur = Seen(h.src, h.dst, h.dport if spec.proto is not Proto.ICMP else spec.dport)
        if step.rule is not None and rule_action(step.rule) in ("dnat", "redirect"):
            addr, port = nat_target(step.rule.display)
            cur = Seen(cur.src, addr or cur.dst, port if port is not None and spec.proto is not Proto.ICMP else cur.dport)
    return cur


def facts(result: PacketResult, iif: Optional[str], oif: Optional[str], h: Seen) -> PacketFacts:
    spec = result.spec
    new = spec.proto is not Proto.TCP or spec.flags.upper() in ("S",)
    return PacketFacts(
        family=spec.family, proto=spec.proto, src=h.src, dst=h.dst, sport=spec.sport, dport=h.dport,
        tcp_flags=spec.flags, iif=iif, oif=oif, ct_state="new" if new else None,
        icmp_type=(8 if spec.family == 4 else 128) if spec.proto is Proto.ICMP else None,
    )


def backend_of(ruleset: Ruleset, ref: RuleRef) -> Backend:
    if ref.legacy:
        return Backend.IPTABLES_LEGACY
    t = ruleset.table(ref.family, ref.table)
    return t.backend if t else Backend.NFT


def verb(v: Verdict) -> str:
    return {Verdict.REJECT: "rejected", Verdict.DROP: "dropped", Verdict.ACCEPT: "accepted"}.get(v, "decided")


def where(ref: RuleRef) -> str:
    legacy = " (iptables-legacy)" if ref.legacy else ""
    return f"{ref.family} {ref.table} {ref.chain}{legacy}"


def what(ref: RuleRef) -> str:
    """`rule 7 `-A INPUT -j REJECT`` or `policy DROP`."""
    return f"rule {ref.rule.number} `{ref.rule.display}`" if ref.rule else f"policy {(ref.policy or '?').upper()}"
