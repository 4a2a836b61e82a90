"""Verdicts a ticket can rest on (issue 11): the reply's way out, every base chain of a hook,
and findings whose fixes never weaken the firewall. Each test builds its ruleset in a lab
namespace, probes it (from the client namespace, or simulated ingress), and checks the verdict,
the deciding chain, rule number and text, the reply, the findings and the unchanged ruleset.
"""
from __future__ import annotations

import ipaddress
import shlex
from typing import Any

import pytest
import structlog

from tracer.ruleset import compare
from tracer.pipeline.driver import Run
from tracer.cli.lab import CLIENT4, SERVER4, Lab
from tracer.model import ProbeRequest, Proto
from tracer.report.outcome import ProbeReport

log = structlog.get_logger("test")
CUSTOMER = ipaddress.ip_address("203.0.113.5")


def probe(lab: Lab, ingress: bool = False, **kw: Any) -> ProbeReport:
    """From the client namespace, or simulated ingress on eth0 from CUSTOMER (routed back via the client)."""
    kw.setdefault("netns", lab.server)
    kw.setdefault("dst", SERVER4)
    if ingress:
        kw.setdefault("src", CUSTOMER)
        if "default" not in lab.run(lab.server, ["ip", "route"]).stdout:
            lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
    else:
        kw.setdefault("from_netns", lab.client)
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    report = Run(ProbeRequest(**kw), log).execute()
    after = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    assert compare.leftover(before, after) == [], "ruleset changed by the probe"
    assert report.cleanup_ok and report.ruleset_unchanged is True
    return report


def codes(report: ProbeReport) -> set[str]:
    return {f.code for f in report.findings}


def finding(report: ProbeReport, code: str) -> Any:
    return next(f for f in report.findings if f.code == code)


def apply(lab: Lab, commands: tuple[str, ...]) -> None:
    for c in commands:
        lab.run(lab.server, shlex.split(c))


OUTPUT_POLICY_DROP = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT DROP [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 8080 -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
COMMIT
"""

OUTPUT_RULE_DROP = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
-A OUTPUT -o lo -j ACCEPT
-A OUTPUT -p tcp -m tcp --tcp-flags SYN,ACK SYN,ACK -j DROP
COMMIT
"""


@pytest.mark.parametrize("ingress", [False, True], ids=["from-netns", "ingress"])
def test_syn_ack_dropped_by_output_policy(lab: Lab, ingress: bool) -> None:
    lab.iptables_restore(lab.server, OUTPUT_POLICY_DROP)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, ingress=ingress, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.chain, d.rule.number) == ("INPUT", 5)
    assert d.rule.display == "-A INPUT -p tcp -m state --state NEW -m tcp --dport 8080 -j ACCEPT"
    back = r.reply_decided_by
    assert r.reply_verdict.value == "drop" and back is not None
    assert (back.chain, back.rule, back.policy) == ("OUTPUT", None, "drop")
    assert r.to_json()["reply_decided_by"]["rule"] == "policy DROP"
    assert codes(report) == {"reply-dropped"}
    assert not report.reached
    assert "the SYN was accepted (INPUT rule 5) but the SYN-ACK was dropped by OUTPUT policy DROP" in report.conclusions[0]
    fix = finding(report, "reply-dropped")
    # The ruleset's own style (-m state), scoped to the service's replies.
    assert fix.commands == ("iptables -I OUTPUT 1 -p tcp --sport 8080 -m state --state ESTABLISHED -j ACCEPT",)
    apply(lab, fix.commands)
    again = probe(lab, ingress=ingress, dport=8080)
    assert again.reached and again.results[0].reply_verdict.value == "accept"
    other = probe(lab, ingress=ingress, dport=22)  # port 22 accepted, no listener: its RST still dropped
    assert other.results[0].reply_dropped and not other.reached


@pytest.mark.parametrize("ingress", [False, True], ids=["from-netns", "ingress"])
def test_syn_ack_dropped_by_output_rule(lab: Lab, ingress: bool) -> None:
    lab.iptables_restore(lab.server, OUTPUT_RULE_DROP)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, ingress=ingress, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 1
    back = r.reply_decided_by
    assert back is not None and back.rule is not None and (back.chain, back.rule.number) == ("OUTPUT", 2)
    assert back.rule.display == "-A OUTPUT -p tcp -m tcp --tcp-flags SYN,ACK SYN,ACK -j DROP"
    assert codes(report) == {"reply-dropped"} and not report.reached
    assert "but the SYN-ACK was dropped by OUTPUT rule 2" in report.conclusions[0]
    fix = finding(report, "reply-dropped")
    assert fix.commands == ("iptables -I OUTPUT 2 -p tcp --sport 8080 -m conntrack --ctstate ESTABLISHED -j ACCEPT",)
    apply(lab, fix.commands)
    assert probe(lab, ingress=ingress, dport=8080).reached


def test_nft_reply_dropped_fix_in_nft_style(lab: Lab) -> None:
    lab.nft(lab.server, "table inet fw {\n chain input { type filter hook input priority 0; policy drop;\n"
            "  tcp dport 8080 accept\n }\n chain output { type filter hook output priority 0; policy drop;\n"
            "  oifname \"lo\" accept\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply_dropped and not report.reached
    back = r.reply_decided_by
    assert back is not None and (back.family, back.table, back.chain, back.policy) == ("inet", "fw", "output", "drop")
    fix = finding(report, "reply-dropped")
    assert fix.commands == ("nft insert rule inet fw output ct state established tcp sport 8080 accept",)
    apply(lab, fix.commands)
    assert probe(lab, dport=8080).reached


# ---------------------------------------------------------------------------------------------
# Targeted blocks: the fix addresses what matched, never "insert the ACCEPT above it".

SOURCE_BAN = """*filter
:INPUT DROP [0:0]
-A INPUT -s 203.0.113.0/24 -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""


def test_source_ban_before_accept_is_not_a_shadowed_rule(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SOURCE_BAN)
    lab.listen(lab.server, Proto.TCP, 22)
    report = probe(lab, ingress=True, dport=22)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.chain, d.rule.number) == ("INPUT", 1)
    assert d.rule.display == "-A INPUT -s 203.0.113.0/24 -j DROP"
    assert codes(report) == {"blocked-by-rule"}
    f = finding(report, "blocked-by-rule")
    assert "targeted block" in f.message and "-s 203.0.113.0/24" in f.message
    assert f.commands == ("iptables -I INPUT 1 -s 203.0.113.5/32 -p tcp --dport 22 -j ACCEPT",)
    apply(lab, f.commands)
    assert probe(lab, ingress=True, dport=22).reached
    # The rest of the banned network stays banned.
    neighbour = probe(lab, ingress=True, dport=22, src=ipaddress.ip_address("203.0.113.6"))
    assert neighbour.results[0].verdict.value == "drop" and not neighbour.reached


RECENT_THROTTLE = """*filter
:INPUT DROP [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name SSH --mask 255.255.255.255 --rsource
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 60 --hitcount 4 --name SSH --mask 255.255.255.255 --rsource -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""


def test_recent_throttle_below_threshold_then_tripped(lab: Lab) -> None:
    lab.iptables_restore(lab.server, RECENT_THROTTLE)
    lab.listen(lab.server, Proto.TCP, 22)
    below = probe(lab, ingress=True, dport=22)
    [r] = below.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack" and below.reached
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 4
    for _ in range(3):  # the client kept trying: three more hits on the list
        lab.run(lab.server, ["sh", "-c", f"echo +{CUSTOMER} > /proc/net/xt_recent/SSH"])
    tripped = probe(lab, ingress=True, dport=22)
    [r] = tripped.results
    assert r.verdict.value == "drop" and r.reply.kind == "none" and not tripped.reached
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.chain, d.rule.number) == ("INPUT", 3)
    assert "--update --seconds 60 --hitcount 4 --name SSH" in d.rule.display
    assert codes(tripped) == {"blocked-by-rule"}
    f = finding(tripped, "blocked-by-rule")
    assert "xt_recent list SSH with 4 or more hits within 60 s" in f.message
    assert f.commands == () and "wait 60 s" in f.fix and f"echo -{CUSTOMER} > /proc/net/xt_recent/SSH" in f.fix
    assert "-j ACCEPT" not in f.fix


NFT_SET_BAN = """table inet fw {
  set banned { type ipv4_addr; elements = { 203.0.113.5, 203.0.113.9 } }
  chain input {
    type filter hook input priority 0; policy drop;
    ip saddr @banned drop
    tcp dport 22 accept
  }
}
"""


def test_nft_set_ban(lab: Lab) -> None:
    lab.nft(lab.server, NFT_SET_BAN)
    lab.listen(lab.server, Proto.TCP, 22)
    report = probe(lab, ingress=True, dport=22)
    [r] = report.results
    assert r.verdict.value == "drop"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.family, d.table, d.chain, d.rule.number) == ("inet", "fw", "input", 1)
    assert d.rule.display == "ip saddr @banned drop"
    assert codes(report) == {"blocked-by-rule"}
    f = finding(report, "blocked-by-rule")
    assert "is in the set banned" in f.message
    assert f.commands == (f"nft delete element inet fw banned {{ {CUSTOMER} }}",)
    apply(lab, f.commands)
    assert probe(lab, ingress=True, dport=22).reached
    still = probe(lab, ingress=True, dport=22, src=ipaddress.ip_address("203.0.113.9"))
    assert still.results[0].verdict.value == "drop"


def test_ipset_ban(lab: Lab) -> None:
    lab.run(lab.server, ["ipset", "create", "blacklist", "hash:ip"])
    lab.run(lab.server, ["ipset", "add", "blacklist", str(CUSTOMER)])
    lab.run(lab.server, ["ipset", "add", "blacklist", "203.0.113.9"])
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set blacklist src -j DROP\n"
                                     "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n-A INPUT -j REJECT\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 22)
    report = probe(lab, ingress=True, dport=22)
    [r] = report.results
    d = r.decided_by
    assert r.verdict.value == "drop" and d is not None and d.rule is not None and d.rule.number == 1
    assert d.rule.display == "-A INPUT -m set --match-set blacklist src -j DROP"
    assert codes(report) == {"blocked-by-rule"}
    f = finding(report, "blocked-by-rule")
    assert "is in the set blacklist" in f.message and f.commands == (f"ipset del blacklist {CUSTOMER}",)
    apply(lab, f.commands)
    assert probe(lab, ingress=True, dport=22).reached
    assert probe(lab, ingress=True, dport=22, src=ipaddress.ip_address("203.0.113.9")).results[0].verdict.value == "drop"


# ---------------------------------------------------------------------------------------------
# Base chains: an accept ends only its own chain.

def two_tables(first: str, second: str) -> str:
    """Two tables with a base chain each on the input hook, at priority 0 and 10."""
    return (f"table inet a {{\n chain input {{ type filter hook input priority 0; policy accept;\n  {first}\n }}\n}}\n"
            f"table inet b {{\n chain input {{ type filter hook input priority 10; policy accept;\n  {second}\n }}\n}}\n")


def test_accept_then_reject_in_a_later_base_chain(lab: Lab) -> None:
    lab.nft(lab.server, two_tables("tcp dport 8080 accept", "tcp dport 8080 reject with tcp reset"))
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "rst" and not report.reached
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.table, d.chain, d.rule.number) == ("b", "input", 1)
    assert d.rule.display == "tcp dport 8080 reject with tcp reset"
    hooks = [(h["table"], h["hook"], h["priority"], h["verdict"], h["rule_number"], h["rule"]) for h in r.to_json()["hooks"]]
    assert hooks == [("a", "input", 0, "accept", 1, "tcp dport 8080 accept"),
                     ("b", "input", 10, "reject", 1, "tcp dport 8080 reject with tcp reset")]
    assert {"accept-overridden", "blocked-by-rule"} <= codes(report)
    over = finding(report, "accept-overridden")
    assert "inet a input (hook input, priority 0)" in over.message and "inet b input (hook input, priority 10)" in over.message
    assert "no-listener" not in codes(report)


def test_reject_then_accept_in_a_later_base_chain(lab: Lab) -> None:
    lab.nft(lab.server, two_tables("tcp dport 8080 reject with tcp reset", "tcp dport 8080 accept"))
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "rst"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.table, d.chain, d.rule.number) == ("a", "input", 1)
    # The packet never reached the second chain.
    assert [(h.ref.table, h.verdict.value) for h in r.hooks] == [("a", "reject")]
    assert "accept-overridden" not in codes(report) and "blocked-by-rule" in codes(report)


def test_accepted_by_every_base_chain_names_the_rule_that_mattered(lab: Lab) -> None:
    lab.nft(lab.server, "table inet a {\n chain input { type filter hook input priority -5; policy accept;\n"
            "  ip saddr 198.51.100.0/24 drop\n }\n}\n"
            "table inet b {\n chain input { type filter hook input priority 10; policy drop;\n  tcp dport 8080 accept\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and report.reached
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.table, d.rule.display) == ("b", "tcp dport 8080 accept")
    assert [(h.ref.table, h.priority, h.verdict.value, h.ref.text) for h in r.hooks] == [
        ("a", -5, "accept", "policy ACCEPT"), ("b", 10, "accept", "tcp dport 8080 accept")]


def test_iptables_nft_accepts_native_nft_drops(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    lab.nft(lab.server, "table inet firewalld {\n chain filter_INPUT { type filter hook input priority 10; policy drop;\n"
            "  ct state established,related accept\n  iifname \"lo\" accept\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and not report.reached
    d = r.decided_by
    assert d is not None and (d.family, d.table, d.chain, d.rule, d.policy) == ("inet", "firewalld", "filter_INPUT", None, "drop")
    assert [(h.ref.family, h.ref.table, h.ref.chain, h.verdict.value) for h in r.hooks] == [
        ("ip", "filter", "INPUT", "accept"), ("inet", "firewalld", "filter_INPUT", "drop")]
    assert r.hooks[0].ref.rule is not None and r.hooks[0].ref.rule.display == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
    assert codes(report) == {"accept-overridden", "policy"}
    assert "ip filter INPUT (hook input, priority 0)" in finding(report, "accept-overridden").message
    fix = finding(report, "policy")
    assert fix.commands == ("nft add rule inet firewalld filter_INPUT tcp dport 8080 accept",)
    apply(lab, fix.commands)
    assert probe(lab, dport=8080).reached


# ---------------------------------------------------------------------------------------------
# Every place that can drop is traced.

def test_user_base_chain_below_minus_1000(lab: Lab) -> None:
    lab.nft(lab.server, "table inet early {\n chain pre { type filter hook prerouting priority -2000; policy accept;\n"
            "  tcp dport 8080 drop\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none" and not report.reached
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number, d.rule.display) == ("inet", "early", "pre", 1, "tcp dport 8080 drop")
    assert [(h.hook, h.priority) for h in r.hooks] == [("prerouting", -2000)]
    assert r.path[0] == "prerouting"
    assert codes(report) == {"blocked-by-rule"}


def test_netdev_ingress_drop_on_the_arrival_device(lab: Lab) -> None:
    lab.nft(lab.server, 'table netdev ddos {\n chain ingress { type filter hook ingress device "eth0" priority -500; '
            "policy accept;\n  ip saddr 203.0.113.0/24 drop\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, ingress=True, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none" and not report.reached
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number) == ("netdev", "ddos", "ingress", 1)
    assert d.rule.display == "ip saddr 203.0.113.0/24 drop"
    assert r.path == ("ingress",)
    assert [(h.hook, h.priority, h.verdict.value) for h in r.hooks] == [("ingress", -500, "drop")]
    assert codes(report) == {"blocked-by-rule"}
    f = finding(report, "blocked-by-rule")
    assert "targeted block" in f.message
    assert f.commands == (f"nft insert rule netdev ddos ingress position {d.rule.handle} ip saddr {CUSTOMER} tcp dport 8080 accept",)
    # A client outside the banned network passes the ingress chain and reaches the service.
    assert probe(lab, ingress=True, dport=8080, src=ipaddress.ip_address("198.51.100.7")).reached


# ---------------------------------------------------------------------------------------------
# State and NAT

NOTRACK_STATE_NEW = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 8080 -j NOTRACK
COMMIT
*filter
:INPUT DROP [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 8080 -j ACCEPT
COMMIT
"""


def test_notrack_makes_state_new_never_match(lab: Lab) -> None:
    lab.iptables_restore(lab.server, NOTRACK_STATE_NEW)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none" and not report.reached
    d = r.decided_by
    assert d is not None and (d.table, d.chain, d.rule, d.policy) == ("filter", "INPUT", None, "drop")
    raw = next(s for s in r.steps if s.event.table == "raw")
    assert raw.rule is not None and raw.rule.display == "-A PREROUTING -p tcp -m tcp --dport 8080 -j NOTRACK"
    assert codes(report) == {"untracked", "near-miss"}  # near-miss: rule 2 failed only on its state (issue 12)
    assert finding(report, "near-miss").commands == ()
    u = finding(report, "untracked")
    assert "ip raw PREROUTING rule 1 `-A PREROUTING -p tcp -m tcp --dport 8080 -j NOTRACK`" in u.message
    assert "rule 2 `-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 8080 -j ACCEPT` looks for state NEW" in u.message
    assert u.commands == ()  # no ACCEPT to paste: opening it statelessly is the admin's call


REDIRECT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080
COMMIT
*filter
:INPUT DROP [0:0]
-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
"""


def test_redirect_shows_the_port_the_service_sees(lab: Lab) -> None:
    lab.iptables_restore(lab.server, REDIRECT)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=80)
    [r] = report.results
    # INPUT sees port 8080 after the REDIRECT, so the ACCEPT for port 80 does not match.
    assert r.verdict.value == "drop" and not report.reached
    d = r.decided_by
    assert d is not None and (d.chain, d.rule, d.policy) == ("INPUT", None, "drop")
    redirect = next(s for s in r.steps if s.event.table == "nat")
    assert redirect.rule is not None and redirect.rule.display == "-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 8080"
    assert finding(report, "policy").commands == ("iptables -A INPUT -p tcp --dport 8080 -j ACCEPT",)
    assert "tcp port 80 (redirected to port 8080)" in report.conclusions[0]
    apply(lab, finding(report, "policy").commands)
    fixed = probe(lab, dport=80)
    assert fixed.reached and fixed.results[0].reply.kind == "syn-ack"
    assert "tcp port 80 (redirected to port 8080) is reachable" in fixed.conclusions[0]


# ---------------------------------------------------------------------------------------------
# Honest modes

def test_docker_host_default_dst_is_the_address_the_sender_reaches(lab: Lab) -> None:
    """docker0 comes first in the target's address list; the client shares a subnet with eth1 only."""
    for ns in (lab.server, lab.client):
        lab.ip(ns, "addr", "flush", "dev", "eth0")
    lab.ip(lab.server, "link", "add", "docker0", "type", "bridge")
    lab.ip(lab.server, "addr", "add", "172.17.0.1/16", "dev", "docker0")
    lab.ip(lab.server, "link", "set", "docker0", "up")
    lab.run(lab.server, ["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", lab.client])
    for ns, addr in ((lab.server, "198.18.0.1/24"), (lab.client, "198.18.0.2/24")):
        lab.ip(ns, "addr", "add", addr, "dev", "eth1")
        lab.ip(ns, "link", "set", "eth1", "up")
    lab.iptables_restore(lab.server, "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    report = Run(ProbeRequest(dport=8080, netns=lab.server, from_netns=lab.client), log).execute()
    assert compare.leftover(before, lab.run(lab.server, ["nft", "list", "ruleset"]).stdout) == []
    assert report.cleanup_ok and report.ruleset_unchanged
    [r] = report.results
    assert str(r.spec.dst) == "198.18.0.1" and str(r.spec.src) == "198.18.0.2"
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack" and report.reached
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 1
    assert r.decided_by.rule.display == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
    assert report.findings == ()


def test_count_gives_one_conclusion(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j REJECT\nCOMMIT\n")
    report = probe(lab, dport=8080, count=3)
    assert len(report.results) == 3 and all(r.verdict.value == "reject" for r in report.results)
    assert report.conclusions == ("tcp port 8080 is blocked: ip filter INPUT rule 1 rejected it.",)
    assert not report.reached


def test_syn_ack_dropped_by_a_netdev_egress_chain(lab: Lab) -> None:
    """After POSTROUTING the skb keeps its trace flag: a netdev egress chain's drop is traced too."""
    lab.nft(lab.server, 'table netdev eg {\n chain out { type filter hook egress device "eth0" priority 0; policy accept;\n'
            "  tcp sport 8080 drop\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.decided_by is None  # no chain of the ruleset on the probe's way in
    assert r.reply.kind == "syn-ack" and not r.reply.captured and not report.reached
    back = r.reply_decided_by
    assert back is not None and back.rule is not None
    assert (back.family, back.table, back.chain, back.rule.number, back.rule.display) == ("netdev", "eg", "out", 1, "tcp sport 8080 drop")
    assert codes(report) == {"reply-dropped"}
    assert "but the SYN-ACK was dropped by netdev eg out rule 1" in report.conclusions[0]


@pytest.mark.parametrize("flags,port,status", [("S", 8080, 0), ("A", 8080, 0), ("A", 9090, 1), ("S", 9090, 1)])
def test_text_and_exit_status_agree(lab: Lab, capsys: Any, flags: str, port: int, status: int) -> None:
    """'reachable' in the text exactly when the exit status is 0: a stray ACK to a listening port
    is answered by its RST (reached), to a closed port by the kernel's RST (not reached)."""
    from tracer import cli

    lab.listen(lab.server, Proto.TCP, 8080)
    got = cli.main(["probe", "--dport", str(port), "--flags", flags, "--netns", lab.server, "--from-netns", lab.client])
    out = capsys.readouterr().out
    conclusion = _row(out, "conclusion")
    assert got == status, out
    assert (" is reachable" in conclusion) == (status == 0), conclusion


def _row(text: str, label: str) -> str:
    """The one row of the terminal report with this label, its wrapped lines joined."""
    lines = text.splitlines()
    [i] = [k for k, line in enumerate(lines) if line[2:].startswith(label + " ")]
    row = [lines[i][2 + len(label):].strip()]
    for line in lines[i + 1:]:
        if not line.startswith(" " * 14) or not line.strip():
            break
        row.append(line.strip())
    return " ".join(row)


def test_bridge_family_drop_is_traced(lab: Lab) -> None:
    """The server's eth0 is a bridge port and a bridge-family chain drops the probe before any IP
    hook. Measured here: its trace shows it (the report then needs no unobserved-chains caveat)."""
    lab.ip(lab.server, "addr", "flush", "dev", "eth0")
    lab.ip(lab.server, "link", "add", "br0", "type", "bridge")
    lab.ip(lab.server, "link", "set", "eth0", "master", "br0")
    lab.ip(lab.server, "addr", "add", f"{SERVER4}/24", "dev", "br0")
    lab.ip(lab.server, "link", "set", "br0", "up")
    lab.nft(lab.server, "table bridge guard {\n chain in { type filter hook input priority 0; policy accept;\n"
            f"  ip saddr {CLIENT4} drop\n }}\n}}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none" and not report.reached
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number, d.rule.display) == ("bridge", "guard", "in", 1, f"ip saddr {CLIENT4} drop")
    assert codes(report) == {"blocked-by-rule"}
