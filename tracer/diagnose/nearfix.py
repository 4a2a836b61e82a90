"""A near miss as a finding: what failed, why, and a fix that changes only that condition.

The fix is a copy of the rule with the one failed condition replaced by what the packet has
(its interface, its address, its port, its protocol, its conntrack state), every other condition
kept, inserted where the packet will meet it: before the rule that decided when that one comes
first in the same chain, else just before the original. Wrong family: the same rule in the
family's own tool/table; wrong hook: the same rule in FORWARD (DOCKER-USER) or INPUT; a zone or
chain the packet never enters: the same rule where it does. Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import shlex
from typing import TYPE_CHECKING, Optional

from tracer.ruleset.match.conditions import Condition, Sets, ipt_words, replace_span
from tracer.ruleset.match.facts import PacketFacts
from tracer.model import (
    Backend,
    Finding,
    PacketResult,
    Proto,
    Rule,
    RuleRef,
    Ruleset,
    Verdict,
)
from tracer.diagnose.nearmiss import NearMiss
from tracer.diagnose.nearfix_cond import _new_condition, _replace_proto  # noqa: F401  (issue 19: no module over 400 lines)

if TYPE_CHECKING:
    from tracer.diagnose.context import Probe

_FAMILY_NAME = {"ip": "IPv4 only", "ip6": "IPv6 only"}


MAX_SHOWN = 3  # nearest first; more would bury the blocking finding


def near_miss_findings(result: PacketResult, ruleset: Ruleset, pf: PacketFacts, original: PacketFacts,
                       sets: Optional[Sets] = None) -> list[Finding]:
    """The `near-miss` findings of a blocked packet, nearest first."""
    from tracer.diagnose.nearmiss import near_misses

    return [finding(nm, result, ruleset) for nm in near_misses(result, ruleset, pf, original, sets)[:MAX_SHOWN]]


def check(p: Probe) -> list[Finding]:
    """The diagnosis' near-miss check (tracer/diagnose/__init__.py): for a dropped or rejected packet, judged
    on the facts as filtered (after DNAT, `p.facts`) and as sent; `p.ctx` is diagnose's Context (its
    `full_ruleset` and `full_sets` when the run listed them, else the met chains only)."""
    return [finding(nm, p.result, p.ctx.full_ruleset or p.ctx.ruleset) for nm in misses(p)[:MAX_SHOWN]]


def misses(p: Probe) -> list[NearMiss]:
    """All near misses of a dropped or rejected packet, nearest first (see `check`)."""
    from tracer.diagnose.nearmiss import near_misses

    result, ctx, pf = p.result, p.ctx, p.facts
    if result.verdict not in (Verdict.DROP, Verdict.REJECT):
        return []
    spec = result.spec
    original = dataclasses.replace(pf, src=spec.src, dst=spec.dst, dport=spec.dport)
    return near_misses(result, ctx.full_ruleset or ctx.ruleset, pf, original, ctx.full_sets)


def finding(nm: NearMiss, result: PacketResult, ruleset: Ruleset) -> Finding:
    rule, cond, pf = nm.rule, nm.failed, nm.facts
    where = f"{rule.family} {rule.table} {rule.chain} rule {rule.number}"
    msg = (f"{where} `{rule.display}` would have accepted the packet but for one condition: "
           f"{cond.text} ({_because(nm, result)}).")
    if nm.unreached:
        msg += (f" Its base chain did not even see the packet: {nm.unreached} dropped it first, so this fix "
                "alone is not enough.")
    elif cond.kind not in ("family", "chain", "entry"):
        note = _placement(rule, result, pf)[1]
        msg += f" But {note}." if note else ""
    command, text = _fix(nm, result, ruleset)
    if nm.zone is not None:
        land = nm.zone[1]
        fw = _zone_fix(land, pf, _source_bound(cond))
        who = f"for {pf.src} only (the zone it missed is bound to sources)" if _source_bound(cond) else "there"
        fix = (f"open it in the zone the packet lands in, {who}: {fw} (add --permanent to keep it); "
               f"the rule as nftables sees it: {command}" if command else f"open it in zone {land}: {fw}")
        return Finding("near-miss", msg, fix, (fw,), failed_condition=cond.text, proof_rule=command)
    if command is None:
        return Finding("near-miss", msg, text or None, (), failed_condition=cond.text)
    return Finding("near-miss", msg, f"{text}: {command}", (command,), failed_condition=cond.text)


def _source_bound(cond: Condition) -> bool:
    """The zone the rule is in is bound to a source range the client is not in."""
    return cond.kind == "entry" and cond.text.split()[:2] in (["ip", "saddr"], ["ip6", "saddr"])


def _zone_fix(land: str, pf: PacketFacts, source_bound: bool) -> str:
    """firewalld's own command for the zone the packet lands in: the port (as the rule had it), or
    for a zone bound to sources a rich rule for this client alone -- opening the port to the whole
    landing zone would let in every client the source binding kept out."""
    fam = "ipv4" if pf.family == 4 else "ipv6"
    what = ('icmp-type name="echo-request"' if pf.proto is Proto.ICMP
            else f'port port="{pf.dport}" protocol="{pf.proto.value}"')
    if source_bound:
        return f"firewall-cmd --zone={land} --add-rich-rule='rule family=\"{fam}\" source address=\"{pf.src}\" {what} accept'"
    if pf.proto is Proto.ICMP:
        return f"firewall-cmd --zone={land} --add-rich-rule='rule family=\"{fam}\" {what} accept'"
    return f"firewall-cmd --zone={land} --add-port={pf.dport}/{pf.proto.value}"


def _because(nm: NearMiss, result: PacketResult) -> str:
    pf, cond = nm.facts, nm.failed
    kind = cond.kind
    if kind == "iif":
        return f"the packet arrived on {pf.iif}"
    if kind == "oif":
        return f"the packet leaves by {pf.oif}"
    where = f", which is not in set {cond.value}" if cond.value.startswith("@") else ""
    if kind == "saddr":
        return f"the packet comes from {pf.src}{where}"
    if kind == "daddr":
        return f"the packet is addressed to {pf.dst}{where}"
    if kind == "proto":
        return f"the packet is {pf.proto.value}"
    if kind == "dport":
        return f"the packet is for port {pf.dport}{where}"
    if kind == "sport":
        return f"the packet comes from port {pf.sport}{where}; a client picks its source port, so no fix is offered"
    if kind == "state":
        return f"conntrack state of the packet: {(pf.ct_state or 'unknown').upper()}"
    if kind == "family":
        return f"table {nm.rule.family} {nm.rule.table} sees {_FAMILY_NAME.get(nm.rule.family, 'another family')}, the probe is IPv{pf.family}"
    if kind == "chain":
        if cond.value == "input":
            return "the packet was forwarded (DNAT or routing): it goes through FORWARD, never INPUT"
        return "the packet is delivered locally: it goes through INPUT, never FORWARD"
    if kind == "entry":
        if nm.zone is not None:
            zone, land = nm.zone
            return (f"the rule is in firewalld zone {zone}, whose binding the packet does not meet; it lands in "
                    f"zone {land} ({nm.zone_why})")
        return f"the packet never entered chain {nm.rule.chain}: the jump `{nm.entry_rule.display if nm.entry_rule else '?'}` needs it"
    return "the packet does not have it"


# ---------------------------------------------------------------------------------------------
# Where the copy goes, and the command


def _fix(nm: NearMiss, result: PacketResult, ruleset: Ruleset) -> tuple[Optional[str], str]:
    rule, cond, pf = nm.rule, nm.failed, nm.facts
    ipt = rule.ipt is not None
    words = ipt_words(rule.ipt) if ipt and rule.ipt else _nft_words(rule.text)
    if cond.kind in ("family", "chain", "entry"):
        return _move(nm, result, ruleset, words, ipt)
    if cond.kind == "proto":
        body = _replace_proto(words, cond, pf, ipt)
    else:
        new = _new_condition(cond, pf, ipt)
        body = replace_span(words, cond, new, quote=ipt) if new else None
    if cond.kind == "state" and pf.ct_state == "untracked" and body is not None:
        # As the untracked finding says: accepting packets conntrack does not track is stateless
        # filtering, the admin's call, so the changed condition is named but not pasted.
        return None, (f"the rule would match with {_new_condition(cond, pf, ipt)} instead of {cond.text}: that accepts "
                      "the service's packets without connection tracking, the admin's call (see the untracked "
                      "finding); or remove the NOTRACK rule")
    if body is None:
        if cond.kind == "state" and pf.ct_state == "invalid":
            return None, ("no fix offered: conntrack found the packet INVALID, and accepting INVALID packets is not "
                          "a fix (see the conntrack-invalid finding)")
        return None, ""
    pos = _position(rule, result, pf)
    return _command(rule.family, rule.table, rule.chain, _backend(ruleset, rule), body, pos, ipt), \
        f"add the same rule with {_new_condition(cond, pf, ipt) or pf.proto.value} instead of {cond.text}, every other condition kept"


def _nft_words(text: str) -> list[str]:
    from tracer.ruleset.match.nft import _Cursor

    return list(_Cursor(text).toks)


def _placement(rule: Rule, result: PacketResult, pf: PacketFacts) -> tuple[Rule, str]:
    """(the rule to insert a copy of `rule` before, why that alone is not enough or ""): before the
    deciding rule when it comes first in the same chain and blocks the service for everyone (as a
    shadowed ACCEPT is moved), else before `rule` itself. A targeted block (a ban) or a jump the
    packet left the chain by first is never jumped over: the fix then says it is not enough alone."""
    from tracer.diagnose.nearmiss import catch_all, left_at

    left = left_at(result).get((rule.family, rule.table, rule.chain))
    if left is not None and left.number < rule.number:
        return rule, (f"the packet never gets to rule {rule.number}: it left {rule.chain} at rule {left.number} "
                      f"`{left.display}` and was decided there, so this fix alone is not enough")
    dec = _same_chain(result.decided_by, rule)
    if dec is not None and dec.number < rule.number:
        if catch_all(dec, pf):
            return dec, ""
        return rule, (f"rule {dec.number} `{dec.display}` blocks this client first (a targeted block), so this fix "
                      "alone is not enough")
    return rule, ""


def _position(rule: Rule, result: PacketResult, pf: Optional[PacketFacts] = None) -> Rule:
    return _placement(rule, result, pf)[0] if pf is not None else rule


def _backend(ruleset: Ruleset, rule: Rule) -> Backend:
    t = ruleset.table(rule.family, rule.table)
    return t.backend if t is not None else Backend.NFT


def _command(family: str, table: str, chain: str, backend: Backend, body: str, pos: Optional[Rule], ipt: bool = True) -> str:
    """`body` is iptables words (ipt) or nft rule text; nft text always goes through nft."""
    if backend is Backend.NFT or not ipt:
        where = f"{family} {table} {chain}"
        if pos is not None and pos.handle is not None:
            return f"nft insert rule {where} position {pos.handle} {body}"
        return f"nft add rule {where} {body}"
    tool = ("ip6tables" if family == "ip6" else "iptables") + ("-legacy" if backend is Backend.IPTABLES_LEGACY else "")
    t = "" if table == "filter" else f"-t {table} "
    if pos is None:
        return f"{tool} {t}-A {chain} {body}"
    return f"{tool} {t}-I {chain} {pos.number} {body}"


def _move(nm: NearMiss, result: PacketResult, ruleset: Ruleset, words: list[str], ipt: bool) -> tuple[Optional[str], str]:
    """The same rule where the packet goes: its own family, its hook's chain, or the chain it enters."""
    rule, cond, pf = nm.rule, nm.failed, nm.facts
    ref = result.decided_by
    body = " ".join(shlex.quote(w) for w in words) if ipt else " ".join(words)
    if cond.kind == "entry" and nm.zone is not None:
        land = nm.zone[1]
        allow = ruleset.chain(rule.family, rule.table, f"filter_IN_{land}_allow")
        if allow is None:
            return None, ""
        client = f"{'ip' if pf.family == 4 else 'ip6'} saddr {pf.src} " if _source_bound(cond) else ""
        return f"nft insert rule {rule.family} {rule.table} {allow.name} {client}{body}", ""
    if cond.kind == "entry" and nm.entry_rule is not None:
        return _before_jump(nm, result, ruleset, body, ipt)
    if cond.kind == "family":
        fam = "ip6" if pf.family == 6 else "ip"
        if ipt:
            target = (fam, rule.table, rule.chain)
            pos = ref.rule if ref is not None and ref.rule is not None and \
                (ref.family, ref.table, ref.chain) == target else None
            return (_command(fam, rule.table, rule.chain, Backend.IPTABLES_NFT, body, pos, ipt),
                    f"the same rule for IPv{pf.family} ({'ip6tables' if fam == 'ip6' else 'iptables'})")
        if ref is not None and ref.rule is not None and ref.family in (fam, "inet") and not ref.legacy and \
                _backend(ruleset, ref.rule) is Backend.NFT:
            return (_command(ref.family, ref.table, ref.chain, Backend.NFT, body, ref.rule, False),
                    f"the same rule in {ref.family} {ref.table} {ref.chain}, which sees IPv{pf.family}")
        if ref is not None and ref.rule is None and ref.family in (fam, "inet"):
            return (_command(ref.family, ref.table, ref.chain, Backend.NFT, body, None, False),
                    f"the same rule in {ref.family} {ref.table} {ref.chain}, which sees IPv{pf.family}")
        return None, f"make table {rule.family} {rule.table} an inet table, or copy the rule to a table of family {fam}"
    return _to_hook(nm, result, ruleset, words, ipt)


def _before_jump(nm: NearMiss, result: PacketResult, ruleset: Ruleset, body: str, ipt: bool) -> tuple[Optional[str], str]:
    """The jump the packet does not take, folded into the rule: the jump's own conditions (the failed
    one changed to what the packet has) plus the rule's, in the jumping chain, before whatever
    there takes the packet elsewhere first (the jump it does take, the deciding rule)."""
    from tracer.ruleset.match.conditions import conditions as conds_of
    from tracer.diagnose.nearmiss import catch_all

    e, cond, pf = nm.entry_rule, nm.failed, nm.facts
    assert e is not None
    if (e.ipt is not None) != ipt:
        return None, ""
    jconds = [c for c in conds_of(e, pf) if c.kind not in ("family", "module", "statement")]
    words = ipt_words(e.ipt) if ipt and e.ipt else _nft_words(e.text)
    kept = []
    for c in jconds:
        if c.text == cond.text and c.result is False:
            new = _new_condition(c, pf, ipt)
            if new is None:
                return None, ""
            kept.append(new)
        else:
            kept.append(" ".join(shlex.quote(w) for w in words[c.start : c.end]) if ipt else c.text)
    if ipt and any(w in ("-m", "--match") for w in words[: max((c.end for c in jconds), default=0)]):
        return None, ""  # the jump's matches need their -m modules: not rebuilt here
    merged = _merge_ipt(kept, body) if ipt else " ".join(kept + [body])
    if merged is None:
        return None, ""
    text = merged
    changed = " (the failed one changed)" if cond.result is False and any(c.text == cond.text for c in jconds) else ""
    ref = result.decided_by
    if ref is not None and (ref.family, ref.table) == (e.family, e.table) and not ref.legacy:
        # Where the packet was decided, as a shadowed ACCEPT is moved: before a catch-all, or at
        # the end of a chain whose policy decided.
        if ref.rule is not None and (ref.rule.ipt is not None) == ipt and catch_all(ref.rule, pf):
            return (_command(e.family, e.table, ref.chain, _backend(ruleset, e), text, ref.rule, ipt),
                    f"add the rule to {ref.chain}, where the packet was decided, with the conditions of the jump it "
                    f"does not take{changed}")
        if ref.rule is None:
            return (_command(e.family, e.table, ref.chain, _backend(ruleset, e), text, None, ipt),
                    f"add the rule to {ref.chain}, whose policy decided, with the conditions of the jump it does not "
                    f"take{changed}")
    return (_command(e.family, e.table, e.chain, _backend(ruleset, e), text, _position(e, result, pf), ipt),
            f"add the rule to {e.chain}, which the packet goes through, with the conditions of the jump it does not take"
            + changed)


# iptables takes each of these once per rule ("multiple -o flags not allowed"): the long
# spellings name the same option.
_ONCE = {"-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o", "-s": "-s", "--source": "-s",
         "--src": "-s", "-d": "-d", "--destination": "-d", "--dst": "-d", "-p": "-p", "--protocol": "-p"}


def _merge_ipt(kept: list[str], body: str) -> Optional[str]:
    """The jump's conditions and the rule's words as one iptables rule: an option both have with
    the same value is said once (Docker's `-o docker0` jump to a rule with `-o docker0`); with
    different values the two could never match one packet: None."""
    have: dict[str, tuple[bool, str]] = {}
    for k in kept:
        w = shlex.split(k)
        neg = w[:1] == ["!"]
        w = w[1:] if neg else w
        if len(w) == 2 and w[0] in _ONCE:
            have[_ONCE[w[0]]] = (neg, w[1])
    words = shlex.split(body)
    out: list[str] = []
    i = 0
    while i < len(words):
        neg = words[i] == "!" and i + 1 < len(words) and words[i + 1] in _ONCE
        j = i + 1 if neg else i
        if words[j] in _ONCE and j + 1 < len(words) and _ONCE[words[j]] in have:
            if have[_ONCE[words[j]]] != (neg, words[j + 1]):
                return None
            i = j + 2
            continue
        out.append(words[i])
        i += 1
    return " ".join(kept + [shlex.join(out)])


def _same_chain(ref: Optional[RuleRef], rule: Rule) -> Optional[Rule]:
    if ref is not None and ref.rule is not None and (ref.family, ref.table, ref.chain) == (rule.family, rule.table, rule.chain):
        return ref.rule
    return None


def _to_hook(nm: NearMiss, result: PacketResult, ruleset: Ruleset, words: list[str], ipt: bool) -> tuple[Optional[str], str]:
    """INPUT rule, forwarded packet: the same rule in FORWARD (DOCKER-USER when Docker's there), for
    the address and port the packet has after DNAT; and the reverse for a FORWARD rule."""
    rule, cond = nm.rule, nm.failed
    ref = result.decided_by
    table = ruleset.table(rule.family, rule.table)
    if table is None:
        return None, ""
    hook = "forward" if cond.value == "input" else "input"
    if ipt:
        name = "DOCKER-USER" if hook == "forward" and table.chain("DOCKER-USER") else hook.upper()
        if table.chain(name) is None:
            return None, ""
    else:
        chain = next((c for c in table.chains if c.hook == hook), None)
        if chain is None:
            return None, ""
        name = chain.name
    body = _after_nat(words, nm, result, ipt) if hook == "forward" else (
        " ".join(shlex.quote(w) for w in words) if ipt else " ".join(words))
    pos: Optional[Rule] = None
    if ref is not None and ref.rule is not None and (ref.family, ref.table, ref.chain) == (rule.family, rule.table, name):
        pos = ref.rule
    elif name == "DOCKER-USER":
        pos = Rule(rule.family, rule.table, name, 1, None, "")
    cmd = _command(rule.family, rule.table, name, _backend(ruleset, rule), body, pos, ipt)
    return cmd, f"the same rule in {name}, the chain this packet goes through"


def _after_nat(words: list[str], nm: NearMiss, result: PacketResult, ipt: bool) -> str:
    """The rule's words with its destination port (and address) as the packet has them after DNAT."""
    from tracer.diagnose.context import seen

    h = seen(result)
    out = list(words)
    for i in range(len(out) - 1):
        if ipt and out[i] in ("--dport", "--destination-port"):
            out[i + 1] = str(h.dport)
        if ipt and out[i] in ("-d", "--destination", "--dst"):
            out[i + 1] = str(h.dst)
        if not ipt and out[i] == "dport" and out[i + 1] not in ("{", "!=") and out[i - 1] in ("tcp", "udp"):
            out[i + 1] = str(h.dport)
        if not ipt and out[i] == "daddr" and out[i - 1] in ("ip", "ip6"):
            out[i + 1] = str(h.dst)
    has_d = any(w in ("-d", "--destination", "--dst", "daddr") for w in out)
    text = " ".join(shlex.quote(w) for w in out) if ipt else " ".join(out)
    if not has_d:
        l3 = "ip" if h.dst.version == 4 else "ip6"
        text = f"-d {h.dst} {text}" if ipt else f"{l3} daddr {h.dst} {text}"
    return text

