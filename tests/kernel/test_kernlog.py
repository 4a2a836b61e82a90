"""Kernel-log evidence on the real kernel: iptables-legacy TRACE, LOG rules (--log), conntrack INVALID.

Each test loads iptables-legacy (x_tables) rules into a lab's server namespace, probes from the
client namespace and checks the verdict, the deciding rule's number and text as
`iptables-legacy -S` prints them, the findings, and that the legacy and nft rulesets and every
sysctl are back as they were (the autouse guard in conftest.py checks the global ones).
"""
from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from typing import Any, Iterator

import pytest
import structlog

from tracer import cli, system
from tracer.ruleset import snapshot
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, SERVER6, Lab
from tracer.model import EventKind, ProbeRequest, Proto, Ruleset
from tracer.pipeline.driver import Run
from tracer.report.outcome import ProbeReport
from tracer.plan import kernplan

log = structlog.get_logger("test")

MULTIPORT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m multiport --dports 22,80,8080 -j DROP
-A INPUT -p tcp -m tcp --dport 8443 -j ACCEPT
COMMIT
"""
MULTIPORT_RULE = "-A INPUT -p tcp -m multiport --dports 22,80,8080 -j DROP"

INVALID = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT
COMMIT
"""
INVALID_RULE = "-A INPUT -m conntrack --ctstate INVALID -j DROP"

NS_SYSCTLS = ("net.netfilter.nf_log.2", "net.netfilter.nf_log.10", "net.netfilter.nf_conntrack_log_invalid",
              "net.netfilter.nf_conntrack_tcp_loose")


def state(lab: Lab) -> dict[str, str]:
    """Everything of the server namespace a run may touch, counters and dates aside."""
    with system.netns(lab.server):
        out = {k: system.sysctl_get(k) or "" for k in NS_SYSCTLS}
        out["nft"] = "\n".join(line for line in system.run(["nft", "list", "ruleset"]).stdout.splitlines()
                               if "counter packets" not in line)
        # Tables without rules or policies are left out (x_tables instantiates the built-in
        # chains of a table on first use); tests/kernel/test_cleanup_proof.py compares in full.
        legacy = {f: system.run([kernplan.LEGACY_SAVE[f]]).stdout for f in ("ip", "ip6")}
        out["legacy"] = snapshot.legacy_listing(snapshot.with_legacy(Ruleset(), legacy))
    return out


def probe(lab: Lab, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("from_netns", lab.client)
    kw.setdefault("dst", SERVER4)
    kw.setdefault("timeout", 0.5)
    before = state(lab)
    report = Run(ProbeRequest(**kw), log).execute()
    assert state(lab) == before, "the run left the server namespace changed"
    assert report.cleanup_ok and report.leftover == (), report.leftover
    # The nft generations account for every transaction of the run, iptables-nft's --log rules
    # included; legacy tables, which have no generation, are compared listing to listing.
    assert report.ruleset_unchanged is True, report.generations
    assert report.legacy_unchanged in (None, True)
    return report


def codes(report: ProbeReport) -> set[str]:
    return {f.code for f in report.findings}


def finding(report: ProbeReport, code: str) -> Any:
    return next(f for f in report.findings if f.code == code)


def steps(report: ProbeReport) -> list[tuple[str, str, str, Any]]:
    [r] = report.results
    return [(s.event.kind.value, s.event.table, s.event.chain, s.rule.number if s.rule else s.event.number)
            for s in r.steps]


@pytest.fixture
def tcp_loose_off(lab: Lab) -> Iterator[None]:
    with system.netns(lab.server):  # per-namespace: the host's value is not touched
        system.sysctl_set("net.netfilter.nf_conntrack_tcp_loose", "0")
    yield


# ---------------------------------------------------------------------------------------------


def test_legacy_multiport_drop(lab: Lab, capsys: Any) -> None:
    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    status = cli.main(["probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client,
                       "--timeout", "0.5", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 1
    [p] = doc["packets"]
    assert p["verdict"] == "drop" and p["reply"] == "none"
    assert p["decided_by"] == {"kind": "rule", "family": "ip", "table": "filter", "chain": "INPUT", "rule_number": 2,
                               "handle": None, "rule": MULTIPORT_RULE, "backend": "iptables-legacy"}
    # raw PREROUTING holds one rule of the user's: TRACE says policy:2. The trace bit came from
    # fwtrace's own nft chain, so no TRACE rule of fwtrace's sits in the chain to subtract.
    assert [(e["kind"], e["table"], e["chain"], e.get("number"), e["source"]) for e in p["events"]] == [
        ("policy", "raw", "PREROUTING", 2, "kmsg"), ("rule", "filter", "INPUT", 2, "kmsg")]
    assert p["events"][0]["text"].startswith("TRACE: raw:PREROUTING:policy:2 IN=eth0 ")
    assert p["path"] == ["prerouting", "input"]
    c = doc["cleanup"]
    assert (c["ok"], c["leftover"], c["ruleset_unchanged"], c["legacy_unchanged"]) == (True, [], True, True)
    assert any("nf_log_all_netns=1" in n for n in doc["notes"])
    assert "mixed-backends" not in {f["code"] for f in doc["findings"]}


def test_legacy_ipv6_multiport_drop_by_flow_label(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter" + MULTIPORT.split("*filter")[1], ipv6=True, legacy=True)
    report = probe(lab, dport=80, dst=SERVER6)
    [r] = report.results
    assert r.verdict.value == "drop"
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert (r.decided_by.family, r.decided_by.chain, r.decided_by.rule.number) == ("ip6", "INPUT", 2)
    assert r.decided_by.rule.display == MULTIPORT_RULE
    assert all(f"FLOWLBL={r.spec.ident} " in s.event.text for s in r.steps)


def test_unbound_nf_log_backend_is_bound_for_the_run(lab: Lab) -> None:
    # With no logger bound for the family, TRACE lines go nowhere: fwtrace binds nf_log_ipv4 for
    # the run and puts NONE back (probe() checks the namespace's sysctls afterwards).
    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    with system.netns(lab.server):
        system.sysctl_set("net.netfilter.nf_log.2", "NONE")
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 2
    assert any("nf_log_ipv4" in n and "NONE" in n for n in report.notes)
    with system.netns(lab.server):
        assert system.sysctl_get("net.netfilter.nf_log.2") == "NONE"


def test_concurrent_run_keeps_the_global_switch(lab: Lab) -> None:
    # Another fwtrace run (registered like a live one) relies on nf_log_all_netns: this run must
    # neither turn it off at its end nor lose it; the last one to finish restores it.
    from tracer.system import shared

    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    before = system.sysctl_get(kernplan.ALL_NETNS)
    assert shared.acquire(kernplan.ALL_NETNS, "1", "0ther0ne", system.sysctl_get, system.sysctl_set) == before
    try:
        report = probe(lab, dport=8080)
        [r] = report.results
        assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 2
        assert any("already set by another running fwtrace" in n for n in report.notes)
        assert system.sysctl_get(kernplan.ALL_NETNS) == "1"
    finally:
        assert shared.release(kernplan.ALL_NETNS, "0ther0ne", system.sysctl_set)
    assert system.sysctl_get(kernplan.ALL_NETNS) == before


def test_legacy_user_chain(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CLIENT4)), legacy=True)
    report = probe(lab, dport=22)
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "icmp 3/3 port-unreachable"
    d = r.decided_by
    assert d is not None and d.rule is not None and d.legacy
    assert (d.chain, d.rule.number) == ("fail2ban-SSH", 2)
    assert d.rule.display == f"-A fail2ban-SSH -s {CLIENT4}/32 -j REJECT --reject-with icmp-port-unreachable"
    assert [s for s in steps(report) if s[1] == "filter"] == [("rule", "filter", "INPUT", 1), ("rule", "filter", "fail2ban-SSH", 2)]
    assert r.steps[-2].event.verdict == "jump fail2ban-SSH"
    assert "source-blocked" in codes(report)
    f = finding(report, "source-blocked")
    assert f.commands[0] == f"fail2ban-client set SSH unbanip {CLIENT4}"
    assert any(c.startswith("iptables-legacy -I fail2ban-SSH 2 ") for c in f.commands)


def test_legacy_seed_shadowed_fix_uses_iptables_legacy(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET, legacy=True)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 7
    assert finding(report, "shadowed-rule").commands == (
        "iptables-legacy -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT", "iptables-legacy -D INPUT 9")


def test_mixed_backends_legacy_drops(lab: Lab) -> None:
    # nftables accepts 8080 in its input chain; x_tables' filter INPUT (same hook, later
    # priority) drops it: both run, and accept in one base chain only means "go on".
    lab.nft(lab.server, "table inet fw {\n chain input {\n  type filter hook input priority -10; policy accept;\n"
                        "  tcp dport 8080 counter accept\n }\n}\n")
    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none"
    d = r.decided_by
    assert d is not None and d.rule is not None and d.legacy
    assert d.to_json() == {"kind": "rule", "family": "ip", "table": "filter", "chain": "INPUT", "rule_number": 2,
                           "handle": None,
                           "rule": MULTIPORT_RULE, "backend": "iptables-legacy"}
    seen = [(s.event.source, s.event.table, s.event.chain, s.event.verdict) for s in r.steps]
    # One timeline in hook order: raw (-300), then nft's input (-10), then x_tables filter (0).
    assert seen == [("kmsg", "raw", "PREROUTING", "accept"), ("nftrace", "fw", "input", "accept"),
                    ("kmsg", "filter", "INPUT", "drop")]
    mixed = finding(report, "mixed-backends")
    assert "iptables-legacy (x_tables: ip filter, ip raw)" in mixed.message and "inet fw" in mixed.message
    assert "iptables-legacy side" in mixed.message


def test_mixed_backends_nft_drops(lab: Lab) -> None:
    lab.nft(lab.server, "table inet filter {\n chain input {\n  type filter hook input priority -10; policy drop;\n }\n}\n")
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n", legacy=True)
    report = probe(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "drop"
    d = r.decided_by
    assert d is not None and not d.legacy and d.text == "policy DROP" and (d.family, d.table) == ("inet", "filter")
    assert "nf_tables side" in finding(report, "mixed-backends").message


def test_stray_ack_is_conntrack_invalid(lab: Lab, tcp_loose_off: None) -> None:
    lab.iptables_restore(lab.server, INVALID, legacy=True)
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, dport=8080, flags="A")
    [r] = report.results
    assert r.verdict.value == "drop" and r.reply.kind == "none"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.rule.number, d.rule.display) == (1, INVALID_RULE)
    assert r.conntrack == "none"
    inv = finding(report, "conntrack-invalid")
    assert "nf_conntrack_tcp_loose=0" in inv.message and "[A]" in inv.message
    assert f"rule 1 `{INVALID_RULE}` dropped it" in inv.message
    assert "shadowed-rule" not in codes(report)  # moving the ACCEPT up would let stray ACKs in


def test_bad_flag_combination_is_logged_by_conntrack(lab: Lab) -> None:
    lab.iptables_restore(lab.server, INVALID, legacy=True)
    report = probe(lab, dport=8080, flags="FPU")
    [r] = report.results
    assert r.verdict.value == "drop"
    ct = [s.event for s in r.steps if s.event.kind is EventKind.CONNTRACK]
    assert [e.text for e in ct] == ["invalid tcp flag combination"]
    # conntrack runs before filter (priority -200 < 0): its line comes before the drop.
    assert [s.event.kind.value for s in r.steps] == ["conntrack", "rule"]
    assert 'conntrack logged: "invalid tcp flag combination"' in finding(report, "conntrack-invalid").message


def test_log_rules_show_the_probe_and_keep_rule_numbers(lab: Lab) -> None:
    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    report = probe(lab, dport=8080, log="kmsg")
    [r] = report.results
    # Rule numbers are the snapshot's: fwtrace's LOG rule at the top of INPUT is not counted.
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert (r.decided_by.rule.number, r.decided_by.rule.display) == (2, MULTIPORT_RULE)
    assert steps(report) == [("log", "raw", "PREROUTING", None), ("policy", "raw", "PREROUTING", 2),
                             ("log", "filter", "INPUT", None), ("rule", "filter", "INPUT", 2)]
    logs = [s.event for s in r.steps if s.event.kind is EventKind.LOG]
    assert all(e.text.startswith(f"fwtrace:{report.run_id}:") and f" ID={r.spec.ident} " in e.text for e in logs)
    assert any("-j LOG --log-prefix" in rule and "-m limit" in rule for rule in report.instrumentation)


def test_log_rules_in_user_chain_and_with_iptables_nft(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CLIENT4)))  # iptables-nft
    report = probe(lab, dport=22, log="kmsg")
    [r] = report.results
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert (r.decided_by.chain, r.decided_by.rule.number) == ("fail2ban-SSH", 2)
    got = [(s.event.kind.value, s.event.chain, s.rule.number if s.rule else None) for s in r.steps]
    # The LOG rules' own nftrace events are dropped; their kernel-log lines remain, in hook order.
    assert got == [("log", "INPUT", None), ("rule", "INPUT", 1), ("log", "fail2ban-SSH", None), ("rule", "fail2ban-SSH", 2)]


def test_log_with_stray_ack_invalid(lab: Lab, tcp_loose_off: None) -> None:
    lab.iptables_restore(lab.server, INVALID, legacy=True)
    report = probe(lab, dport=8080, flags="A", log="kmsg")
    [r] = report.results
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 1
    # No raw table before the run: no LOG rule there, and none made (the trace bit comes from
    # fwtrace's own nft chain, not from a TRACE rule that would instantiate it).
    assert [s.event.kind.value for s in r.steps] == ["log", "rule"]
    assert r.path == ("prerouting", "input")
    assert "conntrack-invalid" in codes(report)


def test_nflog_rules_need_no_kernel_log(lab: Lab) -> None:
    # iptables-nft only: NFLOG over netlink, so /dev/kmsg is not read and no global sysctl is set.
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CLIENT4)))
    report = probe(lab, dport=22, log="nflog")
    [r] = report.results
    got = [(s.event.kind.value, s.event.source, s.event.chain, s.rule.number if s.rule else None) for s in r.steps]
    assert got == [("log", "nflog", "INPUT", None), ("rule", "nftrace", "INPUT", 1),
                   ("log", "nflog", "fail2ban-SSH", None), ("rule", "nftrace", "fail2ban-SSH", 2)]
    assert r.steps[0].event.iif == "eth0" and r.steps[0].event.hook == "input"
    assert report.evidence is not None and report.evidence.kmsg == () and report.evidence.nflog
    assert report.notes == ()
    assert any("-j NFLOG --nflog-group" in rule for rule in report.instrumentation)
    # four NFLOG rules (INPUT, FORWARD, OUTPUT, fail2ban-SSH) in and out: eight nft transactions
    assert report.own_commits == 8 and report.generations[2] - report.generations[0] == 10


def test_nflog_with_legacy_trace(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CLIENT4)), legacy=True)
    report = probe(lab, dport=22, log="nflog")
    [r] = report.results
    got = [(s.event.kind.value, s.event.source, s.event.chain, s.rule.number if s.rule else None) for s in r.steps]
    assert got == [("log", "nflog", "INPUT", None), ("rule", "kmsg", "INPUT", 1),
                   ("log", "nflog", "fail2ban-SSH", None), ("rule", "kmsg", "fail2ban-SSH", 2)]
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 2


def _send_raw(ns: str, packets: list[bytes], stop: threading.Event) -> None:
    with system.netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        while not stop.is_set():
            for p in packets:
                s.sendto(p, (str(SERVER4), 0))
            time.sleep(0.005)
    finally:
        s.close()


def test_unrelated_log_traffic_stays_out_of_the_timeline(lab: Lab) -> None:
    from scapy.layers.inet import IP, TCP

    rules = MULTIPORT.replace("-A INPUT -i lo -j ACCEPT\n",
                              "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 9999 -j LOG --log-prefix \"unrelated \"\n")
    lab.iptables_restore(lab.server, rules, legacy=True)
    sport = 45678
    # Other traffic logged at the same time: another port, and the probe's own ports and
    # addresses with other IPv4 ids (what the client's stack would send).
    noise = [bytes(IP(src=str(CLIENT4), dst=str(SERVER4), id=i) / TCP(sport=sport, dport=dport, flags="S"))
             for i, dport in ((1000, 9999), (1001, 8080), (1002, 8080))]
    stop = threading.Event()
    sender = threading.Thread(target=_send_raw, args=(lab.client, noise, stop))
    sender.start()
    try:
        report = probe(lab, dport=8080, sport=sport, log="kmsg")
    finally:
        stop.set()
        sender.join()
    [r] = report.results
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 3
    kinds = [(s.event.kind.value, s.event.chain) for s in r.steps]
    assert kinds == [("log", "PREROUTING"), ("policy", "PREROUTING"), ("log", "INPUT"), ("rule", "INPUT")]
    assert all(f" ID={r.spec.ident} " in s.event.text for s in r.steps)
    # The noise was there (the kernel log held the unrelated rule's lines), and fwtrace's LOG
    # rules, which match the probe's IPv4 id, logged none of the look-alikes (ids 1001, 1002).
    raw = b"".join(report.evidence.kmsg if report.evidence else ())
    assert b"unrelated " in raw and b" ID=1000 " in raw
    ours = [line for line in raw.split(b"\n") if f"fwtrace:{report.run_id}:".encode() in line]
    assert ours and all(f" ID={r.spec.ident} ".encode() in line for line in ours)


@pytest.mark.parametrize("phase", ["instrument-3", "instrument-5", "inject"])
def test_sigkill_then_cleanup_restores_global_sysctl_and_legacy_rules(lab: Lab, phase: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tracer.pipeline.driver import KILL_ENV

    lab.iptables_restore(lab.server, MULTIPORT, legacy=True)
    start = state(lab)
    global_before = system.sysctl_get(kernplan.ALL_NETNS)
    env = {**os.environ, KILL_ENV: phase}
    killed = subprocess.run([sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server,
                             "--from-netns", lab.client, "--timeout", "0.5", "--log", "kmsg"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Changes 1-3: the trace table, nf_conntrack_log_invalid, then the GLOBAL nf_log_all_netns.
    assert system.sysctl_get(kernplan.ALL_NETNS) == "1"
    if phase != "instrument-3":
        assert "fwtrace:" in lab.run(lab.server, ["iptables-legacy-save"]).stdout
    cleaned = subprocess.run([sys.executable, "-m", "tracer", "cleanup", "--netns", lab.server], capture_output=True,
                             text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "nf_log_all_netns" in cleaned.stdout
    assert system.sysctl_get(kernplan.ALL_NETNS) == global_before
    assert state(lab) == start


# ---------------------------------------------------------------------------------------------
# Kernel-log evidence with simulated ingress (the default mode since issue #5)

CUSTOMER = ipaddress.ip_address("203.0.113.5")


def test_legacy_rules_with_simulated_ingress(lab: Lab) -> None:
    # The probe arrives on eth0 from a made-up customer address; the legacy filter rejects it.
    lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n"
                         "-A INPUT -s 203.0.113.5/32 -i eth0 -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset\n"
                         "COMMIT\n", legacy=True)
    report = probe(lab, from_netns=None, src=CUSTOMER, dport=8080, log="nflog")
    assert report.mode == "ingress" and report.via == "eth0"
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "rst"
    assert r.decided_by is not None and r.decided_by.legacy and r.decided_by.rule is not None
    assert r.decided_by.rule.number == 1
    got = [(s.event.kind.value, s.event.source, s.event.chain) for s in r.steps if s.event.table == "filter"]
    assert got == [("log", "nflog", "INPUT"), ("rule", "kmsg", "INPUT")]
    assert r.steps[-1].event.iif == "eth0"
    assert report.legacy_unchanged is True


def test_nflog_in_iptables_nft_chains_with_simulated_ingress(lab: Lab) -> None:
    lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CUSTOMER)))
    report = probe(lab, from_netns=None, src=CUSTOMER, dport=22, log="nflog")
    assert report.mode == "ingress"
    [r] = report.results
    got = [(s.event.kind.value, s.event.source, s.event.chain, s.rule.number if s.rule else None) for s in r.steps]
    assert got == [("log", "nflog", "INPUT", None), ("rule", "nftrace", "INPUT", 1),
                   ("log", "nflog", "fail2ban-SSH", None), ("rule", "nftrace", "fail2ban-SSH", 2)]
    assert r.verdict.value == "reject" and report.ruleset_unchanged is True and report.own_commits == 8
