"""Long chains read sparsely (issue 11, "Scale"): the rules a report shows must be the very rules a
full listing gives (number, handle, nft text, iptables text), and the report must not change."""
from __future__ import annotations

from typing import Any

import pytest
import structlog

from tracer.system import listing, nlrules, sparse
from tracer import system
from tracer.pipeline.driver import Run
from tracer.cli.lab import CLIENT4, SERVER4, Lab
from tracer.model import ProbeRequest, Proto
from tracer.report.outcome import ProbeReport

log = structlog.get_logger("test")
N = sparse.SPARSE_FROM + 200


def bans(n: int, client_at: int = -1) -> list[str]:
    return [f"-A INPUT -s {CLIENT4 if i == client_at else f'10.1.{i >> 8}.{i & 255}'}/32 -p tcp -m tcp --dport "
            f"{8080 if i == client_at else 9999} -j DROP" for i in range(n)]


def long_input(client_at: int = -1) -> str:
    """INPUT: odd rules first (comment, xt_recent, multiport, a jump), N bans, then the ACCEPT."""
    head = ["-A INPUT -m comment --comment \"first rule\" -p udp -j ACCEPT",
            "-A INPUT -p tcp -m recent --name ssh --rcheck --seconds 60 --hitcount 4 -j DROP",
            "-A INPUT -p tcp -m multiport --dports 1,2,3 -j user", "-A user -p tcp --dport 4 -j RETURN"]
    return "\n".join(["*filter", ":INPUT DROP [0:0]", ":user - [0:0]", *head, *bans(N, client_at),
                      "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT", "COMMIT"]) + "\n"


def rules_of(snap: Any, key: tuple[str, str, str]) -> tuple[Any, ...]:
    chain = snap.ruleset.chain(*key)
    assert chain is not None
    return chain.rules


def test_sparse_rules_equal_the_full_listing(lab: Lab) -> None:
    lab.iptables_restore(lab.server, long_input())
    nft_rules = "\n".join(f"add rule inet t c ip saddr 10.2.{i >> 8}.{i & 255} tcp dport 9999 counter drop"
                          for i in range(N))
    lab.nft(lab.server, "add table inet t\nadd chain inet t c { type filter hook input priority 10; policy accept; }\n"
            f"add chain inet t other\n{nft_rules}\nadd rule inet t c tcp dport 22 jump other comment \"last one\"\n")
    keys = [("ip", "filter", "INPUT"), ("inet", "t", "c")]
    with system.netns(lab.server):
        handles = {k: nlrules.dump_chain(*k, frozenset()).handles for k in keys}
        assert [len(h) for h in handles.values()] == [N + 4, N + 1]
        wanted = {k: frozenset([h[0], h[1], h[2], h[N // 2], h[-1]]) for k, h in handles.items()}
        full = listing.chains(keys)
        thin = listing.chains(keys, wanted=wanted)
    assert thin.sparse == frozenset(keys) and not full.sparse
    for key in keys:
        want = tuple(r for r in rules_of(full, key) if r.handle in wanted[key])
        assert rules_of(thin, key) == want and len(want) == 5
        assert thin.ruleset.chain(*key).policy == full.ruleset.chain(*key).policy  # type: ignore[union-attr]
    assert thin.ruleset.table("ip", "filter").backend is full.ruleset.table("ip", "filter").backend  # type: ignore[union-attr]


def test_rule_using_a_set_is_listed_in_full(lab: Lab) -> None:
    lab.nft(lab.server, "add table inet t\nadd set inet t ban { type ipv4_addr; }\n"
            "add chain inet t c { type filter hook input priority 10; policy accept; }\n"
            + "".join(f"add rule inet t c tcp dport {1000 + i} drop\n" for i in range(N))
            + "add rule inet t c ip saddr @ban drop\n")
    key = ("inet", "t", "c")
    with system.netns(lab.server):
        last = nlrules.dump_chain(*key, frozenset()).handles[-1]
        snap = listing.chains([key], wanted={key: frozenset([last])})
    assert not snap.sparse and len(rules_of(snap, key)) == N + 1


def probe_both(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> tuple[ProbeReport, ProbeReport, list[Any]]:
    """The same probe read sparsely, then with sparse reading switched off; the sparse run's
    readings of the met chains (the keys read sparsely, or "full" for a full reading)."""
    seen: list[Any] = []
    real = listing.chains

    def spy(*a: Any) -> Any:
        got = real(*a)
        seen.append(got.sparse if len(a) > 2 and a[2] is not None else "full")
        return got

    monkeypatch.setattr(listing, "chains", spy)
    req = ProbeRequest(netns=lab.server, from_netns=lab.client, dst=SERVER4, dport=8080)
    thin = Run(req, log).execute()
    monkeypatch.setattr(listing, "chains", real)
    monkeypatch.setattr(sparse, "SPARSE_FROM", 10**9)
    full = Run(req, log).execute()
    return thin, full, seen


def same(a: ProbeReport, b: ProbeReport) -> None:
    [x], [y] = a.results, b.results
    assert (x.verdict, x.decided_by, x.reply_verdict, x.hooks) == (y.verdict, y.decided_by, y.reply_verdict, y.hooks)
    assert [(s.event.chain, s.rule) for s in x.steps] == [(s.event.chain, s.rule) for s in y.steps]
    assert [(f.code, f.message, f.fix) for f in a.findings] == [(f.code, f.message, f.fix) for f in b.findings]
    assert a.cleanup_ok and b.cleanup_ok and a.ruleset_unchanged and b.ruleset_unchanged


def test_accepted_after_a_long_chain_same_report(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.iptables_restore(lab.server, long_input())
    lab.listen(lab.server, Proto.TCP, 8080)
    thin, full, seen = probe_both(lab, monkeypatch)
    assert seen == [frozenset({("ip", "filter", "INPUT")})]  # read sparsely, and only so
    same(thin, full)
    d = thin.results[0].decided_by
    assert d is not None and d.rule is not None and d.rule.number == N + 4
    assert d.rule.display == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"


def test_blocked_in_a_long_chain_same_report(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop makes the findings search the chain: it is then listed in full."""
    lab.iptables_restore(lab.server, long_input(client_at=N // 2))
    thin, full, seen = probe_both(lab, monkeypatch)
    assert seen == [frozenset({("ip", "filter", "INPUT")}), "full"]
    same(thin, full)
    d = thin.results[0].decided_by
    assert thin.results[0].verdict.value == "drop" and d is not None and d.rule is not None
    assert d.rule.number == N // 2 + 4 and d.rule.display.startswith(f"-A INPUT -s {CLIENT4}/32")


def test_policy_drop_after_a_long_chain_stays_sparse(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy decides: no finding searches the chain, so its sparse reading is the report's."""
    lab.iptables_restore(lab.server, long_input().replace("-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\n", ""))
    thin, full, seen = probe_both(lab, monkeypatch)
    assert seen == [frozenset({("ip", "filter", "INPUT")})]
    same(thin, full)
    r = thin.results[0]
    assert r.verdict.value == "drop" and r.decided_by is not None and r.decided_by.policy == "drop"
    assert "policy" in {f.code for f in thin.findings}
