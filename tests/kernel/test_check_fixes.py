"""`probe --check-fixes` on the real kernel: every fix of the safe-fixes rulesets
(tests/kernel/safe_rulesets.py, as tests/kernel/test_safe_fixes.py loads them) is tried in a
shadow copy of the lab server's firewall, and the sampled sources and ports are probed before
and after it. A fix whose scope is `client` must change nothing for anyone else; a `wider` one
(sshguard's subnet entry) must show whom else it lets in; a fix whose scope is contradicted by
what the copy shows is flagged as unsafe, never printed as safe. The lab server (the target) is
only read, and no shadow namespace is left.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jsonschema
import pytest
import structlog
from test_safe_fixes import CASES, client_req, listing

from tracer import system
from tracer.cli.lab import CLIENT4, Lab
from tracer.findings import Fix
from tracer.model import Proto
from tracer.pipeline import checkfixes, cmdcheck
from tracer.pipeline.driver import Run
from tracer.render import jsondoc, terminal

log = structlog.get_logger("test")
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schema" / "report.schema.json").read_text())
FIX_SCHEMA = {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/fix"}


def shadows() -> set[str]:
    return {n for n in system.netns_list() if n.startswith("fwtrace-shadow")}


def checked(lab: Lab, name: str):  # type: ignore[no-untyped-def]
    case = CASES[name]
    if case.backend:
        assert lab.backend is not None
        lab.listen(lab.backend, Proto.TCP, 80)
    else:
        lab.listen(lab.server, Proto.TCP, case.port)
    case.load(lab)
    report = cmdcheck.check(Run(client_req(lab, case.port), log).execute(), lab.server)
    before, names = listing(lab, dynamic=True), shadows()
    out = checkfixes.check(report, log)
    assert listing(lab, dynamic=True) == before, "the target's firewall changed"
    assert shadows() == names, "a shadow namespace was left"
    assert out.cleanup_ok, out.leftover
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_client_fix_changes_nothing_else(make_lab: Callable[..., Lab], name: str) -> None:
    with make_lab(backend=CASES[name].backend) as lab:
        report = checked(lab, name)
    text = terminal.text(report)
    fixes = [x for f in report.findings for x in f.fixes if x.commands]
    assert fixes and all(x.collateral is not None for x in fixes), text
    tried = [x for x in fixes if x.collateral is not None and x.collateral.changes is not None]
    for x in fixes:
        c = x.collateral
        assert c is not None
        if c.changes is None:  # an owner's tool with no raw equivalent: says why, claims nothing
            assert c.note and "changes nothing else" not in "\n".join(c.lines(x.scope)), (x, c)
            continue
        assert c.sources >= 2 and c.ports >= 1, c
        if x.scope == "client":
            assert c.changes == (), (name, x.commands, c.changes, text)
            assert f"changes nothing else (checked {c.sources} sources" in " ".join(text.split()), text
        assert not c.contradicts, (name, x.commands, c.changes)
    assert tried or name in ("fail2ban", "crowdsec"), text
    assert not any("NOT safe" in cav for cav in report.caveats), report.caveats
    doc = jsondoc.document(report)
    jf = [x for f in doc["findings"] for x in f["fixes"] if x["commands"]]
    for x in jf:
        jsonschema.validate(x, FIX_SCHEMA)
    assert all("collateral" in x and "collateral_check" in x for x in jf)
    if name == "sshguard":  # the subnet entry's delete is `wider`, and the copy shows whom it lets in
        [wide] = [x for x in fixes if x.scope == "wider"]
        assert wide.collateral is not None and wide.collateral.changes
        gains = {(c.source, c.port) for c in wide.collateral.changes if c.gains}
        assert ("192.0.2.3", 22) in gains, wide.collateral
        flat = " ".join(text.split())
        assert "also lets in: " in flat and "set attackers sample 192.0.2.3 tcp/22" in flat, text


def test_a_fix_whose_collateral_contradicts_its_scope_is_flagged(make_lab: Callable[..., Lab]) -> None:
    """A `client` fix that opens the port for everyone (what a bug in the fix builder would print):
    the copy shows the banned range gaining, the fix is marked UNSAFE and a caveat says so."""
    with make_lab() as lab:
        report = checked(lab, "ufw-deny-from")
        broad = Fix("client", f"lets in only {CLIENT4} to tcp/443", "open it",
                    ("iptables -I ufw-user-input 1 -p tcp --dport 443 -j ACCEPT",))
        f0 = report.findings[0]
        bad = dataclasses.replace(report, findings=(dataclasses.replace(f0, fixes=(broad,)), *report.findings[1:]),
                                  caveats=())
        out = checkfixes.check(bad, log)
    [x] = out.findings[0].fixes
    assert x.collateral is not None and x.collateral.contradicts
    assert ("192.0.2.3", 443) in {(c.source, c.port) for c in x.collateral.changes or () if c.gains}
    assert any(cav.startswith("fix NOT safe: its scope says client") for cav in out.caveats), out.caveats
    text = terminal.text(out)
    assert "UNSAFE" in text and "changes nothing else" not in text.split("[" + out.findings[0].code + "]")[1].split("finding")[0]
    assert jsondoc.document(out)["findings"][0]["fixes"][0]["collateral_check"]["contradicts_scope"] is True


def test_check_fixes_from_the_command_line_and_off_switch(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    with make_lab() as lab:
        CASES["ufw-deny-from"].load(lab)
        lab.listen(lab.server, Proto.TCP, 443)
        base = [sys.executable, "-m", "tracer", "probe", "--dport", "443", "--netns", lab.server, "--from-netns",
                lab.client, "--timeout", "0.5"]
        names = shadows()
        on = subprocess.run([*base, "--evidence", str(tmp_path / "b"), "--json"], capture_output=True, text=True,
                            timeout=120)
        off = subprocess.run([*base, "--no-check-fixes", "--json"], capture_output=True, text=True, timeout=120)
        assert shadows() == names
    assert on.returncode == 1 and off.returncode == 1, (on.stderr, off.stderr)
    doc = json.loads(on.stdout)
    jsonschema.validate(doc, SCHEMA)
    fixes = [x for f in doc["findings"] for x in f["fixes"] if x["commands"]]
    assert fixes and all(x["collateral_check"]["checked"] for x in fixes if x["scope"] == "client" and x["owner"] is None)
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["findings"][0]["fixes"][0].get("collateral_check") is not None
    assert all("collateral" not in x for f in json.loads(off.stdout)["findings"] for x in f["fixes"])


def test_interrupted_while_checking_fixes_leaves_no_shadow(make_lab: Callable[..., Lab]) -> None:
    """SIGINT once the shadow exists (its namespaces are named after fwtrace's pid): exit 130,
    the shadow's namespaces gone, the target as before."""
    with make_lab() as lab:
        CASES["xt-recent"].load(lab)
        lab.listen(lab.server, Proto.TCP, 22)
        before = listing(lab, dynamic=True)
        p = subprocess.Popen([sys.executable, "-m", "tracer", "probe", "--dport", "22", "--netns", lab.server,
                              "--from-netns", lab.client, "--timeout", "0.5", "--check-fixes"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        mine = f"fwtrace-shadow{p.pid}-"
        while p.poll() is None and not any(n.startswith(mine) for n in system.netns_list()):
            time.sleep(0.01)
        assert p.poll() is None, "the run ended before its shadow was seen"
        time.sleep(0.2)  # into the copy's probes
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130, err
        assert "interrupted (SIGINT)" in err
        assert not [n for n in system.netns_list() if n.startswith(mine)]
        assert listing(lab, dynamic=True) == before
