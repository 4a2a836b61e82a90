"""Base-chain semantics (tracer.correlate.basechains): every base chain's outcome, and the verdict."""
from __future__ import annotations

from tracer.correlate import basechains
from tracer.model import (
    Backend,
    Chain,
    EventKind,
    Rule,
    Ruleset,
    Step,
    Table,
    TraceEvent,
    Verdict,
)


def chain(table: str, name: str, hook: str | None, prio: str | None, policy: str | None, *rules: str) -> Table:
    rs = tuple(Rule("inet", table, name, i, 10 + i, text) for i, text in enumerate(rules, 1))
    return Table("inet", table, (Chain("inet", table, name, hook, prio, policy, rs),), Backend.NFT)


RULESET = Ruleset((
    chain("a", "input", "input", "0", "accept", "tcp dport 8080 accept"),
    Table("inet", "b", (Chain("inet", "b", "input", "input", "10", "drop",
                              (Rule("inet", "b", "input", 1, 11, "tcp dport 22 accept"),
                               Rule("inet", "b", "input", 2, 12, "jump users"))),
                        Chain("inet", "b", "users", None, None, None,
                              (Rule("inet", "b", "users", 1, 21, "ip saddr 192.0.2.2 accept"),)))),
))


def step(table: str, ch: str, kind: EventKind, verdict: str, handle: int | None = None) -> Step:
    ev = TraceEvent(1, kind, "inet", table, ch, handle, verdict)
    rule = RULESET.rule_by_handle("inet", table, ch, handle) if handle else None
    return Step(ev, rule)


def test_accept_ends_only_its_own_chain() -> None:
    steps = [step("a", "input", EventKind.RULE, "accept", 11), step("b", "input", EventKind.POLICY, "drop")]
    hooks = basechains.outcomes(steps, RULESET)
    assert [(h.ref.table, h.hook, h.priority, h.verdict) for h in hooks] == [
        ("a", "input", 0, Verdict.ACCEPT), ("b", "input", 10, Verdict.DROP)]
    verdict, ref = basechains.decide(hooks, RULESET, traced=True, through=False)
    assert verdict is Verdict.DROP and ref is not None and (ref.table, ref.policy) == ("b", "drop")
    acc, drop = basechains.overridden(tuple(hooks)) or (None, None)
    assert acc is not None and drop is not None and acc.ref.table == "a" and drop.ref.table == "b"


def test_accept_by_a_regular_chain_is_its_base_chains_outcome() -> None:
    steps = [step("a", "input", EventKind.POLICY, "accept"), step("b", "input", EventKind.RULE, "jump users", 12),
             step("b", "users", EventKind.RULE, "accept", 21)]
    hooks = basechains.outcomes(steps, RULESET)
    assert [(h.ref.table, h.ref.chain, h.verdict) for h in hooks] == [("a", "input", Verdict.ACCEPT),
                                                                       ("b", "users", Verdict.ACCEPT)]
    verdict, ref = basechains.decide(hooks, RULESET, traced=True, through=True)
    # Not table a's accept policy: the rule that let it through a chain whose policy is DROP.
    assert verdict is Verdict.ACCEPT and ref is not None and ref.rule is not None and ref.rule.text == "ip saddr 192.0.2.2 accept"
    assert basechains.overridden(tuple(hooks)) is None


def test_vanished_without_a_drop_has_no_verdict() -> None:
    hooks = basechains.outcomes([step("a", "input", EventKind.RULE, "accept", 11)], RULESET)
    assert basechains.decide(hooks, RULESET, traced=True, through=False) == (Verdict.UNKNOWN, None)


def test_a_vanished_probe_names_the_chains_no_trace_shows() -> None:
    import ipaddress

    from tracer import diagnose
    from tracer.model import PacketResult, PacketSpec, Proto, Reply

    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 4000, 80, "S", 7)
    r = PacketResult(spec, Verdict.UNKNOWN, None, Reply("none"))
    ctx = diagnose.Context(Ruleset(), (), False, unobserved=("bridge guard in (hook input, priority 0)",))
    fs = diagnose.diagnose(r, ctx)
    assert [f.code for f in fs] == ["unobserved-chains"] and "bridge guard in (hook input, priority 0)" in fs[0].message
    assert "a chain fwtrace cannot observe may have dropped it" in diagnose.conclusion(r, fs)
    assert "routing" in diagnose.conclusion(r, diagnose.diagnose(r, diagnose.Context(Ruleset(), (), False)))
