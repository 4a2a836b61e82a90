"""End-to-end probes on the real kernel, in namespaces each test builds and deletes (lab fixture).

Each test loads a ruleset into the lab's server namespace, probes it from the client namespace
(a real second host on a veth) and checks the verdict, the deciding chain, rule number and rule
text, the reply, the findings, and that the ruleset afterwards equals the one before.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any

import structlog

from tracer import cli, system
from tracer.pipeline import cmdcheck
from tracer.ruleset import compare
from tracer.cli.lab import (
    BACKEND4,
    CLIENT4,
    SEED_RULESET,
    SERVER4,
    SERVER6,
    Lab,
    published_port,
)
from tracer.model import ProbeRequest, Proto
from tracer.pipeline.driver import Run
from tracer.report.outcome import ProbeReport
from tracer.render import jsondoc, timeline

log = structlog.get_logger("test")


def probe(lab: Lab, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("from_netns", lab.client)
    kw.setdefault("dst", SERVER4)
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    report = Run(ProbeRequest(**kw), log).execute()
    after = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    assert compare.leftover(before, after) == [], "ruleset changed by the probe"
    assert report.cleanup_ok and report.leftover == ()
    assert report.ruleset_unchanged is True
    assert "fwtrace" not in after
    checked = cmdcheck.check(report, kw["netns"])  # every fix it prints, run by its tool on a copy
    assert checked.refused == () and checked.caveats == report.caveats, checked.caveats
    return report


def codes(report: ProbeReport) -> set[str]:
    return {f.code for f in report.findings}


def finding(report: ProbeReport, code: str) -> Any:
    return next(f for f in report.findings if f.code == code)


def test_seed_shadowed_accept_is_found(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "reject"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number) == ("ip", "filter", "INPUT", 7)
    assert d.rule.display == "-A INPUT -j REJECT --reject-with icmp-host-prohibited"
    assert r.reply.kind == "icmp 3/10 host-prohibited"
    assert r.path[:2] == ("prerouting", "input")
    # Rule 1 (the jump to fail2ban-SSH) only matches port 22: the first match is rule 7.
    numbers = [s.rule.number for s in r.steps if s.rule is not None]
    assert numbers == [7]
    shadow = finding(report, "shadowed-rule")
    assert "rule 8" in shadow.message and "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT" in shadow.message
    assert shadow.commands[0] == "iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT"
    assert not report.reached


def test_seed_fix_makes_port_reachable(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    fix = finding(probe(lab, dport=8080), "shadowed-rule")
    for command in fix.commands:
        lab.run(lab.server, command.split())
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert r.decided_by.rule.number == 7
    assert r.decided_by.rule.display == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
    assert report.reached
    listed = lab.run(lab.server, ["iptables", "-S", "INPUT"]).stdout.splitlines()
    assert listed.count("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT") == 1  # moved, not copied


def test_user_chain_decides(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CLIENT4)))
    report = probe(lab, dport=22)
    [r] = report.results
    assert r.verdict.value == "reject"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.chain, d.rule.number) == ("fail2ban-SSH", 2)
    assert d.rule.display == f"-A fail2ban-SSH -s {CLIENT4}/32 -j REJECT --reject-with icmp-port-unreachable"
    steps = [(s.event.chain, s.event.kind.value, s.rule.number if s.rule else None) for s in r.steps]
    assert steps == [("INPUT", "rule", 1), ("fail2ban-SSH", "rule", 2)]
    assert r.steps[0].event.verdict == "jump fail2ban-SSH"
    assert r.reply.kind == "icmp 3/3 port-unreachable"
    assert "source-blocked" in codes(report) and "shadowed-rule" not in codes(report)


def test_accepted_but_no_listener(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080, addr="127.0.0.1")
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply.kind == "rst"
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 1
    nl = finding(report, "no-listener")
    assert "127.0.0.1:8080" in nl.message
    assert not report.reached
    # the one-word outcome says what was found, not "blocked": the firewall let it through
    doc = jsondoc.document(report)
    assert (doc["outcome"], doc["packets"][0]["outcome"], doc["exit_status"]) == ("no-listener", "no-listener", 1)
    assert timeline.summary(report).startswith(f"NO-LISTENER {CLIENT4} -> ")


def test_open_port_answers_syn_ack_via_cli(lab: Lab, capsys: Any) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    status = cli.main(["probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    [p] = doc["packets"]
    assert p["verdict"] == "accept" and p["reply"] == "syn-ack"
    assert p["decided_by"] == {"kind": "rule", "family": "ip", "table": "filter", "chain": "INPUT", "rule_number": 1,
                               "handle": p["decided_by"]["handle"], "rule": "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT",
                               "backend": "iptables-nft"}
    assert isinstance(p["decided_by"]["handle"], int)
    assert doc["cleanup"]["ok"] is True and doc["cleanup"]["leftover"] == []
    assert doc["cleanup"]["ruleset_unchanged"] is True
    assert doc["findings"] == []


def test_udp_rejected_with_port_unreachable(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         "-A INPUT -p udp --dport 5353 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n")
    report = probe(lab, dport=5353, proto=Proto.UDP)
    [r] = report.results
    assert r.verdict.value == "reject"
    assert r.reply.kind == "icmp 3/3 port-unreachable"
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert r.decided_by.rule.display == "-A INPUT -p udp -m udp --dport 5353 -j REJECT --reject-with icmp-port-unreachable"
    # The ICMP error's own way out was traced too (it quotes the probe: matched by @th offsets).
    assert [(s.event.chain, s.event.verdict) for s in r.reply_steps] == [("OUTPUT", "accept")]


def test_ipv6_rejected_with_tcp_reset(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j REJECT --reject-with tcp-reset\nCOMMIT\n", ipv6=True)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080, dst=SERVER6)
    [r] = report.results
    assert r.spec.family == 6
    assert r.verdict.value == "reject" and r.reply.kind == "rst"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number) == ("ip6", "filter", "INPUT", 1)
    assert d.rule.display == "-A INPUT -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset"


def test_native_nft_policy_drop(lab: Lab) -> None:
    lab.nft(lab.server, """
table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname "lo" accept
        tcp dport 22 accept
    }
}
""")
    report = probe(lab, dport=8080, timeout=0.5)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none"
    d = r.decided_by
    assert d is not None and d.rule is None and (d.family, d.table, d.chain) == ("inet", "filter", "input")
    assert d.text == "policy DROP"
    assert r.to_json()["decided_by"]["rule_number"] is None
    pol = finding(report, "policy")
    assert pol.commands == ("nft add rule inet filter input tcp dport 8080 accept",)


def test_native_nft_rule_in_regular_chain(lab: Lab) -> None:
    lab.nft(lab.server, """
table inet filter {
    chain blocklist {
        ip saddr 192.0.2.0/24 counter drop
    }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport { 80, 8080 } jump blocklist
    }
}
""")
    report = probe(lab, dport=8080, timeout=0.5)
    [r] = report.results
    assert r.verdict.value == "drop"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.chain, d.rule.number, d.rule.text) == ("blocklist", 1, "ip saddr 192.0.2.0/24 counter drop")


def test_dnat_then_forward_policy_drop(router_lab: Lab) -> None:
    lab = router_lab
    lab.iptables_restore(lab.server, published_port("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n"))
    lab.listen(lab.backend or "", Proto.TCP, 80)
    report = probe(lab, dport=8080, timeout=0.5)
    [r] = report.results
    assert r.verdict.value == "drop"
    assert "forward" in r.path and "input" not in r.path
    d = r.decided_by
    assert d is not None and (d.table, d.chain, d.rule) == ("filter", "FORWARD", None) and d.text == "policy DROP"
    fw = finding(report, "forwarded")
    assert f"{BACKEND4}:80" in fw.message and "rule 1" in fw.message
    assert finding(report, "policy").commands == (f"iptables -A FORWARD -d {BACKEND4} -p tcp --dport 80 -j ACCEPT",)


def test_icmp_echo_and_local_probe(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p icmp -j DROP\nCOMMIT\n")
    remote = probe(lab, dport=0, proto=Proto.ICMP, timeout=0.5)
    [r] = remote.results
    assert r.verdict.value == "drop" and r.decided_by is not None and r.decided_by.rule is not None
    assert r.decided_by.rule.number == 2
    local = probe(lab, dport=0, proto=Proto.ICMP, from_netns=None, local=True, dst=ipaddress.ip_address(str(SERVER4)))
    [r] = local.results
    assert r.verdict.value == "accept" and r.reply.kind == "echo-reply"
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.display == "-A INPUT -i lo -j ACCEPT"
    assert "local-probe" in codes(local)


def test_output_path_decides_outgoing_probe(lab: Lab) -> None:
    """Sent from the server itself towards the client: OUTPUT decides, POSTROUTING never sees it."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         "-A OUTPUT -o lo -j ACCEPT\n-A OUTPUT -p tcp --dport 5432 -j REJECT --reject-with tcp-reset\nCOMMIT\n")
    report = probe(lab, dport=5432, from_netns=None, local=True, dst=CLIENT4, timeout=0.5)
    [r] = report.results
    assert r.path == ("output",)
    assert r.verdict.value == "reject"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.chain, d.rule.number, d.rule.display) == ("OUTPUT", 2, "-A OUTPUT -p tcp -m tcp --dport 5432 -j REJECT --reject-with tcp-reset")
    assert r.reply.kind == "rst"


def test_packet_dropped_outside_netfilter_is_not_called_accepted(router_lab: Lab) -> None:
    """rp_filter drops a source whose route back is via another link: no rule decided."""
    lab = router_lab
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", "198.51.100.2")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    lab.ip(lab.client, "addr", "add", "203.0.113.5/32", "dev", "eth0")
    with system.netns(lab.client):  # ARP from the client's own link address, or rp_filter eats the ARP too
        system.sysctl_set("net.ipv4.conf.all.arp_announce", "2")
    report = probe(lab, dport=8080, src=ipaddress.ip_address("203.0.113.5"), timeout=0.3)
    [r] = report.results
    assert r.verdict.value == "unknown" and r.decided_by is None  # the firewall's own verdict
    assert r.path == ("prerouting",)
    # the kernel's: from the counters, the route lookup with the arrival interface the trace saw
    assert r.kernel is not None and r.kernel.cause == "reverse-path filter"
    assert r.kernel.setting == "net.ipv4.conf.eth0.rp_filter=1" and r.final_verdict.value == "drop"
    assert "rp-filter" in codes(report) and "stack-drop" not in codes(report)


def test_reject_without_route_back_says_why_no_reply(lab: Lab) -> None:
    """Simulated ingress from a source this host has no route to: the REJECT decides, and its
    reply cannot even be sent; the report must say that, not blame ICMP rate limits."""
    lab.iptables_restore(lab.server, SEED_RULESET)
    report = Run(ProbeRequest(dport=8080, netns=lab.server, src=ipaddress.ip_address("203.0.113.5"), via="eth0",
                              dst=SERVER4, timeout=0.5), log).execute()
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "none"
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 7
    msg = finding(report, "reply-missing").message
    assert "no route back to 203.0.113.5" in msg and "rate-limits" not in msg
    assert report.cleanup_ok and report.ruleset_unchanged


def test_demo_end_to_end(capsys: Any) -> None:
    """The main job: its lab, the simulated customer's probe, the fix, the real client's probe."""
    assert cli.main(["demo", "--json"]) == 0
    demo = json.loads(capsys.readouterr().out)  # one document: every probe, the status it exits with
    assert demo["exit_status"] == 0 and len(demo["probes"]) == 2 and demo["applied"]
    doc, after = demo["probes"]
    assert doc["mode"] == "ingress" and "--prove-fix" in doc["command"]
    [p] = doc["packets"]
    assert p["summary"].startswith("tcp 203.0.113.5:") and p["verdict"] == "reject"
    assert p["decided_by"]["rule_number"] == 7 and p["reply"] == "icmp 3/10 host-prohibited"
    assert [f["code"] for f in doc["findings"]] == ["shadowed-rule"]
    assert doc["findings"][0]["proven"] is True and doc["prove_fix"][0]["proven"] is True
    assert doc["exit_status"] == 1  # that probe's own: blocked before the fix
    assert after["mode"] == "from-netns" and after["outcome"] == "reached" and after["exit_status"] == 0
