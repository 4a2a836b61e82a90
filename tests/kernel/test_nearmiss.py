"""Near misses and --prove-fix on the real kernel, in namespaces the tests build and delete.

Each test loads a ruleset into the lab's server, probes it from the client namespace (a real
second host), checks the near-miss finding (rule, failed condition, fix) or the proof steps, and
that `nft -s list ruleset` and iptables-save / ip6tables-save are byte-identical afterwards.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import structlog

from tracer import system
from tracer.pipeline.driver import Run
from tracer.cli.lab import (
    BACKEND4,
    CLIENT4,
    SEED_RULESET,
    SERVER4,
    SERVER6,
    Lab,
    published_port,
)
from tracer.model import Finding, ProbeRequest, Proto
from tracer.report.outcome import ProbeReport
from tracer.pipeline.provefix import ProofStep, prove, runner

log = structlog.get_logger("test")
DATA = Path(__file__).resolve().parent.parent / "data"


def listing(lab: Lab) -> str:
    """The server's whole firewall as text: nft without state, and the iptables-save of both
    families without their date comments and traffic counters."""
    out = [lab.run(lab.server, ["nft", "-s", "list", "ruleset"]).stdout]
    for tool in ("iptables-save", "ip6tables-save"):
        text = lab.run(lab.server, [tool]).stdout
        out.append("\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")))
    return "\n".join(out)


def probe(lab: Lab, prove_fix: bool = False, on_extra: Optional[Callable[[], None]] = None,
          **kw: Any) -> tuple[ProbeReport, tuple[ProofStep, ...]]:
    kw.setdefault("netns", lab.server)
    kw.setdefault("from_netns", lab.client)
    kw.setdefault("dst", SERVER4)
    kw.setdefault("dport", 8080)
    before = listing(lab)
    report = Run(ProbeRequest(**kw), log).execute()
    steps: tuple[ProofStep, ...] = ()
    if prove_fix:
        report, steps = prove(report, log, runner(log), on_extra=on_extra)
    assert listing(lab) == before, "the firewall changed"
    assert report.cleanup_ok and report.ruleset_unchanged is True
    assert all(s.unchanged is True and not s.error for s in steps)  # each proving run proved its own cleanup
    return report, steps


def near(report: ProbeReport) -> list[Finding]:
    return [f for f in report.findings if f.code == "near-miss"]


def filt(*lines: str, policy: str = "ACCEPT") -> str:
    return f"*filter\n:INPUT {policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + "".join(
        f"{line}\n" for line in lines) + "COMMIT\n"


def test_accept_on_the_wrong_interface(lab: Lab) -> None:
    lab.iptables_restore(lab.server, filt("-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
                                          "-A INPUT -i eth1 -p tcp -m tcp --dport 8080 -j ACCEPT",
                                          "-A INPUT -j REJECT --reject-with icmp-host-prohibited"))
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == "-i eth1"
    assert "ip filter INPUT rule 2 `-A INPUT -i eth1 -p tcp -m tcp --dport 8080 -j ACCEPT`" in f.message
    assert "arrived on eth0" in f.message
    assert f.commands == ("iptables -I INPUT 2 -i eth0 -p tcp -m tcp --dport 8080 -j ACCEPT",)
    # The first blocking finding is the policy/blocked one or this near miss: either way one step proves it.
    assert [s.reached for s in steps] == [True]


def test_opened_in_iptables_only_with_an_ipv6_probe(lab: Lab) -> None:
    lab.iptables_restore(lab.server, filt("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT", "-A INPUT -j REJECT"))
    # Neighbour discovery must pass, or the client never sends the probe at all.
    lab.iptables_restore(lab.server, filt("-A INPUT -p ipv6-icmp -j ACCEPT", "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
                                          "-A INPUT -j REJECT"), ipv6=True)
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, dst=SERVER6, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == "table ip filter" and "IPv4 only" in f.message and "IPv6" in f.message
    assert f.commands == ("ip6tables -I INPUT 3 -p tcp -m tcp --dport 8080 -j ACCEPT",)
    assert [s.reached for s in steps] == [True] and steps[0].finding.code == "near-miss"
    assert "-s 2001:db8:1::2/128" in steps[0].narrowed


def test_opened_in_ip6tables_only_with_an_ipv4_probe(lab: Lab) -> None:
    lab.iptables_restore(lab.server, filt("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT", "-A INPUT -j REJECT"), ipv6=True)
    lab.iptables_restore(lab.server, filt("-A INPUT -j REJECT"))
    report, _ = probe(lab)
    [f] = near(report)
    assert f.failed_condition == "table ip6 filter" and "IPv6 only" in f.message
    assert f.commands == ("iptables -I INPUT 1 -p tcp -m tcp --dport 8080 -j ACCEPT",)


def test_accept_in_input_for_a_dnated_forwarded_packet(router_lab: Lab) -> None:
    lab = router_lab
    assert lab.backend is not None
    lab.iptables_restore(lab.server, published_port("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n"))
    lab.listen(lab.backend, Proto.TCP, 80)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == "chain INPUT (hook input)" and "FORWARD, never INPUT" in f.message
    assert f.commands == (f"iptables -A FORWARD -d {BACKEND4} -p tcp -m tcp --dport 80 -j ACCEPT",)
    # FORWARD's DROP policy also drops the backend's SYN-ACK: where the report sees that (the
    # reply must leave), the reply's fix is the next step.
    assert steps and steps[0].finding.code == "near-miss" and steps[-1].reached


def test_firewalld_port_open_in_a_zone_bound_to_another_source(lab: Lab) -> None:
    lab.nft(lab.server, (DATA / "nft-list-firewalld.txt").read_text())
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    [r] = report.results
    assert r.verdict.value == "reject" and r.decided_by is not None and r.decided_by.chain == "filter_IN_public"
    [f] = near(report)
    assert f.failed_condition == "ip saddr 10.0.0.0/8"
    assert "firewalld zone internal" in f.message and "lands in zone public" in f.message
    assert 'interface binding: `iifname "eth0"`' in f.message
    assert f.commands[0].startswith("firewall-cmd --zone=public --add-rich-rule='rule family=\"ipv4\" source address=\"192.0.2.2\"")
    assert [s.reached for s in steps] == [True] and "filter_IN_public_allow" in steps[0].narrowed
    assert f.proven is True


def test_state_new_accept_with_an_untracked_packet(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                         "-A PREROUTING -p tcp -m tcp --dport 8080 -j NOTRACK\n-A OUTPUT -p tcp -m tcp --sport 8080 -j NOTRACK\nCOMMIT\n"
                         + filt("-A INPUT -p tcp -m state --state NEW -m tcp --dport 8080 -j ACCEPT", "-A INPUT -j REJECT"))
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == "--state NEW" and "UNTRACKED" in f.message
    assert "--state NEW,UNTRACKED instead of --state NEW" in (f.fix or "") and f.commands == ()
    assert "untracked" in {x.code for x in report.findings}
    assert steps == ()  # nothing pasted, nothing to prove: stateless acceptance is the admin's call


def test_prove_fix_on_the_seed_ruleset_and_nothing_widened(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    lab.ip(lab.client, "addr", "add", "192.0.2.3/24", "dev", "eth0")
    others: list[str] = []

    def while_in_place() -> None:  # the narrowed fix is in: other clients must still be refused
        others.extend(_connect(lab, src) for src in ("192.0.2.3", str(CLIENT4)))

    report, steps = probe(lab, prove_fix=True, on_extra=while_in_place)
    [s] = steps
    assert s.reached and s.finding.code == "shadowed-rule"
    assert f"-s {CLIENT4}/32" in s.narrowed and "--sport" in s.narrowed
    shadow = next(f for f in report.findings if f.code == "shadowed-rule")
    assert shadow.proven is True and report.to_json()["findings"][0]["proven"] is True
    assert others == ["refused", "refused"]  # a second address, and the same address from another port


def test_two_blocks_in_a_row_first_not_enough_then_the_second_named(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.nft(lab.server, "table inet extra {\n chain input {\n  type filter hook input priority filter + 10; policy drop;\n"
                        "  ct state established,related accept\n  iifname \"lo\" accept\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    assert [s.reached for s in steps] == [False, True]
    assert steps[0].finding.code == "shadowed-rule"
    assert steps[0].blocked_by == "inet extra input policy DROP"
    assert steps[1].finding.code == "policy" and "inet extra input" in steps[1].narrowed
    assert next(f for f in report.findings if f.code == "shadowed-rule").proven is False


def test_cli_prove_fix_json(lab: Lab, capsys: Any) -> None:
    import json

    from tracer import cli

    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    before = listing(lab)
    rc = cli.main(["probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4),
                   "--prove-fix", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and listing(lab) == before
    assert doc["prove_fix"][0]["proven"] is True
    assert all("failed_condition" in f for f in doc["findings"])


def _connect(lab: Lab, src: str) -> str:
    with system.netns(lab.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.bind((src, 0))
        s.connect((str(SERVER4), 8080))
        return "connected"
    except (ConnectionRefusedError, OSError):
        return "refused"
    finally:
        s.close()


NFT_POLICY_DROP = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\ttcp dport 22 accept
\t}
}
"""


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_sigkill_while_the_narrowed_fix_is_in_then_cleanup_removes_it(lab: Lab, backend: str, tmp_path: Any,
                                                                      monkeypatch: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tracer.pipeline.driver import KILL_ENV

    monkeypatch.setenv("FWTRACE_RUN_DIR", str(tmp_path))  # this test's own journals
    if backend == "nft":
        lab.nft(lab.server, NFT_POLICY_DROP)
    else:
        lab.iptables_restore(lab.server, SEED_RULESET)
    before = listing(lab)
    argv = [sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns",
            lab.client, "--timeout", "0.5", "--prove-fix"]
    # The first run makes one change (its table); the proving run's second change is the narrowed rule.
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            env={**os.environ, KILL_ENV: "instrument-2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ":prove" in listing(lab)  # the narrowed rule (and the table) are still there
    cleaned = subprocess.run([sys.executable, "-m", "tracer", "cleanup", "--netns", lab.server], capture_output=True,
                             text=True, timeout=60)
    assert cleaned.returncode == 0, cleaned.stderr
    assert listing(lab) == before


def test_firewalld_source_zone_before_the_interface_zone_simulated_ingress(lab: Lab) -> None:
    """A client of 10.0.0.0/8 arriving on eth0 lands in the source-bound zone internal, so a port
    open in public (eth0's zone) does not apply; probed as simulated ingress, and proven."""
    import ipaddress

    text = (DATA / "nft-list-firewalld.txt").read_text().replace("tcp dport 22 accept # handle 127", "tcp dport 8443 accept # handle 127")
    lab.nft(lab.server, text)
    lab.listen(lab.server, Proto.TCP, 8443)
    lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))
    report, steps = probe(lab, from_netns=None, src=ipaddress.ip_address("10.1.2.3"), dport=8443, prove_fix=True)
    assert report.mode == "ingress"
    [f] = near(report)
    assert "lands in zone internal (source binding: `ip saddr 10.0.0.0/8`)" in f.message
    assert f.commands == ("firewall-cmd --zone=internal --add-port=8443/tcp",)
    assert [s.reached for s in steps] == [True] and "filter_IN_internal_allow" in steps[0].narrowed


def test_openwrt_style_zone_chain_for_another_interface(lab: Lab) -> None:
    """fw4-like: 8080 is open in input_lan (br-lan) only; the probe arrives on eth0 (input_wan)."""
    lab.nft(lab.server, (DATA / "nft-list-fw4.txt").read_text())
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == 'iifname "br-lan"'
    assert f.commands[0].endswith('iifname "eth0" tcp dport 8080 accept')
    assert [s.reached for s in steps] == [True] and steps[0].finding.code == "near-miss"


def test_client_not_in_the_named_set(lab: Lab) -> None:
    lab.nft(lab.server, "table inet fw {\n set admins {\n  type ipv4_addr\n  flags interval\n"
                        "  elements = { 10.0.0.0/8, 192.0.2.10 }\n }\n chain input {\n"
                        "  type filter hook input priority filter; policy drop;\n  ct state established,related accept\n"
                        "  ip saddr @admins tcp dport 8080 accept\n }\n}\n")
    lab.listen(lab.server, Proto.TCP, 8080)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.failed_condition == "ip saddr @admins" and f"{CLIENT4}, which is not in set @admins" in f.message
    assert f.commands[0].endswith(f"ip saddr {CLIENT4} tcp dport 8080 accept")
    assert [s.reached for s in steps] == [True] and steps[0].finding.code == "near-miss"


def test_docker_published_port_opened_in_input_belongs_in_docker_user(router_lab: Lab) -> None:
    lab = router_lab
    assert lab.backend is not None
    lab.iptables_restore(lab.server, published_port(
        ":DOCKER-USER - [0:0]\n-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n-A FORWARD -j DOCKER-USER\n"
        "-A DOCKER-USER -j RETURN\n"))
    lab.listen(lab.backend, Proto.TCP, 80)
    report, steps = probe(lab, prove_fix=True)
    [f] = near(report)
    assert f.commands == (f"iptables -I DOCKER-USER 1 -d {BACKEND4} -p tcp -m tcp --dport 80 -j ACCEPT",)
    assert steps and steps[0].finding.code == "near-miss" and steps[-1].reached
    assert "DOCKER-USER" in steps[0].narrowed


def test_netlink_chain_dump_finds_the_hooked_tables(lab: Lab) -> None:
    """The NFT_MSG_GETCHAIN dump near misses use, against what nft itself lists."""
    from tracer.system import listing

    lab.nft(lab.server, (DATA / "nft-list-firewalld.txt").read_text())
    lab.iptables_restore(lab.server, published_port())
    with system.netns(lab.server):
        found = set(listing.hooked_tables())
        by_nft = set(listing.filter_tables(system.run(["nft", "list", "chains"]).stdout))
    assert found == by_nft == {("inet", "firewalld"), ("ip", "filter"), ("ip", "nat")}
