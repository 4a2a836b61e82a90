"""Fixes as commands, in the ruleset's own style (nft or iptables, its table and position). No I/O.

Every builder scopes what it adds to the probed service, and where the rule it works around
targets clients, to the probed client too: a fix must never open anything for anybody else.
"""
from __future__ import annotations

from typing import Optional

from tracer.diagnose.context import Probe, backend_of
from tracer.model import Backend, Proto, Rule, RuleRef, Ruleset


def ipt_cmd(rule_family: str, legacy: bool = False) -> str:
    cmd = "ip6tables" if rule_family == "ip6" else "iptables"
    return cmd + "-legacy" if legacy else cmd


def table_opt(table: str) -> str:
    return "" if table == "filter" else f"-t {table} "


def _forward(ref: RuleRef) -> bool:
    return "forward" in ref.chain.lower()


def _service(p: Probe, nft: bool, client: bool, server: bool, reply: bool = False) -> str:
    """The match for the probed service, e.g. `-s C/32 -p tcp --dport 22` or `ip saddr C tcp dport 22`;
    `client` / `server` add those addresses; `reply`: the service's answers to the client."""
    spec, h = p.result.spec, p.seen
    l3 = "ip" if spec.family == 4 else "ip6"
    host = "/32" if spec.family == 4 else "/128"
    icmp = spec.proto is Proto.ICMP
    echo = "echo-reply" if reply else "echo-request"
    if nft:
        parts = [f"{l3} {'daddr' if reply else 'saddr'} {h.src}"] if client else []
        parts += [f"{l3} daddr {h.dst}"] if server and not reply else []
        kind = "icmp" if spec.family == 4 else "icmpv6"
        parts.append(f"{kind} type {echo}" if icmp else f"{spec.proto.value} {'sport' if reply else 'dport'} {h.dport}")
        return " ".join(parts)
    parts = [f"-{'d' if reply else 's'} {h.src}{host}"] if client else []
    parts += [f"-d {h.dst}"] if server and not reply else []
    if icmp:
        parts.append(f"-p icmp --icmp-type {echo}" if spec.family == 4 else f"-p ipv6-icmp --icmpv6-type {echo}")
    else:
        parts.append(f"-p {spec.proto.value} --{'sport' if reply else 'dport'} {h.dport}")
    return " ".join(parts)


def _insert(ref: RuleRef, backend: Backend, position: Optional[Rule], match: str, top: bool = False) -> str:
    if backend is Backend.NFT:
        chain = f"{ref.family} {ref.table} {ref.chain}"
        if position is not None and position.handle:
            return f"nft insert rule {chain} position {position.handle} {match} accept"
        return f"nft {'insert' if top else 'add'} rule {chain} {match} accept"
    # Without a position: appended, where the policy decides; inserted at the top it would
    # also overrule every ban earlier in the chain.
    where = f"-I {ref.chain} {position.number}" if position is not None else f"-{'I' if top else 'A'} {ref.chain}"
    return f"{ipt_cmd(ref.family, ref.legacy)} {table_opt(ref.table)}{where} {match} -j ACCEPT"


def accept_rule(p: Probe, ref: RuleRef, position: Optional[Rule]) -> str:
    """Accept the probed service for everybody in ref's chain, before `position` if given: only
    for a policy or a catch-all, where that is what the admin meant."""
    backend = backend_of(p.ctx.ruleset, ref)
    return _insert(ref, backend, position, _service(p, backend is Backend.NFT, False, _forward(ref)))


def whitelist_rule(p: Probe, ref: RuleRef, position: Optional[Rule]) -> str:
    """Accept the probed client, for the probed service only, before the rule that blocked it."""
    backend = backend_of(p.ctx.ruleset, ref)
    return _insert(ref, backend, position, _service(p, backend is Backend.NFT, True, _forward(ref)))


def _state_style(ruleset: Ruleset) -> str:
    """`-m state --state` or `-m conntrack --ctstate`, whichever the ruleset already uses."""
    texts = [r.ipt or "" for r in ruleset.rules()]
    if any("-m state" in t for t in texts) and not any("--ctstate" in t for t in texts):
        return "-m state --state"
    return "-m conntrack --ctstate"


def reply_rule(p: Probe, ref: RuleRef, targeted: bool) -> str:
    """Let the service's replies out of ref's chain: an ESTABLISHED rule for the service (and for
    the client only, when the rule that dropped the reply targets some destinations)."""
    backend = backend_of(p.ctx.ruleset, ref)
    nft = backend is Backend.NFT
    match = _service(p, nft, targeted, False, reply=True)
    position = ref.rule
    if nft:
        return _insert(ref, backend, position, f"ct state established {match}", top=True)
    return _insert(ref, backend, position or _FIRST, f"{match} {_state_style(p.ctx.ruleset)} ESTABLISHED")


_FIRST = Rule("", "", "", 1, None, "")  # position 1: an ESTABLISHED rule belongs at the top
