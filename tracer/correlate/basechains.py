"""Base-chain semantics: how each base chain a packet crossed let it go, and the verdict. No I/O.

netfilter runs every base chain registered at a hook, in priority order (nft chains at their
priority, x_tables tables at NF_IP_PRI_*). `accept` ends only the chain it is said in; the next
base chain still sees the packet and may drop it. A drop anywhere ends the packet. So a packet
is accepted only if every base chain it crossed let it through, and the interesting accept is
the one in a chain that would otherwise have dropped it (policy DROP), not the accept policy of
some unrelated chain.
"""
from __future__ import annotations

from typing import Optional

from tracer.ruleset.hooks import base_chain_of
from tracer.ruleset.match import rule_action
from tracer.model import (
    Action,
    Backend,
    EventKind,
    HookOutcome,
    RuleRef,
    Ruleset,
    Step,
    Verdict,
)


def _backend(ruleset: Ruleset, family: str, table: str, legacy: bool) -> Backend:
    if legacy:
        return Backend.IPTABLES_LEGACY
    t = ruleset.table(family, table)
    return t.backend if t is not None else Backend.NFT


def step_ref(step: Step, ruleset: Ruleset) -> RuleRef:
    """The rule of a step, or its chain's policy for a policy event."""
    ev = step.event
    backend = _backend(ruleset, ev.family, ev.table, ev.legacy)
    if ev.kind is EventKind.POLICY:
        chain = ruleset.chain(ev.family, ev.table, ev.chain, ev.legacy)
        policy = ev.action.action.value if ev.action is not None else (chain.policy if chain else None) or "?"
        return RuleRef(ev.family, ev.table, ev.chain, None, policy, backend)
    return RuleRef(ev.family, ev.table, ev.chain, step.rule, backend=backend)


def _step_verdict(step: Step) -> Optional[Verdict]:
    """accept / drop / reject when this step ended its base chain, else None."""
    ev = step.event
    v = ev.action
    if ev.kind is EventKind.RETURN or v is None or not v.ends_chain:
        return None
    if v.action is Action.DROP:
        return Verdict.REJECT if step.rule is not None and rule_action(step.rule) == "reject" else Verdict.DROP
    return Verdict.ACCEPT


def outcomes(steps: list[Step], ruleset: Ruleset) -> list[HookOutcome]:
    """Each base chain's outcome, in the order the packet crossed them (steps are merged in hook
    and priority order). Events of regular chains belong to the base chain that jumped there."""
    out: list[HookOutcome] = []
    current: Optional[tuple[tuple[str, str, str, bool], str, int]] = None
    closed = True
    for step in steps:
        ev = step.event
        if ev.kind not in (EventKind.RULE, EventKind.POLICY, EventKind.RETURN):
            continue
        key = (ev.family, ev.table, ev.chain, ev.legacy)
        base = base_chain_of(ruleset, step.event)
        if base is not None and (current is None or current[0] != key or closed):
            current, closed = (key, base[0], base[1]), False
        if current is None or closed or (ev.family, ev.table, ev.legacy) != (current[0][0], current[0][1], current[0][3]):
            continue
        verdict = _step_verdict(step)
        if verdict is not None:
            out.append(HookOutcome(step_ref(step, ruleset), current[1], current[2], verdict))
            closed = True
    return out


def _accept_rank(o: HookOutcome, ruleset: Ruleset) -> int:
    """Which accept explains a packet getting through: lower is better."""
    if o.ref.rule is None:
        return 3  # an accept policy: this chain had no objection, it let everything through
    chain = ruleset.chain(o.ref.family, o.ref.table, o.ref.chain, o.ref.legacy)
    if rule_action(o.ref.rule) != "accept":
        return 2  # DNAT and friends end their chain with accept, but decide nothing about filtering
    return 0 if chain is not None and (chain.policy or "").lower() == "drop" else 1


def decide(hooks: list[HookOutcome], ruleset: Ruleset, traced: bool, through: bool) -> tuple[Verdict, Optional[RuleRef]]:
    """The packet's verdict from its base chains' outcomes.

    A drop in any base chain decides. Otherwise, if the packet got `through` netfilter, it was
    accepted, decided by the accept rule of a chain whose policy would have dropped it, else by
    any accept rule, else by a policy; a packet that vanished without a drop has no verdict.
    """
    for o in hooks:
        if o.verdict in (Verdict.DROP, Verdict.REJECT):
            return o.verdict, o.ref
    if not through:
        return Verdict.UNKNOWN, None
    accepts = [o for o in hooks if o.verdict is Verdict.ACCEPT]
    if accepts:
        best = min(_accept_rank(o, ruleset) for o in accepts)
        return Verdict.ACCEPT, [o for o in accepts if _accept_rank(o, ruleset) == best][-1].ref
    # Traced by our own table but met no other chain: nothing in netfilter stopped it.
    return (Verdict.ACCEPT if traced else Verdict.UNKNOWN), None


def overridden(hooks: tuple[HookOutcome, ...]) -> Optional[tuple[HookOutcome, HookOutcome]]:
    """(an accept by a rule, the later drop that overrode it), when a base chain dropped the
    packet after another base chain's rule had accepted it."""
    drop = next((o for o in hooks if o.verdict in (Verdict.DROP, Verdict.REJECT)), None)
    if drop is None:
        return None
    before = hooks[: hooks.index(drop)]
    accept = next((o for o in reversed(before) if o.verdict is Verdict.ACCEPT and o.ref.rule is not None
                   and rule_action(o.ref.rule) == "accept"), None)
    return (accept, drop) if accept is not None else None
