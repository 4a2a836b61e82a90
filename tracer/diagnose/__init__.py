"""Explain a verdict timeline: findings with a code, a message and a concrete fix. No I/O.

The checks live in `tracer.diagnose`; this module states which run and which wins. Each group
below yields at most one finding, the first of its checks that applies, because a later check
of the group would contradict it or offer a fix the earlier one rules out:

* rp-filter before stack-drop: both explain a probe that vanished after PREROUTING.
* conntrack-invalid, untracked, rp-filter-rule, policy, shadowed-rule, blocked-by-rule all explain
  the deciding rule: an INVALID or UNTRACKED probe is not a case for moving an ACCEPT (that would
  let stray or untracked packets in), a reverse-path check written as a rule is no source ban (its
  fix is the route back, not a whitelist), and shadowed-rule (a catch-all) excludes blocked-by-rule.
"""
from __future__ import annotations

from typing import Callable, Optional

from tracer.diagnose import nearfix
from tracer.diagnose import ebpf_findings
from tracer.diagnose import checks, decider, kernverdict, safe, service, targets
from tracer.diagnose import kernel as kernel_findings
from tracer.diagnose.context import (
    Context,
    Probe,
    nat_target,
    probe_of,
    seen,
    verb,
    where,
)
from tracer.model import Finding, PacketResult, Proto, Verdict

__all__ = ["Context", "diagnose", "conclusion", "reached", "nat_target", "seen", "REACHED_REPLIES"]

# One signature: every check gets the Probe (the result, the run's context, and the packet as the
# filter saw it: `seen`/`facts` after DNAT or REDIRECT, which is the port a socket is looked up on).
Check = Callable[[Probe], Optional[Finding]]

CHECKS: tuple[tuple[Check, ...], ...] = (
    (checks.local_probe,),
    (checks.rp_filter, checks.stack_drop),
    (checks.unobserved,),
    (checks.forwarded,),
    (checks.mixed_backends,),
    (checks.accept_overridden,),
    (decider.conntrack_invalid, decider.untracked, decider.reverse_path_rule, decider.policy, decider.shadowed_rule,
     decider.blocked_by_rule),
    (checks.reply_dropped,),
    (checks.reply_missing,),
    (checks.no_listener,),
    (kernel_findings.listener_address,),
    (kernel_findings.reply_elsewhere,),
    (service.closed_after_accept,),
    (service.selinux,),
)

# "Reached": the service's answer came back through the firewall. A SYN-ACK for a SYN, a UDP
# reply, an echo reply; for a stray ACK/FIN (no SYN) the RST of a listening port; for UDP,
# silence with no ICMP error counts too (a UDP service need not answer), and the text says so.
REACHED_REPLIES = ("syn-ack", "udp", "echo-reply")
NOT_REACHED = ("no-listener", "rp-filter", "reply-dropped", "unobserved-chains", "listener-address",
               "reply-elsewhere", "closed-after-accept", "selinux", "nfqueue-unbound", "tproxy-no-socket") \
    + ebpf_findings.NOT_REACHED + tuple(kernverdict.CODES.values())


# What a SYNPROXY, NFQUEUE or TPROXY rule's own finding (tracer/diagnose/targets.py) replaces: the
# probe did not vanish in the stack, and the rule is no block to accept the probe before.
BY_TARGET = ("stack-drop", "kernel-drop", "blocked-by-rule", "shadowed-rule", "unobserved-chains", "untracked",
             "conntrack-invalid", "closed-after-accept")


def diagnose(result: PacketResult, ctx: Context) -> list[Finding]:
    own = targets.finding(result)
    if own is not None:
        return [f for f in _diagnose(result, ctx) if f.code not in BY_TARGET] + [own]
    return _diagnose(result, ctx)


def _diagnose(result: PacketResult, ctx: Context) -> list[Finding]:
    p = probe_of(result, ctx)
    findings: list[Finding] = []
    for group in CHECKS:
        found = next((f for f in (check(p) for check in group) if f is not None), None)
        if found is not None:
            findings.append(found)
    # Near misses (tracer/diagnose/nearmiss.py): the ACCEPT rules meant for a blocked packet that failed one
    # condition; several may apply (nearest first), and they contradict none of the above.
    # A near miss whose rule the deciding rule comes before is none: that finding says so (safe.py).
    nms = nearfix.misses(p)
    blk = safe.block_of(p, nms)
    keep = [nm for nm in nms if blk is None or nm not in blk.unreached][: nearfix.MAX_SHOWN]
    findings.extend(nearfix.finding(nm, result, ctx.full_ruleset or ctx.ruleset) for nm in keep)
    # Each finding's intent, and its fixes scoped, safest first, in the owner's terms (safe.py).
    findings = safe.finish(p, findings, blk)
    # Last, the kernel's drop reasons (eBPF), when the run had them: they confirm, complete or
    # replace the findings above (a named cause replaces stack-drop); then the kernel verdict
    # (tracer/diagnose/kernverdict.py: eBPF, counters, routes, sysctls) is explained, or what was checked said.
    return kernel_findings.amend(result, ebpf_findings.amend(p, findings), p)


def reached(result: PacketResult, findings: list[Finding]) -> bool:
    """Did the probe get through to a service, and its answer back out through the firewall?"""
    t = result.target
    if t is not None and t.kind == "synproxy":  # synproxy's SYN-ACK is not the service's: a connection must say so
        return t.reached is True and not result.reply_dropped
    if t is not None and t.kind == "queue" and t.program is not None:  # the program let it through, or not
        return result.reply.kind in REACHED_REPLIES and result.reply.captured and not result.reply_dropped
    if result.verdict is not Verdict.ACCEPT or result.kernel is not None or result.reply_dropped \
            or any(f.code in NOT_REACHED for f in findings):
        return False
    spec = result.spec
    if not result.reply.captured:
        return False  # it got through netfilter but was never seen leaving (netdev egress, tc, ...)
    if spec.proto is Proto.TCP and "S" not in spec.flags.upper():
        return result.reply.kind == "rst"  # a listening port answers a stray ACK/FIN with a RST
    return result.reply.kind in REACHED_REPLIES or (spec.proto is Proto.UDP and result.reply.none)


def conclusion(result: PacketResult, findings: list[Finding]) -> str:
    spec, ref = result.spec, result.decided_by
    codes = {f.code for f in findings}
    subject = f"{spec.proto.value} port {spec.dport}" if spec.proto is not Proto.ICMP else "ping"
    dropped = kernel_findings.conclusion(result, subject) or targets.conclusion(result, subject)
    if dropped is not None:
        return dropped
    by_kernel = ebpf_findings.conclusion(result, findings)
    if by_kernel is not None:
        return by_kernel
    subject = f"{spec.proto.value} port {spec.dport}" if spec.proto is not Proto.ICMP else "ping"
    service = seen(result)
    if spec.proto is not Proto.ICMP and service.dport != spec.dport:  # REDIRECT / DNAT to another port
        subject += f" (redirected to port {service.dport})"
    if "closed-after-accept" in codes:  # the SYN-ACK came back: it got through, whatever the trace saw
        return (f"{subject} is open, but the service closes the connection at once: it refuses {spec.src} itself "
                "(see closed-after-accept).")
    if "rp-filter" in codes:
        return f"{subject} is blocked before the firewall: the kernel's reverse-path filter dropped the probe after PREROUTING."
    if result.verdict is Verdict.UNKNOWN and "stack-drop" in codes:
        return f"{subject} is not reachable, but not because of a firewall rule: the kernel dropped the probe after {result.path[-1]}."
    if result.verdict is Verdict.UNKNOWN and "unobserved-chains" in codes:
        return "No traced chain saw the probe; a chain fwtrace cannot observe may have dropped it (see unobserved-chains)."
    if result.verdict is Verdict.UNKNOWN:
        return f"No trace of the probe was seen: it may not have reached {spec.dst} at all (routing, rp_filter, another host)."
    if "selinux" in codes:
        return f"The firewall lets {subject} through, but SELinux denied the service that port (see selinux)."
    if "no-listener" in codes:
        return f"The firewall lets {subject} through, but no service listens there."
    if result.reply_dropped and result.reply_decided_by is not None:
        return f"{subject} is not reachable: {_reply_story(result)}."
    if result.verdict is Verdict.ACCEPT and "reply-elsewhere" in codes:
        return (f"{subject} is not reachable from the probe's side: the {result.reply.kind} leaves by another "
                "interface than the one the probe arrived on (see reply-elsewhere).")
    if result.verdict is Verdict.ACCEPT:
        return _accepted(result, findings, subject)
    assert ref is not None
    if "conntrack-invalid" in codes:
        rule = f"rule {ref.rule.number}" if ref.rule else "policy"
        return (f"{subject}: conntrack found the probe INVALID and {where(ref)} {rule} {verb(result.verdict)} it; "
                f"a stray [{spec.flags}] packet says nothing about whether the port is open (probe with --flags S).")
    if "rp-filter-rule" in codes and ref.rule is not None:
        back = result.route_back
        how = (f"the route back to {spec.src} leaves by {back.dev}" if back is not None and back.dev
               else f"no route back to {spec.src}" if back is not None and back.error else "the route back")
        return (f"{subject} is blocked by a reverse-path check, not a ban of {spec.src}: {where(ref)} rule "
                f"{ref.rule.number} {verb(result.verdict)} it ({how}).")
    if "shadowed-rule" in codes:
        return f"{subject} is blocked: {ref.chain} rule {ref.rule.number if ref.rule else '?'} {verb(result.verdict)} it before the rule meant to accept it."
    if ref.rule is None:
        return f"{subject} is blocked: nothing in {where(ref)} accepted it and the chain's policy {ref.policy.upper() if ref.policy else ''} dropped it."
    return f"{subject} is blocked: {where(ref)} rule {ref.rule.number} {verb(result.verdict)} it."


def _reply_story(result: PacketResult) -> str:
    """`the SYN was accepted (INPUT rule 5) but the SYN-ACK was dropped by OUTPUT policy DROP`"""
    ref, back = result.decided_by, result.reply_decided_by
    assert back is not None
    by = f" ({ref.chain} {'rule ' + str(ref.rule.number) if ref.rule else 'policy ' + (ref.policy or '?').upper()})" \
        if ref is not None else ""
    out = f"rule {back.rule.number}" if back.rule else f"policy {(back.policy or '?').upper()}"
    chain = back.chain if back.table == "filter" else where(back)  # `OUTPUT policy DROP`, `netdev eg out rule 1`
    return (f"the {checks.probe_name(result.spec.proto, result.spec.flags)} was {verb(result.verdict)}{by} but the "
            f"{checks.reply_name(result.reply.kind)} was {verb(result.reply_verdict)} by {chain} {out}")


def _accepted(result: PacketResult, findings: list[Finding], subject: str) -> str:
    ref = result.decided_by
    by = f" ({where(ref)}: {ref.text})" if ref else ""
    if reached(result, findings):
        if result.spec.proto is Proto.UDP and result.reply.none:
            return (f"{subject} is reachable as far as this host can tell: the firewall accepted the probe{by} and no "
                    "ICMP error came back (the service sent no UDP reply, which many UDP services do not).")
        return f"{subject} is reachable: the firewall accepted the probe{by} and the reply was {result.reply.kind}."
    return (f"{subject} is not reachable: the firewall accepted the probe{by} but the reply was {result.reply.kind}, "
            "not the service's answer.")




def overall(conclusions: list[str], reached_each: list[bool]) -> str:
    """One conclusion for all packets of a run (--count N), saying so when they differ. The
    run counts as reached only if every packet did (the exit status follows this)."""
    distinct = list(dict.fromkeys(conclusions))
    if len(distinct) <= 1:
        return distinct[0] if distinct else "no probe was sent."
    n, k = len(conclusions), sum(reached_each)
    head = (f"the {n} probes did not all fare alike: {k} of {n} reached the service, so it is not reliably reachable"
            if k else f"none of the {n} probes reached the service, for different reasons")
    return head + ": " + "; ".join(f"packet {i}: {c}" for i, c in enumerate(conclusions, 1))
