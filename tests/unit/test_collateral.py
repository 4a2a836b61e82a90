"""--check-fixes, the pure part (tracer/pipeline/collateral.py, tracer/findings.py): which commands
a shadow runs, what counts as collateral, when it contradicts a fix's scope, how the report says it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema

from tracer.findings import Collateral, Finding, Fix, Sampled
from tracer.pipeline import collateral
from tracer.plan.shadow_result import Probe, Source
from tracer.plan import shadow
from tracer.render import jsondoc, timeline

from tests.unit.test_report import report_of

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schema" / "report.schema.json").read_text())
CLIENT = "192.0.2.2"
PROBES = [Probe(Source(CLIENT, "client"), 22, "tcp"), Probe(Source("192.0.2.3", collateral.NEIGHBOUR), 22, "tcp"),
          Probe(Source("198.51.100.1", "-s 198.51.100.0/24 in INPUT -j DROP"), 22, "tcp"),
          Probe(Source(CLIENT, "client"), 443, "tcp")]


def test_argv_runs_only_the_firewall_tools_and_the_xt_recent_write() -> None:
    assert collateral.argv("iptables -I INPUT 1 -s 192.0.2.2/32 -j ACCEPT") == \
        ["iptables", "-I", "INPUT", "1", "-s", "192.0.2.2/32", "-j", "ACCEPT"]
    assert collateral.argv('nft insert rule inet f input iifname "eth0" accept') == \
        ["nft", 'insert rule inet f input iifname "eth0" accept']
    assert collateral.argv("echo -192.0.2.2 > /proc/net/xt_recent/SSH") == ["sh", "-c", "echo -192.0.2.2 > /proc/net/xt_recent/SSH"]
    for no in ("ufw allow from 192.0.2.2", "fail2ban-client set sshd unbanip 192.0.2.2", "echo x > /etc/passwd",
               "iptables -F; rm -rf /", "iptables-save > /etc/iptables/rules.v4", "'unclosed"):
        assert collateral.argv(no) is None, no


def test_plan_uses_the_raw_equivalent_of_an_owners_command_and_says_so() -> None:
    own = Fix("client", "x", "t", ("ufw insert 1 allow from 192.0.2.2", "iptables -I ufw-user-input 1 -s 192.0.2.2 -j ACCEPT"),
              owner="ufw", raw="iptables -I ufw-user-input 1 -s 192.0.2.2 -j ACCEPT")
    argvs, note = collateral.plan(own)
    assert argvs == (("iptables", "-I", "ufw-user-input", "1", "-s", "192.0.2.2", "-j", "ACCEPT"),)
    assert note == "tried as its raw equivalent (ufw is not run in the copy)"
    assert collateral.plan(Fix("client", "x", "t", ("fail2ban-client set sshd unbanip 192.0.2.2",), owner="fail2ban")) == \
        (None, "fail2ban-client is not run in a copy of the firewall (it changes fail2ban-client's own state too)")
    assert collateral.plan(Fix("client", "changes no rule", "wait"))[0] is None


def test_collateral_leaves_out_the_client_on_the_service_and_finds_contradictions() -> None:
    probes = collateral.samples(PROBES, CLIENT, 22, "tcp")
    assert [(p.source.addr, p.port) for p in probes] == [("192.0.2.3", 22), ("198.51.100.1", 22), (CLIENT, 443)]
    fix = Fix("client", "lets in only 192.0.2.2 to tcp/22", "t", ("iptables -I INPUT 1 -j ACCEPT",))
    none = collateral.result(fix, probes, ("drop",) * 3, ("drop",) * 3, 22, "tcp")
    assert none == Collateral((), "", 3, 2, False)
    assert none.lines("client") == ["changes nothing else (checked 3 sources, 2 ports)"]
    wide = collateral.result(fix, probes, ("drop", "drop", "drop"), ("open", "open", "drop"), 22, "tcp")
    assert wide.contradicts and [c.source for c in wide.changes or ()] == ["192.0.2.3", "198.51.100.1"]
    assert wide.lines("client")[:2] == [
        "UNSAFE: its scope says client, but in a copy of the firewall it lets in others too",
        "also lets in: 192.0.2.3 (neighbour of the client) tcp/22; 198.51.100.0/24 sample 198.51.100.1 tcp/22"]
    # service: every source to the service is what it says; another port gaining is not
    svc = dataclasses.replace(fix, scope="service")
    assert not collateral.result(svc, probes, ("drop",) * 3, ("open", "open", "drop"), 22, "tcp").contradicts
    assert collateral.result(svc, probes, ("drop",) * 3, ("drop", "drop", "open"), 22, "tcp").contradicts
    assert not collateral.result(dataclasses.replace(fix, scope="wider"), probes, ("drop",) * 3, ("open",) * 3, 22, "tcp").contradicts
    loses = collateral.result(fix, probes, ("open", "drop", "drop"), ("drop", "drop", "reject (rst)"), 22, "tcp")
    assert not loses.contradicts
    assert loses.lines("client")[:2] == ["also shuts out: 192.0.2.3 (neighbour of the client) tcp/22",
                                         "also changes: 192.0.2.2 (client) tcp/443 (drop -> reject (rst))"]


def test_the_neighbour_is_someone_else_on_the_clients_network() -> None:
    got = collateral.with_neighbour([], CLIENT, 22, "tcp", {"192.0.2.1"})
    assert [(p.source.addr, p.source.label) for p in got] == [("192.0.2.3", collateral.NEIGHBOUR)]
    assert collateral.with_neighbour([], "192.0.2.1", 22, "tcp", {"192.0.2.2"})[0].source.addr == "192.0.2.3"  # never .0
    assert collateral.with_neighbour([], "2001:db8::2", 22, "tcp", set())[0].source.addr == "2001:db8::3"


def test_the_report_carries_collateral_and_flags_an_unsafe_fix() -> None:
    real = report_of("seed-shadowed")
    ok = Fix("client", "lets in only 192.0.2.2 to tcp/8080", "t", ("iptables -I INPUT 1 -s 192.0.2.2/32 -j ACCEPT",))
    bad = Fix("client", "lets in only 192.0.2.2 to tcp/8080", "t", ("iptables -I INPUT 1 -j ACCEPT",))
    report = dataclasses.replace(real, findings=(Finding("x", "m", "t", fixes=(ok, bad, Fix("client", "changes no rule", "wait"))),))
    assert [x.commands for x in collateral.to_check(report)] == [ok.commands, bad.commands, ()]
    gain = Sampled("192.0.2.3", collateral.NEIGHBOUR, 8080, "tcp", "reject (icmp port-unreachable)", "open")
    out = collateral.with_collateral(report, {ok.commands: Collateral((), "", 3, 1),
                                              bad.commands: Collateral((gain,), "", 3, 1, True)})
    assert out.caveats[-1] == ("fix NOT safe: its scope says client (lets in only 192.0.2.2 to tcp/8080), but in a copy of "
                               "the firewall it also lets in 192.0.2.3 (neighbour of the client) tcp/8080: "
                               "iptables -I INPUT 1 -j ACCEPT")
    rows = [(r.label, r.body) for r in timeline.findings(out)]
    assert ("checked", "changes nothing else (checked 3 sources, 1 port)") in rows
    assert ("UNSAFE", "UNSAFE: its scope says client, but in a copy of the firewall it lets in others too") in rows
    doc = jsondoc.document(out)
    fixes = doc["findings"][0]["fixes"]
    assert fixes[0]["collateral"] == [] and fixes[0]["collateral_check"]["checked"] is True
    assert fixes[1]["collateral"][0]["source"] == "192.0.2.3" and fixes[1]["collateral_check"]["contradicts_scope"]
    assert "collateral" not in fixes[2]
    for x in fixes:
        jsonschema.validate(x, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/fix"})
    nc = collateral.not_checked(report, "no shadow copy of the firewall: no netns support")
    x = nc.findings[0].fixes[0]
    assert x.collateral == Collateral(None, "no shadow copy of the firewall: no netns support")
    assert x.to_json()["collateral"] is None
    assert x.collateral.lines("client") == ["collateral not checked: no shadow copy of the firewall: no netns support"]


def test_a_range_holding_the_client_is_sampled_by_someone_else() -> None:
    """sshguard's 192.0.2.0/24 entry holds the client: its sample was the client itself, so a fix
    deleting the whole entry looked like it let in nobody else."""
    state = shadow.State(nft="table ip sshguard {\n\tset attackers {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
                             "\t\telements = { 192.0.2.0/24 }\n\t}\n\tchain blacklist {\n\t\tip saddr @attackers drop\n\t}\n}\n", links=(shadow.Link("eth0", (("192.0.2.1", 24),)),))
    got = [(s.addr, s.label) for s in shadow.sample_sources(state, CLIENT, 4)]
    assert got[:2] == [(CLIENT, "client"), ("192.0.2.3", "set attackers")]
