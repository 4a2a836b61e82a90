"""The text report, rendered from results replayed out of captured bundles."""
from __future__ import annotations

from pathlib import Path

from tracer import diagnose
from tracer.evidence import read_bundle, replay
from tracer.model import ProbeRequest
from tracer.probe import ProbeReport
from tracer.report import render
from tracer.snapshot import assemble

BUNDLES = Path(__file__).parent.parent / "data" / "bundles"


def report_of(name: str, generations: tuple[int, ...] = (5, 6, 7)) -> str:
    files = read_bundle(str(BUNDLES / name))
    results = replay(files)
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    ctx = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local=False)
    findings = tuple(f for r in results for f in diagnose.diagnose(r, ctx))
    rep = ProbeReport(ProbeRequest(dport=8080, netns="srv", from_netns="cli"), "0badc0de", tuple(results), findings,
                      True, (), (), False, tuple(diagnose.conclusion(r, list(findings)) for r in results), None, generations)
    return render(rep)


def test_seed_report_accounts_for_every_rule_before_the_decision() -> None:
    text = report_of("seed-shadowed")
    assert "ip filter INPUT              rules 1-6: no match" in text
    assert "rule 7   -A INPUT -j REJECT --reject-with icmp-host-prohibited  -> drop" in text
    assert "verdict: REJECT by ip filter INPUT rule 7: -A INPUT -j REJECT --reject-with icmp-host-prohibited" in text
    assert "[shadowed-rule]" in text and "fix: iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT" in text
    assert "(generation 5 -> 7: only fwtrace's add and delete)" in text


def test_other_writers_are_reported_not_hidden() -> None:
    text = report_of("seed-shadowed", (5, 7, 9))
    assert "other writers changed the ruleset during the run (generation 5 -> 9)" in text


def test_user_chain_and_forward_reports() -> None:
    text = report_of("seed-user-chain")
    assert "jump fail2ban-SSH" in text and "ip filter fail2ban-SSH       rule 1: no match" in text
    fwd = report_of("dnat-forward-drop")
    assert "path: prerouting -> forward" in fwd and "policy DROP" in fwd and "[forwarded]" in fwd
