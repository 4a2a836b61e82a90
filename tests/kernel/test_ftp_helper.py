"""`probe --app ftp` against a real FTP server (pyftpdlib) in the lab's server namespace: a real
control session from the client namespace, its passive data ports probed and traced, and the
conntrack helper that makes them RELATED (finding helper-missing, its fix for port 21 only).

The kernel's nf_conntrack_ftp is built in here (no loadable modules): no test loads a module. On a
kernel with modules, the lab's `ct helper` object loads it on demand (global, left loaded)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from tests.kernel.test_probe import probe
from tracer import cli
from tracer.cli.lab import SERVER4, Lab
from tracer.errors import ExitStatus
from tracer.model import Proto
from tracer.render import jsondoc, timeline

SCHEMA = json.loads((Path(__file__).parents[2] / "schema" / "report.schema.json").read_text())

FTP_SERVER = r'''
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
auth = DummyAuthorizer()
auth.add_anonymous(sys.argv[1])
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(40000, 40100)  # the range an admin would be tempted to open
server = FTPServer(("0.0.0.0", 21), FTPHandler)
print("ready", flush=True)
server.serve_forever()
'''

# The control port accepted, everything else dropped unless conntrack relates it.
NFT_BASE = """table inet filter {
  %s
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iif lo accept
    %s
    tcp dport 21 accept
  }
}
"""
HELPER = 'ct helper ftp-std { type "ftp" protocol tcp; }'


@pytest.fixture
def ftp_server(lab: Lab, tmp_path: Path) -> Iterator[Any]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.server, sys.executable, "-c", FTP_SERVER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_passive_with_the_helper_assigned_is_related_and_accepted(lab: Lab, ftp_server: Any) -> None:
    lab.nft(lab.server, NFT_BASE % (HELPER, 'tcp dport 21 ct helper set "ftp-std"'))
    report = probe(lab, ebpf="off", dport=21, app="ftp")
    s = report.app
    assert s is not None and s.error is None and s.connected and s.greeting.startswith("220")
    assert s.login.startswith("230") and s.helper == "ftp" and s.module is True
    assert [p.command for p in s.passive] == ["PASV", "EPSV"]
    control, *data = report.results
    assert control.spec.dport == 21 and control.reply.kind == "syn-ack"
    assert len(data) == 2
    for p, r in zip(s.passive, data):
        assert p.port is not None and 40000 <= p.port < 40100 and r.spec.dport == p.port
        assert r.verdict.value == "accept" and r.reply.kind == "syn-ack"
        assert r.decided_by is not None and r.decided_by.rule is not None
        assert "related" in r.decided_by.rule.display
        assert any(s_.event.ct_state == "related" for s_ in r.steps if s_.event.ct_state)  # traced as RELATED
    assert report.reached and not [f for f in report.findings if f.code == "helper-missing"]
    doc = jsondoc.document(report)
    jsonschema.validate(doc, SCHEMA)
    assert doc["app"]["control_accepted"] is True and doc["app"]["helper"]["assigned"] == "ftp"


def test_passive_without_a_helper_is_helper_missing_and_the_fix_assigns_it_for_port_21(lab: Lab, ftp_server: Any) -> None:
    lab.nft(lab.server, NFT_BASE % ("", ""))
    report = probe(lab, ebpf="off", dport=21, app="ftp")
    s = report.app
    assert s is not None and s.error is None and s.helper == ""
    control, *data = report.results
    assert control.reply.kind == "syn-ack" and len(data) == 2
    assert all(r.verdict.value == "drop" and r.decided_by is not None and r.decided_by.policy == "drop" for r in data)
    [f] = [f for f in report.findings if f.code == "helper-missing"]
    assert "no conntrack helper" in f.message and "no rule assigns one" in f.message
    assert "nf_conntrack_ftp is loaded" in f.message
    assert f.commands == ("nft add ct helper inet filter ftp-21 '{ type \"ftp\" protocol tcp; }'",
                          f'nft insert rule inet filter input ip daddr {SERVER4} tcp dport 21 ct helper set "ftp-21"')
    assert "40000" not in " ".join(f.commands) and "no passive port is opened" in f.fixes[0].lets_in
    assert not report.reached
    jsonschema.validate(jsondoc.document(report), SCHEMA)
    text = timeline.sections(report)
    assert any(row.label == "pasv" and "drop" in row.body for sec in text for row in sec)
    # the fix, applied as printed: the same session's data connections are now RELATED and accepted
    for cmd in f.commands:
        lab.run(lab.server, ["sh", "-c", cmd])
    again = probe(lab, ebpf="off", dport=21, app="ftp")
    assert again.app is not None and again.app.helper == "ftp"
    assert [r.verdict.value for r in again.results] == ["accept", "accept", "accept"] and again.reached


def test_app_ftp_against_a_service_that_is_not_ftp(lab: Lab, capsys: Any) -> None:
    banner = "SSH-2.0-OpenSSH_9.2p1 Debian-2"
    proc = subprocess.Popen(["ip", "netns", "exec", lab.server, sys.executable, "-c",
                             "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                             "s.bind(('0.0.0.0',21));s.listen(4);print('ready',flush=True)\n"
                             f"while True:\n c,_=s.accept();c.sendall(b'{banner}\\r\\n')\n"],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        argv = ["probe", "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4),
                "--app", "ftp", "--dport", "21", "--ebpf", "off", "--no-color"]
        status = cli.main(argv)
        out = capsys.readouterr().out
        assert cli.main(argv + ["--json"]) == ExitStatus.APP_PROTOCOL
        doc = json.loads(capsys.readouterr().out)
    finally:
        proc.kill()
        proc.wait()
    assert status == ExitStatus.APP_PROTOCOL
    line = f"port 21 answered '{banner}' not an FTP 220 greeting"
    summary = " ".join(out.split("\n\n")[-1].split())  # the summary line, as the terminal folds it at 80 columns
    assert summary.endswith(f"; --app ftp: {line}"), out
    assert f"ftp an FTP control session to {SERVER4}:21 from namespace {lab.client}: {line}" in " ".join(out.split())
    assert "packet 1" in out and "syn-ack" in out  # the probe's other results still reported
    jsonschema.validate(doc, SCHEMA)
    assert doc["exit_status"] == 12 and doc["app"]["control_accepted"] is True
    assert doc["app"]["error"] == line and doc["packets"][0]["verdict"] == "accept"


@pytest.mark.parametrize("related", [True, False])
def test_iptables_ruleset_gets_its_fix_in_iptables(lab: Lab, ftp_server: Any, related: bool) -> None:
    """An iptables ruleset: the helper through the raw table's CT target, and where the ruleset accepts
    no RELATED at all, a RELATED rule limited to what the ftp helper relates."""
    state = "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n" if related else ""
    lab.iptables_restore(lab.server, f"*filter\n:INPUT DROP [0:0]\n{state}-A INPUT -i lo -j ACCEPT\n"
                                     "-A INPUT -p tcp -m tcp --dport 21 -j ACCEPT\nCOMMIT\n")
    report = probe(lab, ebpf="off", dport=21, app="ftp")
    [f] = [f for f in report.findings if f.code == "helper-missing"]
    expected = (f"iptables -t raw -A PREROUTING -p tcp -d {SERVER4} --dport 21 -j CT --helper ftp",)
    if not related:
        expected += ("iptables -I INPUT -m conntrack --ctstate RELATED -m helper --helper ftp -j ACCEPT",)
        assert "no rule of the ruleset accepts RELATED at all" in f.message
    assert f.commands == expected
    for cmd in f.commands:
        lab.run(lab.server, cmd.split())
    again = probe(lab, ebpf="off", dport=21, app="ftp")
    assert again.app is not None and again.app.helper == "ftp"
    assert [r.verdict.value for r in again.results] == ["accept", "accept", "accept"] and again.reached
    assert not [f for f in again.findings if f.code in ("helper-missing", "related-not-accepted")]
