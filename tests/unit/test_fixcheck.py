"""What tracer/pipeline/fixcheck.py copies and runs to check a printed fix, and the report without the
refused ones (the checks themselves run on the kernel: tests/kernel/test_fixcheck.py)."""
from __future__ import annotations

import dataclasses

from tracer.pipeline.fixcheck import Check, empty_tables, plan, printed, without
from tracer.model import Finding
from tracer.render import jsondoc

from tests.unit.test_report import report_of


def test_plan_copies_the_table_the_command_names() -> None:
    assert plan("iptables -t nat -I PREROUTING 1 -j ACCEPT") == Check(
        "iptables -t nat -I PREROUTING 1 -j ACCEPT", "iptables", ("iptables-save", "-t", "nat"), ("iptables-restore",),
        ("iptables", "-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT"))
    c = plan("ip6tables-legacy -I INPUT 2 -p tcp --dport 80 -j ACCEPT")
    assert c is not None and c.save == ("ip6tables-legacy-save", "-t", "filter") and c.load == ("ip6tables-legacy-restore",)
    n = plan('nft insert rule inet filter input position 5 iifname "eth0" tcp dport 80 accept')
    assert n is not None and n.save == ("nft", "list", "table", "inet", "filter")
    # As a shell hands it over when pasted: the quotes are the shell's.
    assert n.argv == ("nft", "insert", "rule", "inet", "filter", "input", "position", "5", "iifname", "eth0",
                      "tcp", "dport", "80", "accept")
    assert plan("nft delete element inet crowdsec ips { 203.0.113.5 }").save == ("nft", "list", "table", "inet", "crowdsec")
    for other in ("ufw allow 80/tcp", "firewall-cmd --add-port=80/tcp", "nft list ruleset", "iptables 'unbalanced"):
        assert plan(other) is None or other.startswith("iptables")


def test_refused_commands_are_taken_out_of_the_report_and_named_in_a_caveat() -> None:
    report = report_of("seed-shadowed")
    assert printed(report), "the bundle prints a fix"
    cmd = printed(report)[0][0]
    out = without(report, {cmd: "iptables: Index of insertion too big."}, {})
    assert all(cmd not in seq for seq in printed(out)) and out.refused == (cmd,)
    assert all(cmd not in (f.fix or "") and cmd not in f.commands for f in out.findings)
    assert any("refused by iptables" in c and "Index of insertion too big" in c for c in out.caveats)
    # The owner's fix and JSON follow: the refused command is nowhere in what is printed but the caveat.
    doc = jsondoc.dumps(out)
    assert doc.count(cmd) == sum(c.count(cmd) for c in out.caveats)
    assert without(report, {}, {}) is report
    kept = without(report, {}, {cmd: "its table could not be copied: x"})
    assert kept.findings == report.findings and any("not checked" in c for c in kept.caveats)


def test_every_finding_command_is_in_the_printed_list() -> None:
    report = report_of("seed-shadowed")
    r = dataclasses.replace(report, findings=report.findings + (Finding("x", "m", "ufw allow 80/tcp", ("ufw allow 80/tcp",)),))
    assert ("ufw allow 80/tcp",) not in printed(r)
    assert set(printed(report)) >= {f.commands for f in report.findings if f.commands}


def test_empty_tables_puts_instantiated_tables_back_as_new() -> None:
    assert empty_tables([]) == ""
    assert empty_tables(["nat", "filter", "bogus"]) == (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
