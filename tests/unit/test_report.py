"""The text report, rendered from results replayed out of captured bundles."""
from __future__ import annotations

from pathlib import Path

from tracer import diagnose
from tracer.evidence import read_bundle, replay, replay_report
from tracer.model import ProbeRequest
from tracer.outcome import build_report
from tracer.report import render
from tracer.snapshot import assemble

BUNDLES = Path(__file__).parent.parent / "data" / "bundles"


def report_of(name: str, generations: tuple[int, ...] = (5, 6, 7)) -> str:
    files = read_bundle(str(BUNDLES / name))
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    ctx = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local=False)
    rep = replay_report(files, ProbeRequest(dport=8080, netns="srv", from_netns="cli"), ctx, generations=generations)
    return render(rep)


def bare(files: dict[str, bytes]) -> diagnose.Context:
    return diagnose.Context(assemble(files["ruleset.nft"].decode(), "", {}), (), local=False)


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


def test_log_rules_of_iptables_nft_count_in_the_generation_proof() -> None:
    files = read_bundle(str(BUNDLES / "nft-user-chain-nflog"))
    results = tuple(replay(files))
    base = build_report(ProbeRequest(dport=22, netns="srv", from_netns="cli", log="nflog"), "0badc0de", results,
                        bare(files), generations=(5, 6, 15), own_commits=8)
    assert base.ruleset_unchanged is True
    assert "(generation 5 -> 15: only fwtrace's add, its 4 --log rule(s) in and out, and its delete)" in render(base)
    other = build_report(base.request, "0badc0de", results, bare(files), generations=(5, 6, 16), own_commits=8)
    assert other.ruleset_unchanged is False and "other writers changed the ruleset" in render(other)


def test_legacy_report_marks_legacy_chains_and_the_listing_proof() -> None:
    files = read_bundle(str(BUNDLES / "legacy-user-chain-log"))
    results = tuple(replay(files))
    rep = build_report(ProbeRequest(dport=22, netns="srv", from_netns="cli", log="kmsg"), "0badc0de", results,
                       bare(files), generations=(5, 6, 7), legacy_unchanged=True)
    text = render(rep)
    assert "ip filter fail2ban-SSH [legacy] rule 1: no match" in text
    assert "verdict: REJECT by ip filter fail2ban-SSH (iptables-legacy) rule 2" in text
    assert "iptables-legacy tables listed after the run equal those before" in text
    assert rep.to_json()["cleanup"]["legacy_unchanged"] is True
