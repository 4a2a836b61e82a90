"""Findings that explain the rule (or policy) that decided a blocked packet. No I/O.

At most one of them applies to a packet; `tracer.diagnose.DECIDER` orders them. Each fix is
scoped so it cannot weaken the firewall for anyone but the probed client and service: a rule
that targets clients (an address, a set, a throttle) is worked around for this client only,
and only a catch-all earns the textbook "move the ACCEPT above it".
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from tracer.diagnose import kernverdict
from tracer.diagnose.context import Probe, backend_of, verb, what, where
from tracer.diagnose.fixes import accept_rule, ipt_cmd, table_opt, whitelist_rule
from tracer.ruleset.match import PacketFacts, ipt_spec, rule_action, rule_matches
from tracer.ruleset.match.scope import Narrowing, narrowings
from tracer.model import Backend, EventKind, Finding, Proto, Rule, RuleRef

_INVALID_RULE = re.compile(r"(?:--ctstate|--state)\s+\S*INVALID|\bct state\s+\S*invalid\b", re.I)
_NOTRACK = re.compile(r"-j NOTRACK|-j CT --notrack|\bnotrack\b", re.I)
_STATE_NEW = re.compile(r"(?:--ctstate|--state)\s+\S*NEW|\bct state\s+\S*new\b", re.I)


def _blocked_rule(p: Probe) -> Optional[RuleRef]:
    ref = p.result.decided_by
    return ref if p.blocked and ref is not None else None


def conntrack_invalid(p: Probe) -> Optional[Finding]:
    """The probe was INVALID to conntrack: say why, and which rule then dropped it."""
    result, spec, ref = p.result, p.result.spec, p.result.decided_by
    lines = [s.event.text for s in result.steps if s.event.kind is EventKind.CONNTRACK]
    by_invalid_rule = ref is not None and ref.rule is not None and bool(_INVALID_RULE.search(ref.rule.display))
    traced = p.blocked and any(s.event.ct_state == "invalid" for s in result.steps)  # Linux 6.16+
    if not lines and not by_invalid_rule and not traced:
        return None
    if lines:
        why = f"conntrack logged: \"{lines[0]}\""
    elif traced and not by_invalid_rule:
        why = "the kernel's trace shows conntrack state INVALID at the deciding chain"
    elif spec.proto is Proto.TCP and "S" not in spec.flags and result.conntrack in (None, "none"):
        why = (f"the TCP packet has flags [{spec.flags}] and no SYN, and conntrack holds no connection for it "
               f"(conntrack entry: {result.conntrack or 'not read'}); ")
        if p.ctx.tcp_loose == 0:
            why += ("with net.netfilter.nf_conntrack_tcp_loose=0 conntrack does not pick up connections in mid-stream, so "
                    "the packet gets no conntrack entry and matches --ctstate INVALID (the kernel logs nothing for this case)")
        else:
            why += "conntrack treats a packet it cannot place in a connection as INVALID"
    else:
        why = f"the deciding rule matches INVALID packets (conntrack entry: {result.conntrack or 'not read'})"
    dropped = f" Then {where(ref)} {what(ref)} {verb(result.verdict)} it." if ref is not None and p.blocked else ""
    fix = ("expected for a stray packet of no connection (a scan, a late ACK after the connection was forgotten); "
           "to test whether the port is open, probe with a SYN (--flags S). If mid-stream pickup is wanted (e.g. "
           "after a firewall failover), `sysctl -w net.netfilter.nf_conntrack_tcp_loose=1`")
    return Finding("conntrack-invalid", f"conntrack found the probe INVALID: {why}.{dropped}", fix)


def untracked(p: Probe) -> Optional[Finding]:
    """A raw-table NOTRACK made the probe UNTRACKED: no `--state NEW` rule can match it."""
    ref = _blocked_rule(p)
    raw = next((s for s in p.result.steps if s.rule is not None and _NOTRACK.search(s.rule.display)), None)
    if ref is None or raw is None or raw.rule is None:
        return None  # (a trace that says `untracked` but shows no NOTRACK rule: left to the others)
    ev = raw.event
    chain = p.ctx.ruleset.chain(ref.family, ref.table, ref.chain, ref.legacy)
    missed = next((r for r in (chain.rules if chain else ()) if rule_action(r) == "accept"
                   and _STATE_NEW.search(r.display) and rule_matches(r, _new_less(p)) is not False), None)
    missed_text = f" {ref.chain} rule {missed.number} `{missed.display}` looks for state NEW and so never matches it;" \
        if missed else ""
    msg = (f"{ev.family} {ev.table} {ev.chain} rule {raw.rule.number} `{raw.rule.display}` exempted the probe from "
           f"connection tracking, so its state is UNTRACKED, not NEW:{missed_text} then {where(ref)} {what(ref)} "
           f"{verb(p.result.verdict)} it.")
    fix = ("either stop exempting this traffic from conntrack (delete the NOTRACK rule, or narrow it) or accept it "
           "statelessly: add `--ctstate UNTRACKED` (nft: `ct state untracked`) to the accept rule meant for it")
    return Finding("untracked", msg, fix)


def _new_less(p: Probe) -> PacketFacts:
    """The probe's facts without a conntrack state: an UNTRACKED packet is not NEW."""
    return dataclasses.replace(p.facts, ct_state=None)


def reverse_path_rule(p: Probe) -> Optional[Finding]:
    """A reverse-path check written as a rule (`-m rpfilter --invert -j DROP`, nft `fib saddr . iif
    oif missing drop`) decided: explained by the route back, never as a ban of the source (the
    rule names no address; whitelisting the client would only hide a routing problem)."""
    ref = _blocked_rule(p)
    if ref is None or ref.rule is None or not kernverdict.rpfilter_rule(ref.rule.display):
        return None
    r, src = p.result, p.result.spec.src
    iif = p.ctx.via or p.iif or "the arrival interface"
    back = r.route_back
    loose = kernverdict.rpfilter_loose(ref.rule.display)
    if back is not None and back.error:
        route = f"this host has no route back to {src} at all ({back.said()})"
    elif back is not None and back.dev:
        route = (f"the route back to {src} leaves by {back.dev}" + (f", not {iif}" if back.dev != iif else "")
                 + f" ({back.said()})")
    elif p.ctx.route_dev:
        route = f"the route back to {src} leaves by {p.ctx.route_dev}, not {iif}"
    else:
        route = f"the route back to {src} was not looked up"
    check = "has any route back" if loose else f"would be routed back out of {iif}, the interface it came in on"
    msg = (f"{where(ref)} rule {ref.rule.number} `{ref.rule.display}` {verb(r.verdict)} the packet: it is a "
           f"reverse-path check, not a ban of {src}: it drops packets unless their source {check}, and {route}.")
    fix = (f"route {src} back via {iif} (`ip route add {src} via GATEWAY dev {iif}`); if the routing is asymmetric "
           "on purpose, make the check loose for this interface (`-m rpfilter --loose`, nft `fib saddr oif missing`)"
           if not loose else f"add a route back to {src} (`ip route add {src} via GATEWAY`), or a default route")
    return Finding("rp-filter-rule", msg, fix)


def policy(p: Probe) -> Optional[Finding]:
    ref = p.result.decided_by
    if ref is None or ref.rule is not None or (ref.policy or "").lower() != "drop":
        return None
    fix = accept_rule(p, ref, None)
    return Finding("policy", f"No rule in {where(ref)} matched the packet; the chain's default policy DROP decided.",
                   fix, (fix,))


def shadowed_rule(p: Probe) -> Optional[Finding]:
    """A catch-all decided before the ACCEPT meant for this service (appended after it)."""
    ref = _blocked_rule(p)
    if ref is None or ref.rule is None or narrowings(ref.rule, p.iif, p.oif):
        return None
    chain = p.ctx.ruleset.chain(ref.family, ref.table, ref.chain, ref.legacy)
    later = next((r for r in (chain.rules[ref.rule.number:] if chain else ())
                  if rule_action(r) == "accept" and rule_matches(r, p.facts) is True), None)
    if later is None:
        return None
    decider = ref.rule
    msg = (f"{ref.chain} rule {decider.number} `{decider.display}` {verb(p.result.verdict)} the packet; "
           f"rule {later.number} `{later.display}` would have accepted it but is never reached, "
           f"because it comes after rule {decider.number}, a catch-all for this service (appended with -A after it).")
    return Finding("shadowed-rule", msg, *_move(p, ref, decider, later))


def _move(p: Probe, ref: RuleRef, decider: Rule, later: Rule) -> tuple[str, tuple[str, ...]]:
    if backend_of(p.ctx.ruleset, ref) is Backend.NFT or later.ipt is None:
        chain = f"{ref.family} {ref.table} {ref.chain}"
        cmds = (f"nft insert rule {chain} position {decider.handle} {later.text}",
                f"nft delete rule {chain} handle {later.handle}")
        return f"move the rule before rule {decider.number}: {cmds[0]}; then remove the unreachable copy: {cmds[1]}", cmds
    cmd = f"{ipt_cmd(ref.family, ref.legacy)} {table_opt(ref.table)}"
    cmds = (f"{cmd}-I {ref.chain} {decider.number} {ipt_spec(later)}", f"{cmd}-D {ref.chain} {later.number + 1}")
    return f"{cmds[0]}; then delete the unreachable copy (now rule {later.number + 1}): {cmds[1]}", cmds


def blocked_by_rule(p: Probe) -> Optional[Finding]:
    ref = _blocked_rule(p)
    if ref is None or ref.rule is None:
        return None
    head = f"{where(ref)} rule {ref.rule.number} `{ref.rule.display}` {verb(p.result.verdict)} the packet."
    ns = narrowings(ref.rule, p.iif, p.oif)
    if not ns:
        fix = accept_rule(p, ref, ref.rule)
        return Finding("blocked-by-rule", head, f"if this traffic should be allowed, accept it before that rule: {fix}",
                       (fix,))
    why, fix, cmds = targeted(p, ref, ns)
    return Finding("blocked-by-rule", f"{head} It is a targeted block, not a catch-all: {why}", fix, cmds)


def targeted(p: Probe, ref: RuleRef, ns: tuple[Narrowing, ...]) -> tuple[str, str, tuple[str, ...]]:
    """(what matched, the fix, its commands) for a rule that narrows by client or circumstance."""
    client, n = p.seen.src, ns[0]
    assert ref.rule is not None
    whitelist = whitelist_rule(p, ref, ref.rule)
    keep = "Moving an ACCEPT for everybody above it would switch that protection off."
    if n.kind == "recent":
        secs = f"{n.seconds} s" if n.seconds else "its window"
        hits = f"{n.hitcount} or more hits" if n.hitcount else "a hit"
        why = (f"{client} is on the xt_recent list {n.name} with {hits} within {secs} (`{n.text}`): a brute-force "
               f"throttle that tripped; every new attempt, this probe included, counts as a hit. {keep}")
        fix = (f"wait {secs} without new connections from {client}, or forget only this address: "
               f"echo -{client} > /proc/net/xt_recent/{n.name}")
        return why, fix, ()
    if n.kind == "set":
        why = f"{client} is in the set {n.name} (`{n.text}`), a ban list. {keep}"
        cmd = _set_delete(ref, n, str(client))
        fix = (f"if {client} should not be banned, remove this address from the set: {cmd} (removes only an entry "
               f"for exactly {client}; if the set holds a network containing it, whitelist the client instead: {whitelist})")
        return why, fix, (cmd,)
    if n.kind in ("limit", "hashlimit", "connlimit"):
        what_ = {"limit": "a rate limit", "hashlimit": "a per-client rate limit", "connlimit": "a connection limit"}[n.kind]
        why = f"{what_} (`{n.text}`) was exceeded when the probe arrived. {keep}"
        return why, "wait until the rate drops below the limit, or send fewer connections from this client", ()
    if n.kind == "source":
        why = f"it matches clients by source address (`{n.text}`), {client} among them: a ban. {keep}"
    else:
        why = f"it matches only some packets (`{n.text}`), not every client of this service. {keep}"
    return why, f"if {client} should be allowed, whitelist only it, for this service, before the rule: {whitelist}", (whitelist,)


def _set_delete(ref: RuleRef, n: Narrowing, addr: str) -> str:
    if ref.rule is not None and ref.rule.ipt is not None and "--match-set" in ref.rule.ipt:
        return f"ipset del {n.name} {addr}"
    return f"nft delete element {ref.family} {ref.table} {n.name} {{ {addr} }}"
