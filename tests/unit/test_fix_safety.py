"""Property: no suggested fix weakens the firewall for anybody but the probed client and service.

Rulesets are generated from the kinds of rules real tools write (bans by source, sets, xt_recent
throttles, catch-all REJECTs, accepts per port); the probe's verdict is computed with fwtrace's
own match interpreters, diagnosed, and every command of every finding is applied to the model.
Then, for every other generated source address and port: the verdict is unchanged, except
where the textbook fix meant for a catch-all or a policy opens the service for everybody (and
there only if no targeted rule had blocked that source before).
"""
from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field, replace
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from tracer import diagnose
from tracer.ruleset.match import PacketFacts, rule_action, rule_matches
from tracer.ruleset.match.scope import is_catch_all
from tracer.model import (
    Backend,
    Chain,
    EventKind,
    PacketResult,
    PacketSpec,
    Proto,
    Reply,
    Rule,
    RuleRef,
    Ruleset,
    Step,
    Table,
    TraceEvent,
    Verdict,
)

PORTS = (22, 80, 8080)
NETS = ("203.0.113.0/24", "203.0.113.0/28", "198.51.100.0/24", "0.0.0.0/0")
RULES = st.one_of(
    st.builds(lambda n: f"-s {n} -j DROP", st.sampled_from(NETS + ("203.0.113.5/32", "203.0.113.200/32"))),
    st.builds(lambda p: f"-p tcp -m tcp --dport {p} -j ACCEPT", st.sampled_from(PORTS)),
    st.builds(lambda n, p: f"-s {n} -p tcp -m tcp --dport {p} -j ACCEPT", st.sampled_from(NETS), st.sampled_from(PORTS)),
    st.builds(lambda p: f"-p tcp -m tcp --dport {p} -j DROP", st.sampled_from(PORTS)),
    st.just("-j REJECT --reject-with icmp-host-prohibited"),
    st.just("-i eth1 -j DROP"),
    st.builds(lambda p: f"-p tcp -m tcp --dport {p} -m recent --update --seconds 60 --hitcount 4 --name SSH -j DROP",
              st.sampled_from(PORTS)),
    st.just("-m set --match-set banned src -j DROP"),
)
ADDRS = st.builds(lambda a, b: ipaddress.ip_address(f"{a}.{b}"), st.sampled_from(("203.0.113", "198.51.100", "192.0.2")),
                  st.integers(1, 254))


@dataclass
class Model:
    """An INPUT chain plus the state its stateful matches read (the ban set, the recent list)."""

    lines: list[str]
    policy: str
    banned: set[str] = field(default_factory=set)
    recent: set[str] = field(default_factory=set)  # addresses over the throttle's hit count

    def ruleset(self) -> Ruleset:
        rules = tuple(Rule("ip", "filter", "INPUT", i, None, "", f"-A INPUT {line}") for i, line in enumerate(self.lines, 1))
        chain = Chain("ip", "filter", "INPUT", "input", "filter", self.policy, rules)
        return Ruleset((Table("ip", "filter", (chain,), Backend.IPTABLES_NFT),))

    def matches(self, rule: Rule, pkt: PacketFacts) -> bool:
        text = rule.ipt or ""
        state = True
        if "--match-set banned" in text:
            state, text = str(pkt.src) in self.banned, text.replace("-m set --match-set banned src ", "")
        if "-m recent" in text:
            state = str(pkt.src) in self.recent
            text = text.replace(" -m recent --update --seconds 60 --hitcount 4 --name SSH", "")
        return state and rule_matches(replace(rule, ipt=text), pkt) is True

    def decide(self, pkt: PacketFacts) -> tuple[Verdict, Optional[Rule]]:
        for rule in self.ruleset().tables[0].chains[0].rules:
            if self.matches(rule, pkt):
                action = rule_action(rule)
                return (Verdict.ACCEPT if action == "accept" else Verdict.DROP), rule
        return (Verdict.ACCEPT if self.policy == "accept" else Verdict.DROP), None

    def apply(self, command: str) -> None:
        argv = shlex.split(command)
        if argv[:2] == ["ipset", "del"]:
            self.banned.discard(argv[3])
            return
        assert argv[0] == "iptables" and argv[2] == "INPUT", command
        if argv[1] == "-D":
            del self.lines[int(argv[3]) - 1]
            return
        if argv[1] == "-A":
            self.lines.append(shlex.join(argv[3:]))
            return
        assert argv[1] == "-I", command
        pos, spec = (int(argv[3]), argv[4:]) if argv[3].isdigit() else (1, argv[3:])
        self.lines.insert(pos - 1, shlex.join(spec))


def facts(src: object, port: int) -> PacketFacts:
    return PacketFacts(4, Proto.TCP, src, ipaddress.ip_address("192.0.2.1"), 40000, port, "S", "eth0", None, "new")  # type: ignore[arg-type]


def result(model: Model, client: object, port: int) -> PacketResult:
    verdict, rule = model.decide(facts(client, port))
    spec = PacketSpec(Proto.TCP, client, ipaddress.ip_address("192.0.2.1"), 40000, port, "S", 1)  # type: ignore[arg-type]
    ref = RuleRef("ip", "filter", "INPUT", rule, None if rule else model.policy, Backend.IPTABLES_NFT)
    ev = TraceEvent(1, EventKind.RULE if rule else EventKind.POLICY, "ip", "filter", "INPUT",
                    verdict="accept" if verdict is Verdict.ACCEPT else "drop", iif="eth0")
    return PacketResult(spec, verdict, ref, Reply("none"), (Step(ev, rule),), ("prerouting", "input"))


@settings(max_examples=300, deadline=None)
@given(st.lists(RULES, min_size=1, max_size=7), st.sampled_from(("accept", "drop")), ADDRS, st.sampled_from(PORTS),
       st.lists(ADDRS, min_size=5, max_size=20), st.lists(ADDRS, max_size=3), st.lists(ADDRS, max_size=3))
def test_no_fix_weakens_the_firewall_for_others(lines: list[str], policy: str, client: object, port: int,
                                                 others: list[object], banned: list[object], throttled: list[object]) -> None:
    model = Model(list(lines), policy, {str(a) for a in banned} | {str(client)}, {str(a) for a in throttled} | {str(client)})
    r = result(model, client, port)
    findings = diagnose.diagnose(r, diagnose.Context(model.ruleset(), (), local=False, mode="ingress", via="eth0"))
    before = {(str(a), p): model.decide(facts(a, p)) for a in others for p in PORTS if a != client}
    fixed = Model(list(model.lines), policy, set(model.banned), set(model.recent))
    for f in findings:
        for c in f.commands:
            fixed.apply(c)
    for (addr, p), (verdict, rule) in before.items():
        after, _ = fixed.decide(facts(ipaddress.ip_address(addr), p))
        if after == verdict:
            continue
        # Only the textbook fixes for a catch-all or a policy may open the service for others, and
        # only the probed service, for a source no targeted rule had blocked.
        assert {f.code for f in findings} & {"shadowed-rule", "policy", "blocked-by-rule"}, (addr, p, findings)
        assert p == port, (addr, p, lines, findings)
        assert rule is None or is_catch_all(rule, "eth0"), (addr, p, rule, lines, findings)


def test_the_classic_shadowed_rule_still_gets_the_textbook_fix() -> None:
    model = Model(["-j REJECT --reject-with icmp-host-prohibited", "-p tcp -m tcp --dport 8080 -j ACCEPT"], "accept")
    client = ipaddress.ip_address("203.0.113.5")
    findings = diagnose.diagnose(result(model, client, 8080), diagnose.Context(model.ruleset(), (), False, via="eth0"))
    assert [f.code for f in findings] == ["shadowed-rule"]
    assert findings[0].commands == ("iptables -I INPUT 1 -p tcp -m tcp --dport 8080 -j ACCEPT", "iptables -D INPUT 3")
