"""What a block is for, and fixes that lift it only for the probed client. Pure: no I/O.

The intent of the block a packet met comes from the deciding rule *and* the jumps that led to
it (ufw's `limit` puts its `-m recent --update --hitcount 6` on the jump into ufw-user-limit,
whose REJECT is a catch-all), and from an ACCEPT the packet fell through because of a limit
(an nft meter, then the policy):

  general     a catch-all or a policy: the service was never opened (or opened in the wrong
              place); opening the service is the fix
  source      a ban: an address, a range, a set or ipset, a ban tool's chain or table
  limit       a rate or connection limit (xt_recent, limit, hashlimit, connlimit, nft limit,
              meters and dynamic sets with a per-source limit)
  restricted  the service is open for some sources only (an allowlist, a zone whose target
              drops with a rich rule for a range, `ufw allow from X`)

For source, limit and restricted the first fix lets in only the client, to the service, in the
owner's tool where a firewall manager owns the decision, placed before the block (before the
jump that carries the limit); the state commands (unban, forget the xt_recent entry, delete the
set element that really holds the client) follow. Every fix says whom it lets in; one whose
reach is wider than the client says so and never comes first for these intents.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from tracer.diagnose import owners, owners_more
from tracer.diagnose.context import Probe, backend_of, verb, where
from tracer.diagnose.fixes import _insert, _service
from tracer.ruleset.match.conditions import conditions
from tracer.ruleset.match.scope import Narrowing, narrowings
from tracer.model import Backend, EventKind, Finding, Fix, Proto, Rule, RuleRef, Step
from tracer.diagnose.nearmiss import NearMiss, left_at
# The intent and the words, in modules of their own (issue 19: no module over 400 lines); re-exported.
from tracer.diagnose.safe_intent import RATE, _ZONE_DISPATCH, Block, _decided_first, _fell_through, _jumps_to, block_of, call_path  # noqa: F401
from tracer.diagnose.safe_words import _ACCEPTING, _per_source, _rate_words, _wait, lets_in, only, scope_of, service  # noqa: F401

_WIDTH = {"client": 0, "service": 1, "wider": 2}
DECIDER_CODES = ("policy", "shadowed-rule", "blocked-by-rule")
TARGETED_CODES = {"source": "source-blocked", "limit": "rate-limited", "restricted": "source-restricted"}


# ---------------------------------------------------------------------------------------------
# Sets: the element that holds the client, and whether it expires


def holding_element(elements: Sequence[str], addr: str) -> Optional[str]:
    ip = ipaddress.ip_address(addr)
    for e in elements:
        try:
            if "-" in e:
                lo, hi = (ipaddress.ip_address(x) for x in e.split("-", 1))
                if lo.version == ip.version and lo <= ip <= hi:  # type: ignore[operator]
                    return e
            elif ip in ipaddress.ip_network(e, strict=False):
                return e
        except ValueError:
            continue
    return None


def set_expiry(text: Optional[str], family: str, table: str, name: str, element: Optional[str]) -> Optional[str]:
    """How the listing says the set's entries end: "expires in 4m59s", "entries time out after 10m",
    "does not expire"; None when the listing was not read."""
    if not text:
        return None
    body = _set_body(text, family, table, name)
    if body is None:
        return None
    if element:
        m = re.search(re.escape(element) + r"(?:\s+timeout\s+\S+)?\s+expires\s+([\w.]+)", body)
        if m:
            return f"the entry expires in {m.group(1)}"
    t = re.search(r"^\s*timeout\s+(\S+)", body, re.M)
    if t:
        return f"entries time out after {t.group(1)}"
    if re.search(r"^\s*flags\s+.*\btimeout\b", body, re.M):
        return "the set's entries carry timeouts"
    return "the entry does not expire (the set has no timeout)"


def _set_body(text: str, family: str, table: str, name: str) -> Optional[str]:
    cur: Optional[tuple[str, str]] = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*table\s+(\S+)\s+(\S+)\s*\{", line)
        if m:
            cur = (m.group(1), m.group(2))
            continue
        s = re.match(r"^\s*(?:set|meter)\s+(\S+)\s*\{", line)
        if s and cur == (family, table) and s.group(1) == name:
            out = []
            for body in lines[i + 1:]:
                if body.strip() == "}":
                    break
                out.append(body)
            return "\n".join(out)
    return None


# ---------------------------------------------------------------------------------------------
# The fixes


def client_rule(p: Probe, at: RuleRef) -> str:
    """Accept the client, for the service, before `at.rule` in its chain (appended: before the policy)."""
    backend = backend_of(p.ctx.ruleset, at)
    nft = backend is Backend.NFT
    match = _service(p, nft, True, "forward" in p.result.path)
    pos = at.rule if at.rule is not None and (not nft or at.rule.handle is not None) else None
    return _insert(at, backend, pos, match)


def _owner_client(p: Probe, owner: owners.Owner, blk: Block, raw: str) -> Optional[tuple[str, ...]]:
    spec, src, port = p.result.spec, p.seen.src, p.seen.dport
    if spec.proto is Proto.ICMP:
        return None
    proto = spec.proto.value
    detail = owner.detail.split(" ", 1)[1] if " " in owner.detail else ""
    if owner.key == "ufw":
        return (f"ufw insert 1 allow from {src} to any port {port} proto {proto}",)
    if owner.key == "firewalld":
        where_ = f"--policy={detail[len('policy_'):]} " if detail.startswith("policy_") else \
            (f"--zone={detail} " if detail else "")
        ref = p.result.decided_by
        # Rich rules at priority 0 run drop/reject before accept: beating a drop rich rule needs
        # a lower priority (firewalld.richlanguage(5), "priority").
        prio = ' priority="-1"' if ref is not None and ref.chain.endswith(("_deny", "_rich")) else ""
        fam = "ipv4" if spec.family == 4 else "ipv6"
        rich = f'rule{prio} family="{fam}" source address="{src}" port port="{port}" protocol="{proto}" accept'
        return (f"firewall-cmd {where_}--add-rich-rule='{rich}'", f"firewall-cmd --permanent {where_}--add-rich-rule='{rich}'")
    if owner.key == "docker":
        return (raw,) if "DOCKER-USER" in raw else None
    return None


def _state_fixes(p: Probe, blk: Block, owner: Optional[owners.Owner]) -> list[Fix]:
    """Clear the state that holds the client: unban it, forget its xt_recent entry, delete the set
    element that holds it (saying when that element is more than the client)."""
    src, out = str(p.seen.src), []
    ref = blk.at
    detail = owner.detail.split(" ", 1)[1] if owner is not None and " " in owner.detail else ""
    if owner is not None and owner.key == "fail2ban":
        jail = detail or "JAIL"
        cmd = f"fail2ban-client set {jail} unbanip {src}"
        out.append(Fix("client", f"lifts fail2ban's ban of {src} only (jail {jail}: the jail's ports)",
                       f"unban the client: {cmd}; to keep it from being banned again, add it to `ignoreip` "
                       f"in the [{jail}] section of /etc/fail2ban/jail.local", (cmd,), owner="fail2ban",
                       why=owners.reload_note(owner)))
    if owner is not None and owner.key == "crowdsec":
        cmd = f"cscli decisions delete --ip {src}"
        out.append(Fix("client", f"deletes CrowdSec's decisions against {src} only",
                       f"delete the decision: {cmd} (an allowlist entry keeps it from being decided again, but does "
                       "not clear a decision already made)", (cmd,), owner="crowdsec",
                       why=owners.reload_note(owner)))
    for n in blk.ns:
        if n.kind == "recent":
            cmd = f"echo -{src} > /proc/net/xt_recent/{n.name}"
            out.append(Fix("client", f"forgets only {src} on the xt_recent list {n.name}",
                           f"forget only this address: {cmd}, or wait: it gets in again {_wait(n)}", (cmd,)))
        elif n.kind == "set" and ref is not None and n.name:
            out += _set_fix(p, ref, n, src, owner)
        elif n.kind in ("limit", "hashlimit", "connlimit") and not blk.ns[0].kind == "recent":
            if n.kind == "hashlimit" and n.name and (ref is None or ref.rule is None or ref.rule.ipt is None):
                elems = (p.ctx.full_sets or {}).get((ref.family, ref.table, n.name), ()) if ref else ()
                if src in elems and ref is not None:
                    cmd = f"nft delete element {ref.family} {ref.table} {n.name} {{ {src} }}"
                    out.append(Fix("client", f"resets only {src}'s entry in {n.name}",
                                   f"reset this client's entry in the meter: {cmd}", (cmd,)))
            out.append(Fix("client", "changes no rule", f"wait: new connections get through again {_wait(n)}"))
    return out


def _set_fix(p: Probe, ref: RuleRef, n: Narrowing, src: str, owner: Optional[owners.Owner]) -> list[Fix]:
    if owner is not None and owner.key in ("fail2ban", "crowdsec", "pve"):
        return []  # the tool's own command above; a raw delete would be refilled from its state
    rule = ref.rule
    if rule is not None and rule.ipt is not None and "--match-set" in rule.ipt:
        cmd = f"ipset del {n.name} {src}"
        return [Fix("client", f"removes an entry for exactly {src} only",
                    f"if the set holds exactly this address: {cmd} (a network entry that contains it is deleted only "
                    f"by its own spec, which lets in the whole network: `ipset list {n.name}` shows the entries)", (cmd,))]
    elems = (p.ctx.full_sets or {}).get((ref.family, ref.table, n.name))
    if elems is None:
        return []
    elem = holding_element(elems, src)
    if elem is None:
        return []
    cmd = f"nft delete element {ref.family} {ref.table} {n.name} {{ {elem} }}"
    if elem.split("/")[0] == src and not ("/" in elem and elem.split("/")[1] not in ("32", "128")):
        return [Fix("client", f"removes only {src} from the set {n.name}", f"remove the client from the set: {cmd}", (cmd,))]
    return [Fix("wider", f"lifts the ban for all of {elem}, not only {src}",
                f"the set's entry is {elem}, which holds {src}: deleting it ({cmd}) also lets in every other address "
                f"of {elem}", (cmd,))]


def client_fixes(p: Probe, blk: Block) -> list[Fix]:
    """The fixes of a source/limit/restricted block, safest and most specific first."""
    assert blk.at is not None
    raw = client_rule(p, blk.at)
    owner = owners.decider_owner(p.result)
    state = _state_fixes(p, blk, owner)
    first_state = [f for f in state if f.owner is not None]  # the ban tool's own unban comes first
    rest = [f for f in state if f.owner is None]
    accept: Fix
    cmds = _owner_client(p, owner, blk, raw) if owner is not None else None
    place = _place(blk)
    if owner is not None and cmds:
        accept = Fix("client", only(p), f"as {owner.describe()} wants it: {cmds[0]}" +
                     (f"; {'; '.join(cmds[1:])}" if cmds[1:] else "") + f" (raw, {place}: {raw})",
                     tuple(dict.fromkeys((*cmds, raw))), owner=owner.key, why=owners.reload_note(owner), raw=raw)
    else:
        accept = Fix("client", only(p), f"let in only this client, {place}: {raw}", (raw,))
    own_first = owners_more.client_fixes(p, owner, blk, raw, owners.reload_note(owner)) if owner is not None else []
    ordered = own_first + first_state + [accept] + rest
    return [f for f in ordered if f.scope == "client"] + [f for f in ordered if f.scope != "client"]


def p_accepts(rule: Rule) -> bool:
    return rule.text.rstrip().endswith("accept") or (rule.ipt or "").rstrip().endswith("-j ACCEPT")


def _place(blk: Block) -> str:
    at = blk.at
    if at is None or at.rule is None:
        return f"in {at.chain if at else 'the chain'}, where its policy decides"
    what = f"rule {at.rule.number}"
    if blk.carrier is not None and blk.carrier is at.rule:
        what = "the limited ACCEPT" if p_accepts(at.rule) else "the jump that carries the limit"
    return f"before {what} in {at.chain}"


# ---------------------------------------------------------------------------------------------
# The findings


def targeted_finding(p: Probe, blk: Block) -> Finding:
    ref = p.result.decided_by
    assert ref is not None
    src = p.seen.src
    decided = (f"{where(ref)} rule {ref.rule.number} `{ref.rule.display}`" if ref.rule is not None
               else f"{where(ref)} policy {(ref.policy or '?').upper()}")
    head = f"{decided} {verb(p.result.verdict)} the packet"
    carrier = f" (it came there by `{blk.carrier.display}` in {blk.carrier.chain})" if blk.carrier is not None and \
        blk.carrier is not ref.rule and blk.intent != "limit" or (blk.carrier is not None and blk.intent == "limit"
                                                                   and ref.rule is not None) else ""
    if blk.intent == "limit":
        n = blk.ns[0]
        fell = blk.carrier is not None and blk.at is not None and blk.at.rule is blk.carrier and ref.rule is None
        how = (f" after the ACCEPT `{blk.carrier.display}` let it fall through" if fell and blk.carrier else
               (f"; the jump there, `{blk.carrier.display}` in {blk.carrier.chain}, carries the limit"
                if blk.carrier is not None else ""))
        state = ""
        if n.kind == "recent":
            state = f" {src} is on the xt_recent list {n.name} (/proc/net/xt_recent/{n.name}); every new attempt, this probe included, counts."
        elif n.kind == "hashlimit" and n.name and blk.at is not None:
            held = src and str(src) in (p.ctx.full_sets or {}).get((blk.at.family, blk.at.table, n.name), ())
            exp = set_expiry(p.ctx.set_text, blk.at.family, blk.at.table, n.name, str(src)) if held else None
            state = (f" The set {n.name} holds an entry for {src}" + (f" ({exp})" if exp else "") + "."
                     if held else f" The listing shows no entry for {src} in {n.name}.")
        msg = (f"{head}{how}: a rate limit, {_rate_words(n, _per_source(n))}, was exceeded.{state} It lets the client "
               f"in again {_wait(n)}. The limit is deliberate: an ACCEPT for everybody would switch it off for all.")
    elif blk.intent == "source":
        msg = f"{head}{carrier}: {src} is held by {_holder(p, blk)}. The block looks deliberate: a ban."
    else:
        if blk.allowed:
            opened = "; ".join(f"`{a}`" for a in blk.allowed)
            by = f" (`{blk.allow_rule.display}`)" if blk.allow_rule is not None else \
                (f" (`{blk.ns[0].text}` drops everyone else)" if blk.ns else "")
            msg = (f"{head}{carrier}: {service(p)} is open only for {opened}{by}; {src} is not one of them. Opening it "
                   "for everyone would undo that restriction.")
        elif ref.chain.endswith("_deny"):
            msg = (f"{head}: a deny rule of firewalld in {ref.chain} (a rich rule with reject or drop) refuses "
                   f"{service(p)} deliberately. Opening the service before it would lift the deny for everyone; an "
                   "exemption for one client needs a rich rule with a lower priority.")
        else:
            msg = (f"{head}: it matches only some packets (`{blk.ns[0].text}`), not every client of this service. "
                   "Opening the service above it for everyone would switch that off.")
    for nm in blk.unreached:
        msg += (f" {nm.rule.family} {nm.rule.table} {nm.rule.chain} rule {nm.rule.number} `{nm.rule.display}` would "
                f"accept it but is never reached: {ref.chain} rule {ref.rule.number if ref.rule else '(policy)'} decides first.")
    fixes = client_fixes(p, blk)
    code = TARGETED_CODES[blk.intent] if blk.allowed or blk.intent != "restricted" else "blocked-by-rule"
    return _with_fixes(Finding(code, msg), fixes, blk.intent)


def _holder(p: Probe, blk: Block) -> str:
    n, at, src = blk.ns[0], blk.at, str(p.seen.src)
    owner = owners.decider_owner(p.result)
    tool = f"{owner.describe()}'s " if owner is not None else ""
    if n.kind == "set":
        if at is not None and at.rule is not None and at.rule.ipt is not None:
            return (f"the ipset {n.name} (`{n.text}`); whether its entry expires was not read (`ipset list {n.name}` "
                    "shows a timeout when the set has them)")
        elems = (p.ctx.full_sets or {}).get((at.family, at.table, n.name or ""), ()) if at else ()
        elem = holding_element(elems, src) if elems else None
        exp = set_expiry(p.ctx.set_text, at.family, at.table, n.name or "", elem) if at is not None else None
        entry = f", entry {elem}" if elem else ""
        return f"{tool}set {n.name} (`{n.text}`{entry})" + (f"; {exp}" if exp else "")
    what = f"the address {n.value}" if n.value and n.value.split("/")[-1] in ("32", "128") or n.value == src else \
        f"the range {n.value}"
    if owner is not None and owner.key == "fail2ban":
        return (f"fail2ban's ban (`{n.text}`): fail2ban lifts it when the jail's bantime runs out "
                f"(`fail2ban-client get {owner.detail.split(' ', 1)[-1]} bantime` says how long)")
    in_ = f" in {owner.name}'s rules" if owner is not None else ""
    return f"{what} (`{n.text}`){in_}, a rule: it does not expire"


def _with_fixes(f: Finding, fixes: Sequence[Fix], intent: Optional[str]) -> Finding:
    fixes = tuple(fixes)
    cmds = tuple(dict.fromkeys(c for x in fixes for c in x.commands))
    text = f.fix
    if fixes:
        text = fixes[0].text + (" (" + fixes[0].lets_in + ")" if fixes[0].lets_in else "")
    return dataclasses.replace(f, fix=text, commands=cmds, fixes=fixes, intent=intent)


def default_fixes(f: Finding, p: Probe) -> tuple[Fix, ...]:
    """A finding's own fix as one Fix, scoped by what its commands name."""
    if f.fixes or (f.fix is None and not f.commands):
        return f.fixes
    cmds = tuple(c for c in (f.proof_rule, *f.commands) if c)
    scope = scope_of(cmds, p) if cmds else "client"
    return (Fix(scope, lets_in(scope, p) if cmds else "changes no rule", f.fix or "; ".join(f.commands), f.commands),)


def finish(p: Probe, findings: list[Finding], blk: Optional[Block]) -> list[Finding]:
    """The findings with the block's intent, the deciding finding rewritten for a targeted block,
    every fix scoped, and the owner's own command first where a manager owns the decision."""
    intent = blk.intent if blk is not None else None
    out: list[Finding] = []
    for f in findings:
        if blk is not None and blk.intent != "general" and f.code in DECIDER_CODES:
            out.append(targeted_finding(p, blk))
            continue
        if f.code in DECIDER_CODES and blk is not None and blk.intent == "general":
            f = _owned_general(p, f)
        fixes = default_fixes(f, p)
        if intent not in (None, "general"):
            fixes = tuple(sorted(fixes, key=lambda x: x.scope != "client"))
        out.append(dataclasses.replace(f, intent=intent, fixes=fixes, fix=fixes[0].text if fixes else f.fix)
                   if fixes != f.fixes or f.intent != intent else f)
    return out


def _owned_general(p: Probe, f: Finding) -> Finding:
    """A general block's fix in its owner's terms first (ufw allow, firewall-cmd --add-port), raw second."""
    owner = owners.decider_owner(p.result)
    raw = next((c for c in f.commands), None)
    if owner is None or raw is None:
        return f
    own = owners.fix(p.result, raw, str(p.seen.dst), p.seen.dport)
    if own is None:
        return f
    cmds = own.commands
    scope = scope_of(cmds, p) if all(_ACCEPTING.search(c) for c in cmds) else scope_of((raw,), p)
    if _WIDTH[scope] > _WIDTH[scope_of(f.commands, p)]:
        return f  # the owner's command would open more than the raw fix: the raw one stays alone
    fx = Fix(scope, lets_in(scope, p), f"as {owner.describe()} wants it: {cmds[0]}" +
             (f"; {'; '.join(cmds[1:])}" if cmds[1:] else "") + f" (raw: {f.fix or raw})",
             tuple(dict.fromkeys((*cmds, *f.commands))), owner=owner.key, why=own.why, raw=raw)
    return dataclasses.replace(f, fixes=(fx,), fix=fx.text, commands=fx.commands)
