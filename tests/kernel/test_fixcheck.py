"""Every fix command fwtrace prints is run by its own tool on a copy before it is printed; a
--prove-fix rule the tool refuses is reported and undone like any other change; `fwtrace
cleanup` never exits 0 keeping a journal it could not undo."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import structlog

from tracer.pipeline import cmdcheck
from tracer.plan import narrow
from tracer.pipeline import provefix
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import Finding, ProbeRequest, Proto
from tracer.pipeline.provefix import prove, runner
from tracer.system.journal import RUN_DIR, list_journals

from tests.kernel.test_nearmiss import listing
from tests.unit.test_report import report_of

log = structlog.get_logger("test")

GOOD = ("iptables -I INPUT 1 -p tcp --dport 80 -j ACCEPT", "iptables -I DOCKER-USER -d 192.0.2.1 -p tcp --dport 80 -j ACCEPT",
        "nft insert rule inet t c position 2 tcp dport 80 accept", 'nft add rule inet t c iifname "eth0" tcp dport 80 accept',
        "ip6tables -I INPUT 1 -p tcp --dport 80 -j ACCEPT", "iptables -t nat -I PREROUTING 1 -p tcp --dport 80 -j ACCEPT")
BAD = {"iptables -I FORWARD 1 -o docker0 -p tcp --dport 80 -o docker0 -j ACCEPT": "multiple -o flags not allowed",
       "iptables -I INPUT 5 -p tcp --dport 80 -j ACCEPT": "Index of insertion too big",
       "iptables -I NOPE 1 -j ACCEPT": "No chain/target/match by that name",
       "nft insert rule inet t c position 99 tcp dport 80 accept": "No such file or directory",
       "nft add rule inet t c tcp dport 80 acept": "syntax error",
       "iptables-legacy -I INPUT 2 -j ACCEPT": "Index of insertion too big"}


def state(lab: Lab) -> str:
    return "\n".join(lab.run(lab.server, argv).stdout for argv in (
        ["nft", "-s", "list", "ruleset"], ["cat", "/proc/net/ip_tables_names"], ["cat", "/proc/net/ip6_tables_names"],
        ["ip", "-o", "link"]))


def test_each_printed_command_is_run_by_its_tool_on_a_copy_and_the_target_only_read(lab: Lab) -> None:
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                     ":DOCKER-USER - [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    lab.nft(lab.server, "table inet t {\n chain c {\n  type filter hook input priority 0;\n  tcp dport 1 accept\n }\n}\n")
    before = state(lab)
    cmds = (*GOOD, *BAD)
    real = report_of("seed-shadowed")
    findings = tuple(Finding("x", "m", f"fix: {c}", (c,)) for c in cmds)
    out = cmdcheck.check(dataclasses.replace(real, findings=findings, results=()), lab.server)
    assert state(lab) == before, "the target changed"  # not even a legacy table was instantiated
    assert set(out.refused) == set(BAD)
    for c, why in BAD.items():
        assert any(c in cav and why in cav for cav in out.caveats), (c, out.caveats)
    assert [f.commands for f in out.findings] == [(c,) for c in GOOD] + [()] * len(BAD)
    assert all(c not in (f.fix or "") for f in out.findings for c in BAD)


def test_one_copy_per_run_is_reset_between_sequences(lab: Lab) -> None:
    """The sequences share one throwaway namespace: each meets the target's tables, never what an
    earlier sequence did to the copy (two inserts would let `-D INPUT 3` through; a legacy rule
    appended by one would let another's `-D INPUT 1` through; a policy would stay DROP)."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                     "-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    before = state(lab)
    seqs = [("iptables -I INPUT 1 -p tcp --dport 80 -j ACCEPT", "iptables -I INPUT 1 -p tcp --dport 81 -j ACCEPT"),
            ("iptables -D INPUT 3",),
            ("iptables-legacy -A INPUT -j ACCEPT", "iptables-legacy -P INPUT DROP"),
            ("iptables-legacy -D INPUT 1",), ("iptables-legacy -C INPUT -j ACCEPT",),
            ("iptables -D INPUT 1",)]
    real = report_of("seed-shadowed")
    findings = tuple(Finding("x", "m", f"fix: {'; '.join(c)}", c) for c in seqs)
    out = cmdcheck.check(dataclasses.replace(real, findings=findings, results=()), lab.server)
    assert state(lab) == before, "the target changed"
    assert set(out.refused) == {"iptables -D INPUT 3", "iptables-legacy -D INPUT 1", "iptables-legacy -C INPUT -j ACCEPT"}
    assert [f.commands for f in out.findings] == [seqs[0], (), seqs[2], (), (), seqs[5]]


def test_a_refused_prove_fix_rule_is_reported_and_the_run_undone(lab: Lab, monkeypatch: Any) -> None:
    """The proving run's narrowed rule is refused by iptables: the step says so, everything else the
    run put in is removed, and no journal is left for `fwtrace cleanup` (whose undo, the same rule
    with -D, would be refused too)."""
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    real = narrow.narrow

    def broken(*a: Any, **kw: Any) -> Any:
        n = real(*a, **kw)
        bad = (*n.argv[:-2], "-o", "x", "-o", "y", *n.argv[-2:])
        return narrow.Narrowed(n.command, bad, n.undo, n.nft_commits, n.table)

    monkeypatch.setattr(provefix, "narrow", broken)
    before = listing(lab) + state(lab)
    req = ProbeRequest(dport=8080, proto=Proto.TCP, netns=lab.server, from_netns=lab.client, dst=SERVER4, timeout=0.5)
    from tracer.pipeline.driver import Run

    report = Run(req, log).execute()
    report, steps = prove(report, log, runner(log))
    [s] = steps
    assert "multiple -o flags not allowed" in s.error and not s.reached
    assert f"-s {CLIENT4}/32" in s.narrowed
    assert [p for p, doc in list_journals() if doc is None or doc.netns == lab.server] == []
    assert listing(lab) + state(lab) == before


def test_cleanup_that_cannot_undo_a_journal_exits_5_and_keeps_it(lab: Lab) -> None:
    doc = {"run_id": "0badf00d", "pid": 2 ** 22 + 17, "starttime": "1", "argv": ["fwtrace", "probe"], "netns": lab.server,
           "entries": [{"undo": {"kind": "cmd", "what": "rule in NOPE (test)", "netns": lab.server,
                                 "argv": ["iptables", "-D", "NOPE", "-o", "a", "-o", "b", "-j", "ACCEPT"], "input": "",
                                 "gone": [], "key": "", "value": ""}, "state": "pending"}]}
    os.makedirs(RUN_DIR, exist_ok=True)
    path = os.path.join(RUN_DIR, "0badf00d.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    try:
        p = subprocess.run([sys.executable, "-m", "tracer", "cleanup", "--netns", lab.server], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 5, (p.stdout, p.stderr)
        [line] = [ln for ln in p.stderr.splitlines() if ln.startswith("fwtrace: error:")]
        assert "0badf00d.json kept" in line and "rule in NOPE (test)" in line and "multiple -o" in line
        assert os.path.exists(path)
    finally:
        os.unlink(path)
