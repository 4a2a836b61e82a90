"""The renderers on reports replayed from bundles captured on the real kernel: terminal text
(golden files at 80 columns, no line wider), markdown, HTML, the SVG map, pcapng, JSON schema.

Regenerate the golden files after a deliberate change with FWTRACE_UPDATE_GOLDEN=1.
"""
from __future__ import annotations

import json
import os
import xml.dom.minidom
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tracer import diagnose
from tracer.pipeline.evidence import replay_report
from tracer.system.bundle_io import read_dir as read_bundle
from tracer.model import Mode, ProbeRequest
from tracer.report.outcome import ProbeReport
from tracer.render import html, jsondoc, markdown, pcapng, svg, terminal, timeline
from tracer.ruleset.snapshot import assemble

DATA = Path(__file__).parent.parent / "data"
BUNDLES = sorted(p.name for p in (DATA / "bundles").iterdir())
SCHEMA = json.loads((Path(__file__).parent.parent.parent / "schema" / "report.schema.json").read_text())


def report(name: str, **kw: Any) -> ProbeReport:
    files = read_bundle(str(DATA / "bundles" / name))
    doc = json.loads(files["report.json"])
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    ctx = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local=False)
    p = doc["packets"][0]["probe"]
    req = ProbeRequest(dport=int(p["dport"]), netns="srv", from_netns="cli", log=doc.get("log", ""))
    return replay_report(files, req, ctx, generations=(5, 6, 7), mode=Mode.FROM_NETNS, **kw)


@pytest.mark.parametrize("name", ["seed-shadowed", "seed-user-chain", "dnat-forward-drop", "legacy-user-chain-log",
                                  "ebpf-reject"])
def test_terminal_golden_at_80_columns(name: str) -> None:
    text = terminal.text(report(name), width=80)
    golden = DATA / "golden" / f"{name}.txt"
    if os.environ.get("FWTRACE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("name", BUNDLES)
def test_no_line_wider_than_80_and_rule_text_folded_not_cut(name: str) -> None:
    rep = report(name)
    text = terminal.text(rep, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\x1b[" not in text
    flat = " ".join(text.split())
    for r in rep.results:  # every rule's whole text is there, wrapped at blanks or folded
        for s in r.steps:
            if s.rule is not None:
                words = s.rule.display.split()
                assert all(w in text or w in flat.replace(" ", "") for w in words), s.rule.display


def test_deciding_rule_marked_and_summary_last() -> None:
    text = terminal.text(report("seed-shadowed"))
    lines = text.splitlines()
    marked = [line for line in lines if line.startswith(">")]
    assert len(marked) == 1 and "rule 7" in marked[0] and "-A INPUT -j REJECT" in marked[0]
    assert lines[-1] == "BLOCKED 192.0.2.2 -> 192.0.2.1 tcp/8080: REJECT by filter INPUT rule 7"


def _render_env(monkeypatch: Any, color: Any, **env: str) -> str:
    import io

    for k in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    buf = io.StringIO()
    terminal.render(report("seed-shadowed"), terminal.make_console(buf, color=color, width=80))
    return buf.getvalue()


def test_colour_on_a_terminal_and_never_when_refused(monkeypatch: Any) -> None:
    coloured = _render_env(monkeypatch, None, FORCE_COLOR="1", TERM="xterm-256color")
    assert "\x1b[1;31m" in coloured  # the deciding rule in bold red
    assert "\x1b[" not in _render_env(monkeypatch, None, FORCE_COLOR="1", TERM="xterm-256color", NO_COLOR="1")
    assert "\x1b[" not in _render_env(monkeypatch, False, FORCE_COLOR="1", TERM="xterm-256color")  # --no-color
    assert "\x1b[" not in _render_env(monkeypatch, None)  # not a terminal (a pipe, a file)


@pytest.mark.parametrize("name", BUNDLES)
def test_json_document_matches_the_schema(name: str) -> None:
    doc = jsondoc.document(report(name))
    jsonschema.validate(doc, SCHEMA)
    assert doc["schema_version"] == 3 and doc["outcome"] in jsondoc.OUTCOMES
    assert doc["exit_status"] == (0 if doc["outcome"] == "reached" else 1)


def test_schema_refuses_service_names() -> None:
    doc = jsondoc.document(report("seed-shadowed"))
    doc["packets"][0]["reply_summary"] = "IP / TCP 192.0.2.1:http_alt > 192.0.2.2:x11_1 SA"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_markdown_has_conclusion_timeline_fix_and_replay() -> None:
    rep = report("seed-shadowed")
    md = markdown.render(rep, {"kernel": "Linux 6.18"}, "fwtrace probe --dport 8080")
    assert md.startswith("# fwtrace: BLOCKED 192.0.2.2 -> 192.0.2.1 tcp/8080")
    assert "**Conclusion:** tcp port 8080 is blocked" in md
    assert "> rule 7      -A INPUT -j REJECT" in md
    assert "iptables -I INPUT 7 -p tcp -m tcp --dport 8080 -j ACCEPT" in md
    assert timeline.replay_command(rep) in md and "--sport" in timeline.replay_command(rep)
    assert "--from-netns cli" in timeline.replay_command(rep)


def test_html_is_self_contained() -> None:
    page = html.render(report("dnat-forward-drop"))
    assert 'id="verdict"' in page and "<svg" in page
    for fetch in ("http://", "https://", "src=", "<script", "<link"):
        assert fetch not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            "https://json-schema.org", ""), fetch


def test_svg_marks_the_deciding_hook() -> None:
    doc = xml.dom.minidom.parseString(svg.for_report(report("dnat-forward-drop")))
    groups = {g.getAttribute("id"): g.getAttribute("class") for g in doc.getElementsByTagName("g")}
    assert "decided-bad" in groups["hook-forward"]
    assert "met" in groups["hook-prerouting"] and groups["hook-input"] == "hook "
    decision = [t for t in doc.getElementsByTagName("text") if t.getAttribute("id") == "decision"][0]
    assert "DROP filter FORWARD policy" in decision.firstChild.data


def test_pcapng_parses_with_scapy_and_carries_comments(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap

    a = bytes(IP(src="192.0.2.2", dst="192.0.2.1") / TCP(sport=40000, dport=8080, flags="S"))
    b = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=8080, dport=40000, flags="SA"))
    path = tmp_path / "x.pcapng"
    path.write_bytes(pcapng.write([pcapng.Packet(a, 1700000000.25, "probe 1: REJECT"),
                                   pcapng.Packet(b, 1700000000.5, "reply")], "fwtrace test", "section"))
    got = rdpcap(str(path))
    assert [p.comments for p in got] == [[b"probe 1: REJECT"], [b"reply"]]
    assert got[0][TCP].dport == 8080 and got[1][IPv6].src == "2001:db8::1"
    assert float(got[0].time) == pytest.approx(1700000000.25)


@pytest.mark.parametrize("table, chain, text, owner, detail", [
    ("filter", "DOCKER-USER", "", "docker", ""),
    ("filter", "DOCKER", "-A DOCKER ! -i docker0 -o docker0 -j DROP", "docker", ""),
    ("filter", "ufw-user-input", "", "ufw", ""),
    ("firewalld", "filter_IN_public_allow", "", "firewalld", "zone public"),
    ("firewalld", "filter_INPUT", "reject with icmpx admin-prohibited", "firewalld", ""),
    ("filter", "IN_dmz_deny", "", "firewalld", "zone dmz"),
    ("filter", "f2b-sshd", "", "fail2ban", "jail sshd"),
    ("f2b-table", "f2b-chain", "tcp dport 22 ip saddr @addr-set-sshd reject", "fail2ban", "jail sshd"),
    ("filter", "KUBE-EXTERNAL-SERVICES",
     '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no endpoints" -j REJECT',
     "kube-proxy", "Service default/web"),
    ("kube-proxy", "reject-chain", "reject", "kube-proxy", ""),
    ("filter", "CROWDSEC_CHAIN", "", "crowdsec", ""),
    ("crowdsec", "crowdsec-chain", "", "crowdsec", ""),
    ("fw4", "reject_from_wan", "", "fw4", "zone wan"),
    ("filter", "LIBVIRT_FWI", "", "libvirt", ""),
    ("filter", "cali-fw-eth0", "", "calico", ""),
])
def test_owner_of(table: str, chain: str, text: str, owner: str, detail: str) -> None:
    from tracer.diagnose.owners import owner_of

    o = owner_of(table, chain, text)
    assert o is not None and (o.key, o.detail) == (owner, detail)


@pytest.mark.parametrize("table, chain", [("filter", "INPUT"), ("filter", "fail2ban"), ("filter", "MY-DOCKS"),
                                          ("nat", "POSTROUTING"), ("filter", "INPUT_RULES")])
def test_no_owner(table: str, chain: str) -> None:
    from tracer.diagnose.owners import owner_of

    assert owner_of(table, chain) is None
