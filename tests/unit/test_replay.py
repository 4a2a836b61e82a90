"""Correlation and diagnosis replayed offline on evidence bundles captured on the real kernel.

Each bundle (scripts/capture-trace-data) holds the ruleset, the instrumentation's echo, the raw
trace datagrams and the reply; replaying them must give the verdict the live run reported.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tracer import diagnose
from tracer.pipeline.evidence import replay
from tracer.system.bundle_io import read_dir as read_bundle
from tracer.ruleset.snapshot import assemble

BUNDLES = Path(__file__).parent.parent / "data" / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir())


@pytest.mark.parametrize("name", NAMES)
def test_replay_matches_the_live_run(name: str) -> None:
    files = read_bundle(str(BUNDLES / name))
    live = json.loads(files["report.json"])
    [result] = replay(files)
    [packet] = live["packets"]
    assert result.verdict.value == packet["verdict"]
    got = result.decided_by.to_json() if result.decided_by else None
    if got is not None and "backend" not in packet["decided_by"]:
        del got["backend"]  # bundles captured before decided_by named its backend
    if got is not None and "kind" not in packet["decided_by"]:
        del got["kind"]  # bundles captured before decided_by said it was a rule (schema version 3)
    assert got == packet["decided_by"]
    keys = ("kind", "table", "chain", "source", "number", "handle", "verdict")  # interface names need the live host
    assert [{k: e.to_json().get(k) for k in keys} for e in _steps(result)] == [
        {k: e.get(k) for k in keys} for e in packet["events"]]
    assert result.reply.kind == packet["reply"]
    assert list(result.path) == packet["path"]


def _steps(result: object) -> list:  # type: ignore[type-arg]
    return [s.event for s in result.steps]  # type: ignore[attr-defined]


def test_legacy_user_chain_with_log_rules_replays_from_the_kernel_log() -> None:
    files = read_bundle(str(BUNDLES / "legacy-user-chain-log"))
    [r] = replay(files)
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.legacy
    assert (r.decided_by.chain, r.decided_by.rule.number) == ("fail2ban-SSH", 2)
    assert [(s.event.kind.value, s.event.chain) for s in r.steps] == [
        ("log", "INPUT"), ("rule", "INPUT"), ("log", "fail2ban-SSH"), ("rule", "fail2ban-SSH")]
    assert all(s.event.source == "kmsg" for s in r.steps)


def test_nflog_rules_in_iptables_nft_chains_replay() -> None:
    files = read_bundle(str(BUNDLES / "nft-user-chain-nflog"))
    [r] = replay(files)
    # The NFLOG rules' own nftrace events are left out (instrumentation-handles.json); their
    # logged packets sit at the top of the chains they were inserted into.
    assert [(s.event.kind.value, s.event.source, s.event.chain) for s in r.steps] == [
        ("log", "nflog", "INPUT"), ("rule", "nftrace", "INPUT"), ("log", "nflog", "fail2ban-SSH"),
        ("rule", "nftrace", "fail2ban-SSH")]
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 2


def test_stray_ack_replays_as_conntrack_invalid() -> None:
    files = read_bundle(str(BUNDLES / "legacy-stray-ack-invalid"))
    [r] = replay(files)
    legacy = {"ip": files["iptables-legacy-save.txt"].decode()}
    c = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", {}, legacy), (), False, tcp_loose=0)
    r = dataclasses.replace(r, conntrack="none")
    findings = {f.code: f for f in diagnose.diagnose(r, c)}
    assert set(findings) == {"conntrack-invalid"}
    assert "nf_conntrack_tcp_loose=0" in findings["conntrack-invalid"].message
    assert "rule 1 `-A INPUT -m conntrack --ctstate INVALID -j DROP` dropped it" in findings["conntrack-invalid"].message


def ctx(files: dict[str, bytes], local: bool = False) -> diagnose.Context:
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    return diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local)


def test_seed_is_a_shadowed_rule_with_the_textbook_fix() -> None:
    files = read_bundle(str(BUNDLES / "seed-shadowed"))
    [r] = replay(files)
    assert r.decided_by is not None and r.decided_by.rule is not None and r.decided_by.rule.number == 7
    findings = diagnose.diagnose(r, ctx(files))
    assert [f.code for f in findings] == ["shadowed-rule"]
    assert findings[0].commands == ("iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT", "iptables -D INPUT 9")
    assert "rule 8" in findings[0].message
    assert diagnose.conclusion(r, findings).startswith("tcp port 8080 is blocked: INPUT rule 7 rejected it")


def test_dnat_forward_policy() -> None:
    files = read_bundle(str(BUNDLES / "dnat-forward-drop"))
    [r] = replay(files)
    findings = {f.code: f for f in diagnose.diagnose(r, ctx(files))}
    assert set(findings) == {"forwarded", "policy"}
    assert "198.51.100.2:80" in findings["forwarded"].message
    assert "-A PREROUTING -d 192.0.2.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 198.51.100.2:80" in findings["forwarded"].message
    assert findings["policy"].commands == ("iptables -A FORWARD -d 198.51.100.2 -p tcp --dport 80 -j ACCEPT",)


def test_local_probe_caveat_is_reported() -> None:
    files = read_bundle(str(BUNDLES / "nft-policy-drop"))
    [r] = replay(files)
    codes = [f.code for f in diagnose.diagnose(r, ctx(files, local=True))]
    assert codes == ["local-probe", "policy"]


def test_nat_target_parsing() -> None:
    a = diagnose.nat_target
    assert a("-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80")[1] == 80
    assert str(a("tcp dport 8080 dnat ip to 198.51.100.2:80")[0]) == "198.51.100.2"
    assert str(a("dnat ip6 to [2001:db8::2]:443")[0]) == "2001:db8::2" and a("dnat ip6 to [2001:db8::2]:443")[1] == 443
    assert a("-j REDIRECT --to-ports 3128") == (None, 3128)
    assert a("counter accept") == (None, None)
