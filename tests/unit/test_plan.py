"""The instrumentation plan: only fwtrace's probes and their replies are traced, nothing is decided."""
from __future__ import annotations

import ipaddress
import re

import pytest

from tracer.model import PacketSpec, Proto
from tracer.plan.plan import (
    hook_of_chain,
    match_probe,
    match_replies,
    roles,
    trace_plan,
)

a = ipaddress.ip_address
SYN = PacketSpec(Proto.TCP, a("192.0.2.2"), a("192.0.2.1"), 40000, 8080, "S", 1234)
PING6 = PacketSpec(Proto.ICMP, a("2001:db8::2"), a("2001:db8::1"), 555, 1, "S", 99999)


def test_probe_match_pins_the_whole_flow_and_the_ip_id() -> None:
    assert match_probe(SYN) == "ip saddr 192.0.2.2 ip daddr 192.0.2.1 ip id 1234 tcp sport 40000 tcp dport 8080"
    assert match_probe(PING6) == (
        "ip6 saddr 2001:db8::2 ip6 daddr 2001:db8::1 ip6 flowlabel 99999 icmpv6 type echo-request icmpv6 id 555"
    )


def test_reply_matches_direct_reply_and_icmp_errors_quoting_the_probe() -> None:
    direct, errors = match_replies(SYN)
    assert direct == "ip daddr 192.0.2.2 tcp dport 40000"
    # 8 bytes ICMP header + 20 bytes quoted IPv4 header = bit 224: the quoted source port.
    assert errors.endswith("@th,224,16 40000")
    _, errors6 = match_replies(PING6)
    assert errors6.endswith("@th,416,16 555")  # (8 + 40 + 4) * 8: the quoted echo id


def test_plan_has_no_verdict_and_hooks_first() -> None:
    p = trace_plan("0badc0de", [SYN, PING6], 4242)
    assert p.table == "fwtrace_0badc0de"
    # Non-terminal: each rule jumps to a chain of ours that only sets the trace flag and returns;
    # the only other verdicts are the base chains' accept policies (nft runs every base chain).
    assert len(p.rules) == 12
    body = [line.strip() for line in p.batch.splitlines()
            if line.strip() and not line.strip().startswith(("table", "comment", "chain", "type", "}"))]
    for line in body:
        assert line == "meta nftrace set 1" or re.fullmatch(r".* jump (pre|out)\d+", line), line
        assert not re.search(r"\b(drop|reject|accept|queue|goto|return|dnat|snat|mark|ct)\b", line.split(" jump ")[0])
    assert p.batch.count("policy accept") == 5 and "priority -1000" in p.batch
    # The end-of-hook chains hold no rule at all: only their policy event marks the path.
    for name, hook in (("in_end", "input"), ("fwd_end", "forward"), ("post_end", "postrouting")):
        assert f"\tchain {name} {{\n\t\ttype filter hook {hook} priority 1000; policy accept;\n\t}}\n" in p.batch
    assert 'comment "fwtrace run 0badc0de pid 4242; safe to delete"' in p.batch
    assert p.undo == "delete table inet fwtrace_0badc0de\n"
    assert [e.role for e in p.entries] == ["probe", "reply", "reply"] * 2


def test_same_flow_twice_shares_the_reply_rule() -> None:
    second = PacketSpec(Proto.TCP, SYN.src, SYN.dst, SYN.sport, SYN.dport, "S", 777)
    p = trace_plan("0badc0de", [SYN, second], 1)
    assert len(p.entries) == 4
    assert p.entries[1].idents == frozenset({1234, 777})


def test_bad_run_id_is_refused() -> None:
    with pytest.raises(ValueError):
        trace_plan("x; flush ruleset", [SYN], 1)


def test_each_entry_has_its_own_chains_so_trace_events_name_their_role() -> None:
    p = trace_plan("deadbeef", [SYN], 1)
    assert {name: e.role for (table, name), e in roles(p).items() if table == "fwtrace_deadbeef"} == {
        "pre0": "probe", "out0": "probe", "pre1": "reply", "out1": "reply", "pre2": "reply", "out2": "reply",
    }
    assert p.batch.count("hook prerouting") == 1 and p.batch.count("hook output") == 1
    assert hook_of_chain("pre12") == "prerouting" and hook_of_chain("out0") == "output"
    assert hook_of_chain("prerouting") is None


def test_floors_put_fwtrace_below_every_chain() -> None:
    from tracer.plan.plan import floors

    text = """table inet early {
\tchain pre {
\t\ttype filter hook prerouting priority -2000; policy accept;
\t}
\tchain out {
\t\ttype filter hook output priority raw; policy accept;
\t}
}
table netdev ddos {
\tchain ing {
\t\ttype filter hook ingress device "eth0" priority -500; policy accept;
\t}
\tchain both {
\t\ttype filter hook ingress devices = { eth1, eth2 } priority filter; policy accept;
\t}
\tchain eg {
\t\ttype filter hook egress device "eth0" priority 0; policy accept;
\t}
}
table bridge br {
\tchain fwd {
\t\ttype filter hook forward priority -200; policy accept;
\t}
}
table inet fwtrace_0badc0de {
\tchain pre {
\t\ttype filter hook prerouting priority -3000; policy accept;
\t}
}
"""
    f = floors(text)
    assert f.priority("prerouting") == -2001 and f.priority("output") == -1000 and f.priority("input") == -1000
    assert dict(f.ingress) == {"eth0": -500, "eth1": 0, "eth2": 0} and f.priority("ingress", "eth0") == -1000
    assert f.unobserved == ("bridge br fwd (hook forward, priority -200)",)
    batch = trace_plan("0badc0de", [SYN], 1, f).batch
    assert "hook prerouting priority -2001;" in batch and 'hook ingress device "eth1" priority -1000;' in batch
    assert batch.count("hook ingress") == 3
