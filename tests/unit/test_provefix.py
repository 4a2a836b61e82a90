"""--prove-fix without the kernel: narrowing a fix to the probe's flow, and the loop's decisions
(the probe runs are replaced by a fake runner here; tests/kernel/test_nearmiss.py runs them for real)."""
from __future__ import annotations

import dataclasses
import ipaddress
import random
import shlex
from typing import Any

from tracer.model import (
    Finding,
    PacketResult,
    PacketSpec,
    ProbeRequest,
    Proto,
    Reply,
    RuleRef,
    Verdict,
)
from tracer.plan.narrow import marker, narrow
from tracer.report.outcome import ProbeReport
from tracer.pipeline.provefix import first_fix, prove, render
from tracer.plan.records import RemoveCommented, from_json, to_json

a = ipaddress.ip_address
SRC = a("203.0.113.5")


def test_iptables_fix_narrowed_to_source_and_port_with_its_undo() -> None:
    n = narrow("iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT", SRC, 45000, Proto.TCP, "ab12cd34", "srv")
    assert n is not None
    assert n.argv == ("iptables", "-w", "-I", "INPUT", "7", "-p", "tcp", "-m", "tcp", "--dport", "8080",
                      "-s", "203.0.113.5/32", "-m", "tcp", "--sport", "45000",
                      "-m", "comment", "--comment", "fwtrace:ab12cd34:prove", "-j", "ACCEPT")
    assert n.undo.argv[:4] == ("iptables", "-w", "-D", "INPUT") and n.undo.argv[4:] == n.argv[5:]
    assert n.undo.netns == "srv" and n.nft_commits == 2


def test_existing_source_is_replaced_by_the_probe_address_and_table_kept() -> None:
    n = narrow("ip6tables -t nat -A PREROUTING -s 2001:db8::/32 -p udp --dport 53 -j ACCEPT", a("2001:db8::5"), 40000,
               Proto.UDP, "r", None)
    assert n is not None
    words = list(n.argv)
    assert words[:6] == ["ip6tables", "-w", "-t", "nat", "-A", "PREROUTING"]
    assert words.count("-s") == 1 and "2001:db8::5/128" in words and "2001:db8::/32" not in words


def test_nft_fix_narrowed_and_undone_by_comment() -> None:
    n = narrow('nft insert rule inet fw input position 3 iifname "eth0" tcp dport 8080 accept comment "x"', SRC, 41000,
               Proto.TCP, "r1", None)
    assert n is not None
    assert n.argv == ("nft", "insert", "rule", "inet", "fw", "input", "position", "3",
                      f'ip saddr 203.0.113.5 tcp sport 41000 iifname "eth0" tcp dport 8080 accept comment "{marker("r1")}"')
    assert n.undo == RemoveCommented("inet fw input", marker("r1"))
    assert from_json(to_json(n.undo)) == n.undo  # the journal keeps it


def test_other_commands_are_not_narrowed() -> None:
    assert narrow("firewall-cmd --zone=public --add-port=8080/tcp", SRC, 1, Proto.TCP, "r", None) is None
    assert narrow("sysctl -w net.ipv4.conf.all.rp_filter=2", SRC, 1, Proto.TCP, "r", None) is None
    assert narrow("iptables -D INPUT 9", SRC, 1, Proto.TCP, "r", None) is None


def test_first_fix_prefers_the_proof_rule_and_skips_explanations() -> None:
    fw = Finding("near-miss", "m", "f", ("firewall-cmd --zone=public --add-port=8080/tcp",),
                 proof_rule="nft insert rule inet firewalld filter_IN_public_allow tcp dport 8080 accept")
    local = Finding("local-probe", "m", "send it from elsewhere")
    picked = first_fix((local, fw))
    assert picked == (fw, fw.proof_rule)


def _report(verdict: Verdict, findings: tuple[Finding, ...], ref: Any = None) -> ProbeReport:
    spec = PacketSpec(Proto.TCP, SRC, a("192.0.2.1"), 40000, 8080, "S", 1)
    reply = Reply("syn-ack" if verdict is Verdict.ACCEPT else "none")
    r = PacketResult(spec, verdict, ref, reply, (), ("prerouting", "input"))
    req = ProbeRequest(dport=8080, netns="srv", src=SRC)
    return ProbeReport(req, "run0", (r,), findings, True, (), (), mode="ingress", via="eth0")


SHADOW = Finding("shadowed-rule", "m", "f", ("iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT", "iptables -D INPUT 9"))
POLICY = Finding("policy", "m", "f", ("nft add rule inet extra input tcp dport 8080 accept",))


def test_not_enough_then_the_next_block_is_proven() -> None:
    calls: list[tuple[ProbeRequest, tuple[Any, ...]]] = []
    second = _report(Verdict.DROP, (POLICY,), RuleRef("inet", "extra", "input", None, "drop"))

    def run(req: ProbeRequest, run_id: str, extra: tuple[Any, ...], on_extra: Any) -> ProbeReport:
        calls.append((req, extra))
        return second if len(calls) == 1 else _report(Verdict.ACCEPT, ())

    first = _report(Verdict.REJECT, (Finding("local-probe", "m"), SHADOW))
    marked, steps = prove(first, _Log(), run, rng=random.Random(1))
    assert [s.reached for s in steps] == [False, True]
    assert steps[0].blocked_by == "inet extra input policy DROP"
    assert len(calls[1][1]) == 2  # the second run keeps the first narrowed rule and adds the next
    assert f"--sport {calls[1][0].sport}" in calls[1][1][0].command  # narrowed to the new run's port
    req = calls[0][0]
    assert req.src == SRC and req.count == 1 and req.sport is not None and req.via == "eth0" and req.log == ""
    assert f"--sport {req.sport}" in steps[0].narrowed
    shadow = next(f for f in marked.findings if f.code == "shadowed-rule")
    assert shadow.proven is False and shadow.proven_with == steps[0].narrowed
    assert next(f for f in marked.findings if f.code == "local-probe").proven is None
    text = render(steps)
    assert "not enough: next it is blocked by inet extra input policy DROP" in text
    assert "proven: with this rule the probe reached the service" in text
    assert marked.to_json()["findings"][1]["proven"] is False


def test_proven_first_time_and_at_most_three_steps() -> None:
    marked, steps = prove(_report(Verdict.REJECT, (SHADOW,)), _Log(), lambda *a: _report(Verdict.ACCEPT, ()))
    assert [s.reached for s in steps] == [True] and marked.findings[0].proven is True
    fixes = iter([SHADOW, POLICY, dataclasses.replace(POLICY, commands=("iptables -A INPUT -j ACCEPT",)),
                  dataclasses.replace(POLICY, commands=("iptables -A INPUT -p tcp -j ACCEPT",))])
    _, steps = prove(_report(Verdict.REJECT, (next(fixes),)), _Log(),
                     lambda *a: _report(Verdict.DROP, (next(fixes),), RuleRef("ip", "filter", "INPUT", None, "drop")))
    assert len(steps) == 3 and not any(s.reached for s in steps)


def test_reached_probe_is_not_proven_again() -> None:
    rep = _report(Verdict.ACCEPT, ())
    assert prove(rep, _Log(), lambda *a: 1 / 0) == (rep, ())
    assert render((), reached=True) == "prove-fix: nothing to try, the probe reached the service\n"


class _Log:
    def info(self, *a: Any, **kw: Any) -> None:
        pass


def test_narrowed_iptables_command_is_shell_safe() -> None:
    n = narrow("iptables -I INPUT 1 -p tcp --dport 8080 -m comment --comment 'a b' -j ACCEPT", SRC, 40001, Proto.TCP, "r", None)
    assert n is not None and shlex.split(n.command)[0] == "iptables" and "a b" in n.argv


def test_pipeline_puts_the_narrowed_rules_in_after_its_table_and_counts_their_commits() -> None:
    """tracer/pipeline/probe.py with --prove-fix's rules: journaled Changes after the trace table, then the
    checkpoint the tests hook into; the generation proof expects their add and delete."""
    from tracer.plan import commands as c
    from tracer.plan.commands import drive
    from tracer.model import Ruleset
    from tracer.pipeline.probe import EXTRA_IN, probe
    from tracer.ruleset.snapshot import Snapshot

    from .test_pipeline import Script

    script = Script(FilterView=Snapshot(Ruleset(), "", {}), OpenInjector=SRC)
    n = narrow("iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT", SRC, 45000, Proto.TCP, "0badc0de", None)
    assert n is not None
    req = ProbeRequest(dport=8080, from_netns="cli", dst=a("192.0.2.1"), src=SRC, sport=45000)
    report = drive(probe(req, "0badc0de", 1, random.Random(1), extra=(n,)), script)
    changes = [cmd for cmd in script.asked if isinstance(cmd, c.Change)]
    assert [ch.action for ch in changes][1:] == [c.RunArgv(n.argv)] and changes[1].undo == n.undo
    names = script.names()
    after_table = names[names.index("Change") + 1:]
    assert after_table[after_table.index("Change") + 1] == "Checkpoint" and c.Checkpoint(EXTRA_IN) in script.asked
    assert report.own_commits == 2  # its add and delete, expected by the generation proof
    # The table it goes into is listed in full before and after: the content proof covers it.
    listed = [cmd for cmd in script.asked if isinstance(cmd, c.ProofListing)]
    assert listed and all(("ip", "filter") in cmd.scope.tables for cmd in listed)


def test_a_refused_rule_is_reported_and_other_errors_propagate() -> None:
    import pytest

    from tracer.errors import CommandError, EnvironmentProblem

    def refused(*a: Any) -> ProbeReport:
        raise CommandError(["iptables", "-I"], 2, "Bad argument")

    marked, steps = prove(_report(Verdict.REJECT, (SHADOW,)), _Log(), refused)
    assert [s.error for s in steps] and "Bad argument" in steps[0].error and marked.findings[0].proven is None
    assert "could not be put in" in render(steps)

    def broken(*a: Any) -> ProbeReport:
        raise EnvironmentProblem("nft vanished", "install nftables")

    with pytest.raises(EnvironmentProblem):
        prove(_report(Verdict.REJECT, (SHADOW,)), _Log(), broken)


def test_a_fix_for_the_replies_is_narrowed_by_destination() -> None:
    n = narrow("iptables -I FORWARD 1 -p tcp -m tcp --sport 80 -m conntrack --ctstate ESTABLISHED -j ACCEPT", SRC, 41000,
               Proto.TCP, "r", None, reply=True)
    assert n is not None and "-d 203.0.113.5/32 -m tcp --dport 41000" in n.command and " -s " not in n.command
    m = narrow("nft insert rule inet fw output ct state established tcp sport 80 accept", SRC, 41000, Proto.TCP, "r", None,
               reply=True)
    assert m is not None and m.argv[-1].startswith("ip daddr 203.0.113.5 tcp dport 41000 ct state established")
    reply_fix = Finding("reply-dropped", "m", "f", ("iptables -I OUTPUT 1 -p tcp -m tcp --sport 8080 -m state --state ESTABLISHED -j ACCEPT",))
    calls: list[Any] = []

    def run(req: ProbeRequest, run_id: str, extra: tuple[Any, ...], on_extra: Any) -> ProbeReport:
        calls.append(extra)
        return _report(Verdict.ACCEPT, ())

    prove(_report(Verdict.REJECT, (reply_fix,)), _Log(), run)
    assert "--dport" in calls[0][0].command and "-d 203.0.113.5/32" in calls[0][0].command
