"""Simulated ingress on the real kernel: the probe arrives on the server's eth0 from a made-up
remote address, with no second host sending it, and its replies never leave the server.

The lab's client namespace plays the wire on the other side of eth0: it sends nothing, and a
sniffer there proves that nothing of the probe's flow comes out of the server.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest
import structlog

from tracer import cli, system
from tracer.cli.lab import (
    BACKEND4,
    CLIENT4,
    CLIENT6,
    SEED_RULESET,
    SERVER4,
    SERVER6,
    Lab,
    published_port,
)
from tracer.model import ProbeRequest, Proto
from tracer.packet import parse_headers
from tracer.pipeline.driver import KILL_ENV, Run
from tracer.report.outcome import ProbeReport

log = structlog.get_logger("test")
a = ipaddress.ip_address
CUSTOMER = a("203.0.113.5")
CUSTOMER6 = a("2001:db8:ffff::5")

# No counters: `nft list ruleset` must be byte-identical before and after.
NFT_RULES = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname "eth0" ip saddr 203.0.113.5 tcp dport 8080 accept
\t}
}
"""


def admin_egress_filter(lab: Lab, pref: int) -> None:
    """The admin's own tc setup on eth0 (a clsact qdisc, a u32 egress filter at `pref`): fwtrace
    must leave it exactly as it is, and it must keep working."""
    lab.run(lab.server, ["tc", "qdisc", "add", "dev", "eth0", "clsact"])
    lab.run(lab.server, ["tc", "filter", "add", "dev", "eth0", "egress", "pref", str(pref), "protocol", "all",
                         "u32", "match", "u32", "0", "0", "classid", "1:1"])


def routed(lab: Lab) -> Lab:
    """The server reaches the internet through the client side of eth0 (its default route)."""
    lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
    lab.ip(lab.server, "-6", "route", "add", "default", "via", str(CLIENT6))
    return lab


def ingress(lab: Lab, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("src", CUSTOMER)
    kw.setdefault("dst", SERVER4 if kw["src"] is None or kw["src"].version == 4 else SERVER6)
    report = Run(ProbeRequest(**kw), log).execute()
    assert report.cleanup_ok and report.leftover == ()
    return report


def codes(report: ProbeReport) -> set[str]:
    return {f.code for f in report.findings}


def state(lab: Lab, ns: str | None = None) -> list[str]:
    """Everything simulated ingress could change in a namespace, as the tools print it."""
    ns = ns or lab.server
    out = [lab.run(ns, argv).stdout for argv in (["ip", "-d", "link"], ["tc", "qdisc", "show"], ["nft", "list", "ruleset"],
                                                 ["ip", "route"], ["ip", "-6", "route"])]
    links = json.loads(lab.run(ns, ["ip", "-j", "link"]).stdout)
    for link in links:
        for where in ("ingress", "egress"):
            out.append(lab.run(ns, ["tc", "filter", "show", "dev", link["ifname"], where]).stdout)
    return out


class Sniffer:
    """Every frame that arrives on or leaves a namespace's interfaces (AF_PACKET, ETH_P_ALL)."""

    def __init__(self, lab: Lab, ns: str) -> None:
        with system.netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
        self.sock.setblocking(False)

    def frames(self, wait: float = 0.0) -> list[bytes]:
        time.sleep(wait)
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def of_flow(frames: list[bytes], *addrs: Any) -> list[bytes]:
    found = []
    for f in frames:
        h = parse_headers(f)
        if h is not None and ({h.src, h.dst} & set(addrs) or (h.inner is not None and {h.inner.src, h.inner.dst} & set(addrs))):
            found.append(f)
    return found


@pytest.fixture
def sniff(lab: Lab) -> Iterator[Sniffer]:
    s = Sniffer(lab, lab.client)
    yield s
    s.close()


def test_rule_on_eth0_and_source_decides(lab: Lab) -> None:
    routed(lab)
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n"
                         "-A INPUT -s 203.0.113.5/32 -i eth0 -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset\n"
                         "COMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = ingress(lab, dport=8080)
    assert report.mode == "ingress" and report.via == "eth0"
    [r] = report.results
    assert str(r.spec.src) == "203.0.113.5"
    assert r.verdict.value == "reject" and r.reply.kind == "rst"
    d = r.decided_by
    assert d is not None and d.rule is not None and (d.chain, d.rule.number) == ("INPUT", 1)
    assert d.rule.display == "-A INPUT -s 203.0.113.5/32 -i eth0 -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset"
    assert r.path[:2] == ("prerouting", "input")
    assert r.steps[0].event.iif == "eth0"
    assert "local-probe" not in codes(report)
    # Another source does not match the rule: the listener answers.
    other = ingress(lab, dport=8080, src=a("203.0.113.77"))
    [r] = other.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
    assert r.decided_by is not None and r.decided_by.rule is None and r.decided_by.policy == "accept"
    assert other.reached


def test_fail2ban_ban_of_the_source_decides(lab: Lab) -> None:
    routed(lab)
    lab.iptables_restore(lab.server, SEED_RULESET.replace("117.253.208.237", str(CUSTOMER)))
    report = ingress(lab, dport=22)
    [r] = report.results
    assert r.verdict.value == "reject" and r.reply.kind == "icmp 3/3 port-unreachable"
    d = r.decided_by
    assert d is not None and d.rule is not None
    assert (d.chain, d.rule.number) == ("fail2ban-SSH", 2)
    assert d.rule.display == f"-A fail2ban-SSH -s {CUSTOMER}/32 -j REJECT --reject-with icmp-port-unreachable"
    assert "blocked-by-rule" in codes(report)


def test_lo_accept_does_not_accept_the_simulated_packet(lab: Lab) -> None:
    routed(lab)
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n"
                         "-A INPUT -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    [r] = ingress(lab, dport=8080, timeout=0.5).results
    assert r.verdict.value == "drop" and r.reply.kind == "none"
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 2
    # The same probe sent locally is accepted by `-i lo`: what the old default reported.
    local = ingress(lab, dport=8080, src=None, local=True)
    [r] = local.results
    assert local.mode == "local"
    assert r.verdict.value == "accept" and r.decided_by is not None and r.decided_by.rule is not None
    assert r.decided_by.rule.display == "-A INPUT -i lo -j ACCEPT"
    assert "local-probe" in codes(local)


def test_rp_filter_drop_is_reported(router_lab: Lab) -> None:
    lab = routed(router_lab)
    with system.netns(lab.server):  # per-namespace sysctls of the lab's server
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    lab.listen(lab.server, Proto.TCP, 8080)
    behind_eth1 = a("198.51.100.77")  # its route back leaves by eth1
    report = ingress(lab, dport=8080, src=behind_eth1, via="eth0", timeout=0.5)
    [r] = report.results
    assert "input" not in r.path and "prerouting" in r.path
    assert "rp-filter" in codes(report) and not report.reached
    rp = next(f for f in report.findings if f.code == "rp-filter")
    assert "eth1" in rp.message and "eth0" in rp.message
    assert "reverse-path" in report.conclusions[0]
    # Loose mode lets it through; the reply leaves by eth1 and is caught there.
    bak = Sniffer(lab, lab.backend or "")
    try:
        with system.netns(lab.server):
            system.sysctl_set("net.ipv4.conf.all.rp_filter", "2")
            system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "2")
        report = ingress(lab, dport=8080, src=behind_eth1, via="eth0")
        [r] = report.results
        assert "rp-filter" not in codes(report) and r.reply.kind == "syn-ack"
        assert of_flow(bak.frames(0.1), behind_eth1) == []
    finally:
        bak.close()


def test_no_reply_escapes(lab: Lab, sniff: Sniffer) -> None:
    routed(lab)
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n"
                         "-A INPUT -p udp -m udp --dport 5353 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    kinds = []
    for kw in (dict(dport=8080), dict(dport=8081), dict(dport=5353, proto=Proto.UDP), dict(dport=0, proto=Proto.ICMP),
               dict(dport=8080, src=CUSTOMER6), dict(dport=0, proto=Proto.ICMP, src=CUSTOMER6)):
        [r] = ingress(lab, **kw).results  # type: ignore[arg-type]
        kinds.append(r.reply.kind)
    assert kinds == ["syn-ack", "rst", "icmp 3/3 port-unreachable", "echo-reply", "syn-ack", "echo-reply"]
    # The SYN-ACK was answered with the RST a real client would send: no half-open connection
    # is left to retransmit it after the run (the first retransmission would come after 1 s).
    assert "203.0.113.5" not in lab.run(lab.server, ["ss", "-tan"]).stdout
    assert of_flow(sniff.frames(1.2), CUSTOMER, CUSTOMER6) == []


def test_namespace_byte_identical_afterwards_with_a_clsact_already_there(lab: Lab, sniff: Sniffer) -> None:
    routed(lab)
    lab.nft(lab.server, NFT_RULES)
    admin_egress_filter(lab, pref=10)
    lab.listen(lab.server, Proto.TCP, 8080)
    before = state(lab)
    report = ingress(lab, dport=8080)
    [r] = report.results
    assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
    assert r.decided_by is not None and r.decided_by.rule is not None
    assert r.decided_by.rule.text == 'iifname "eth0" ip saddr 203.0.113.5 tcp dport 8080 accept'
    assert state(lab) == before
    assert of_flow(sniff.frames(0.05), CUSTOMER) == []


def test_cli_default_is_simulated_ingress(lab: Lab, capsys: Any) -> None:
    routed(lab)
    lab.nft(lab.server, NFT_RULES)
    lab.listen(lab.server, Proto.TCP, 8080)
    status = cli.main(["probe", "--dport", "8080", "--netns", lab.server, "--json", "--print-bpf"])
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert status == 0, out.err
    assert doc["mode"] == "ingress" and doc["via"] == "eth0" and doc["caveats"] == []
    [p] = doc["packets"]
    assert p["probe"]["src"] == "203.0.113.5" and p["reply"] == "syn-ack"
    assert "call bpf_redirect" in out.err and "reply catcher, tc egress of eth0" in out.err


def test_no_route_back_asks_for_via(lab: Lab) -> None:
    start = state(lab)
    with pytest.raises(Exception) as e:
        ingress(lab, dport=8080)
    assert "no route back to 203.0.113.5" in str(e.value) and "--via" in str(e.value)
    assert state(lab) == start


def test_sigkill_then_cleanup_removes_port_and_filters(lab: Lab) -> None:
    routed(lab)
    lab.nft(lab.server, NFT_RULES)
    start = state(lab)
    env = {**os.environ, KILL_ENV: "inject"}
    killed = subprocess.run([sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server,
                             "--timeout", "0.5"], capture_output=True, text=True, env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert state(lab) != start  # the veth, eth0's clsact and filter, the trace table are still there
    cleaned = subprocess.run([sys.executable, "-m", "tracer", "cleanup", "--netns", lab.server],
                             capture_output=True, text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "veth fwi" in cleaned.stdout and "clsact qdisc on eth0" in cleaned.stdout
    assert state(lab) == start


def kernel_has_tcx(lab: Lab) -> bool:
    from tracer.system import tcbpf

    with system.netns(lab.server):
        return tcbpf.tcx_count(socket.if_nametoindex("eth0"), "egress") is not None


def test_filter_at_pref_1_goes_through_tcx_or_falls_back(lab: Lab, monkeypatch: Any) -> None:
    """A filter at preference 1 runs before any classic filter fwtrace could add (a u32 match
    with a classid ends the walk, and no other kind can share its preference): on 6.6+ the
    reply catcher goes through tcx (which runs first); before 6.6 (Debian 12's 6.1, in
    scripts/vm-test), fall back to a local probe -- the reply of a made-up source would leave."""
    from tracer.system import simulate

    routed(lab)
    admin_egress_filter(lab, pref=1)
    lab.listen(lab.server, Proto.TCP, 8080)
    before = state(lab)
    if kernel_has_tcx(lab):
        report = ingress(lab, dport=8080)
        assert report.mode == "ingress" and report.caveats == ()
        [r] = report.results
        assert r.reply.kind == "syn-ack" and "captured" not in r.reply.summary
        assert state(lab) == before
    monkeypatch.setattr(simulate, "tcx_count", lambda ifindex, direction: None)  # a kernel before 6.6
    report = ingress(lab, dport=8080, src=None)
    assert report.mode == "local" and report.via is None
    [caveat] = report.caveats
    assert "simulated ingress on eth0 is not possible here" in caveat and "preference 1" in caveat
    [r] = report.results
    assert r.spec.src == SERVER4  # never the made-up address: its replies would leave the machine
    assert "local-probe" in codes(report)
    assert state(lab) == before


def test_kernel_refusal_midway_undoes_the_port_and_falls_back(lab: Lab, sniff: Sniffer, monkeypatch: Any) -> None:
    from tracer.system import simulate
    from tracer.system.tcbpf import IngressUnavailable

    def refuse(insns: Any, name: str) -> int:
        raise IngressUnavailable("bpf(BPF_PROG_LOAD) failed: Operation not permitted")

    monkeypatch.setattr(simulate, "load_sched_cls", refuse)
    routed(lab)
    before = state(lab)
    report = ingress(lab, dport=8080, src=None)
    assert report.mode == "local"
    assert "Operation not permitted" in report.caveats[0]
    assert state(lab) == before  # the veth and eth0's clsact, made before the refusal, are gone
    assert of_flow(sniff.frames(0.05), CUSTOMER) == []


def test_tcx_program_in_front_of_tc_is_overtaken(lab: Lab, sniff: Sniffer) -> None:
    """A tcx program (Cilium and friends, 6.6+) runs before every clsact filter, and TCX_PASS ends
    the walk: a classic reply catcher would never see the reply. fwtrace goes through tcx then."""
    from tracer.inject import bpfasm
    from tracer.system import tcbpf

    routed(lab)
    lab.listen(lab.server, Proto.TCP, 8080)
    with system.netns(lab.server):
        eth0 = socket.if_nametoindex("eth0")
        ok = [bpfasm.Insn(bpfasm.ALU64 | bpfasm.MOV | bpfasm.K, dst=0, imm=bpfasm.TC_ACT_OK), bpfasm.Insn(bpfasm.JMP | bpfasm.EXIT)]
        passing = tcbpf.load_sched_cls(ok, "test_pass")
        if tcbpf.tcx_count(eth0, "egress") is None:
            # Before 6.6 nothing can sit in front of tc (the attach is refused): the catcher is classic.
            with pytest.raises(tcbpf.IngressUnavailable, match="Invalid argument"):
                tcbpf.tcx_attach(eth0, "egress", passing)
            os.close(passing)
            report = ingress(lab, dport=8080)
            assert report.mode == "ingress" and report.results[0].reply.kind == "syn-ack"
            return
        link = tcbpf.tcx_attach(eth0, "egress", passing)
    os.close(passing)
    try:
        before = state(lab)
        report = ingress(lab, dport=8080)
        [r] = report.results
        assert r.reply.kind == "syn-ack" and "captured" not in r.reply.summary
        assert of_flow(sniff.frames(0.05), CUSTOMER) == []
        assert state(lab) == before
        with system.netns(lab.server):
            assert tcbpf.tcx_count(eth0, "egress") == 1  # the admin's program, still there and alone
    finally:
        os.close(link)


def test_dnat_forward_with_replies_from_a_backend_caught(router_lab: Lab, sniff: Sniffer) -> None:
    """A Docker-like published port: DNAT to a backend, FORWARD decides, and the backend's
    SYN-ACK, routed back out of eth0 towards the made-up client, is caught there too."""
    lab = routed(router_lab)
    lab.iptables_restore(lab.server, published_port(
        "-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT\n"
        f"-A FORWARD -s 203.0.113.0/24 -d {BACKEND4}/32 -p tcp -m tcp --dport 80 -j ACCEPT\n"))
    lab.listen(lab.backend or "", Proto.TCP, 80)
    report = ingress(lab, dport=8080, count=3)
    assert len(report.results) == 3
    for r in report.results:
        assert "forward" in r.path and r.verdict.value == "accept" and r.reply.kind == "syn-ack"
        assert [(s.event.chain, s.rule.number, s.event.verdict) for s in r.steps if s.rule is not None] == [
            ("PREROUTING", 1, "accept"), ("FORWARD", 2, "accept")]
        # The backend's SYN-ACK was forwarded back (conntrack: established) before being caught.
        assert ("FORWARD", "accept") in [(s.event.chain, s.event.verdict) for s in r.reply_steps]
    assert "forwarded" in codes(report)
    assert of_flow(sniff.frames(0.1), CUSTOMER) == []


def test_clsact_added_by_someone_else_meanwhile_is_left_alone(lab: Lab, monkeypatch: Any) -> None:
    """Between fwtrace's look at eth0 and its `tc qdisc add`, another program adds a clsact with a
    filter: the add fails, and the journaled undo of it must not delete the other program's qdisc."""
    from tracer.system import simulate

    real = simulate.plan_port

    def racing(via: str, back: Any) -> Any:
        plan = real(via, back)
        admin_egress_filter(lab, pref=10)
        return plan

    monkeypatch.setattr(simulate, "plan_port", racing)
    routed(lab)
    report = ingress(lab, dport=8080, src=None)
    assert report.mode == "local" and "clsact" in report.caveats[0]
    assert "pref 10" in lab.run(lab.server, ["tc", "filter", "show", "dev", "eth0", "egress"]).stdout
    assert "fwi" not in lab.run(lab.server, ["ip", "link"]).stdout


def test_two_simulated_ingress_runs_at_once(lab: Lab, sniff: Sniffer) -> None:
    """They take turns (a lock per namespace): both simulate ingress, both clean up, nothing leaks."""
    routed(lab)
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 22)
    before = state(lab)

    def start(port: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "tracer", "probe", "--netns", lab.server, "--json",
                                 "--dport", port, "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    for _ in range(2):
        a, b = start("8080"), start("22")
        docs = []
        for p in (a, b):
            out, err = p.communicate(timeout=300)  # slow guests of scripts/vm-test
            assert p.returncode in (0, 1), err
            docs.append(json.loads(out))
        da, db = docs
        assert da["mode"] == db["mode"] == "ingress" and da["caveats"] == db["caveats"] == []
        assert [p["reply"] for p in da["packets"]] == ["icmp 3/10 host-prohibited"] * 2
        assert [p["reply"] for p in db["packets"]] == ["syn-ack"] * 2
        assert da["cleanup"]["ok"] and db["cleanup"]["ok"]
    after = state(lab)
    assert after[:2] + after[3:] == before[:2] + before[3:]  # links and tc; the ruleset's counters moved
    assert of_flow(sniff.frames(0.05), CUSTOMER) == []
