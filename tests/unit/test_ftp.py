"""The pure side of `probe --app ftp` (tracer/diagnose/ftp.py): FTP replies, the conntrack listing's
helper, the ruleset's helper facts, and the helper-missing finding's fix in each dialect."""
from __future__ import annotations

import ipaddress
from typing import Optional

from tracer.diagnose import ftp
from tracer.model import Backend, PacketResult, PacketSpec, Proto, Reply, RuleRef, Verdict

SRV, CLI = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
SERVER_ADDR = SRV


def test_greeting() -> None:
    assert ftp.greeting_error(21, "220 pyftpdlib 2.2.0 ready.", 3) is None
    assert ftp.greeting_error(21, "220-Welcome", 3) is None
    assert ftp.greeting_error(21, "SSH-2.0-OpenSSH_9.2p1 Debian-2", 3) == \
        "port 21 answered 'SSH-2.0-OpenSSH_9.2p1 Debian-2' not an FTP 220 greeting"
    assert ftp.greeting_error(2121, "", 3) == "port 2121 sent nothing within 3 s, not an FTP 220 greeting"
    assert ftp.greeting_error(21, "421 Too many connections", 3) is not None


def test_passive_ports() -> None:
    assert ftp.passive_port("PASV", "227 Entering passive mode (192,0,2,1,156,107).") == 156 * 256 + 107
    assert ftp.passive_port("EPSV", "229 Entering extended passive mode (|||40043|).") == 40043
    assert ftp.passive_port("EPSV", "229 Entering extended passive mode (!!!40043!).") == 40043
    assert ftp.passive_port("PASV", "500 Command not understood.") is None
    assert ftp.passive_port("EPSV", "502 EPSV not implemented") is None


def test_conntrack_helper() -> None:
    listing = ("tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40312 dport=21 src=192.0.2.1 "
               "dst=192.0.2.2 sport=21 dport=40312 [ASSURED] mark=0 helper=ftp use=1\n"
               "tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40313 dport=21 src=192.0.2.1 "
               "dst=192.0.2.2 sport=21 dport=40313 [ASSURED] mark=0 use=1\n")
    assert ftp.conntrack_helper(listing, 40312)[0] == "ftp"
    helper, entry = ftp.conntrack_helper(listing, 40313)
    assert helper == "" and "sport=40313" in entry
    assert ftp.conntrack_helper(listing, 1) == ("", "none")


def test_ruleset_facts() -> None:
    nft = 'table inet filter {\n\tchain input {\n\t\tct state established,related accept\n' \
          '\t\ttcp dport 21 ct helper set "ftp-std"\n\t}\n}\n'
    assert ftp.ruleset_facts(nft, []) == (True, ('ct helper set "ftp-std"',))
    assert ftp.ruleset_facts("ct state established accept\n", []) == (False, ())
    ipt = ["-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
           "-A PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp\n"]
    assert ftp.ruleset_facts("", ipt) == (True, ("-j CT --helper ftp",))
    assert ftp.ruleset_facts("", ["-A INPUT -m state --state RELATED -j ACCEPT"])[0]


def _result(verdict: Verdict, dport: int, sport: int, backend: Backend = Backend.NFT,
            decided: Optional[RuleRef] = None) -> PacketResult:
    spec = PacketSpec(Proto.TCP, CLI, SRV, sport, dport, "S", 7)
    by = decided or RuleRef("inet" if backend is Backend.NFT else "ip", "filter",
                            "input" if backend is Backend.NFT else "INPUT", policy="drop", backend=backend)
    return PacketResult(spec, verdict, by, Reply("none"))


def _session(helper: str = "", module: Optional[bool] = True) -> ftp.FtpSession:
    return ftp.FtpSession("an FTP control session", True, "220 ready", None, "230 ok",
                          (ftp.Passive("PASV", "227 (192,0,2,1,156,64)", 40000, 50001),
                           ftp.Passive("EPSV", "229 (|||40001|)", 40001, 50002)),
                          helper, "tcp ... sport=41000 dport=21", module, None)


def test_helper_missing_in_nft_assigns_the_helper_for_port_21_only() -> None:
    results = [_result(Verdict.ACCEPT, 21, 41000), _result(Verdict.DROP, 40000, 50001), _result(Verdict.DROP, 40001, 50002)]
    nft = "ct state established,related accept\ntcp dport 21 accept\n"
    [f] = ftp.findings(_session(), results, 21, False, nft, [])
    assert f.code == "helper-missing"
    assert "ports 40000, 40001 (PASV, EPSV) were dropped by policy DROP" in f.message
    assert "nf_conntrack_ftp is loaded (or built in)" in f.message and "gone" in f.message
    assert f.commands == ("nft add ct helper inet filter ftp-21 '{ type \"ftp\" protocol tcp; }'",
                          'nft insert rule inet filter input ip daddr 192.0.2.1 tcp dport 21 ct helper set "ftp-21"')
    [fix] = f.fixes
    assert fix.scope == "service" and "no passive port is opened for anyone else" in fix.lets_in
    assert not any("40000" in c for c in f.commands)


def test_helper_missing_loads_the_module_and_accepts_related_in_iptables() -> None:
    results = [_result(Verdict.DROP, 40000, 50001, Backend.IPTABLES_NFT)]
    [f] = ftp.findings(_session(module=False), results, 21, False, "", ["-A INPUT -p tcp --dport 21 -j ACCEPT"])
    assert f.commands == ("modprobe nf_conntrack_ftp",
                          "iptables -t raw -A PREROUTING -p tcp -d 192.0.2.1 --dport 21 -j CT --helper ftp",
                          "iptables -I INPUT -m conntrack --ctstate RELATED -m helper --helper ftp -j ACCEPT")
    assert "nf_conntrack_ftp is not loaded" in f.message


def test_helper_there_but_related_not_accepted() -> None:
    results = [_result(Verdict.DROP, 40000, 50001)]
    [f] = ftp.findings(_session(helper="ftp"), results, 21, False, "tcp dport 21 accept\n", [])
    assert f.code == "related-not-accepted"
    assert f.commands == ('nft insert rule inet filter input ct state related ct helper "ftp" accept',)
    assert ftp.findings(_session(helper="ftp"), results, 21, False, "ct state related accept\n", []) == ()


def test_no_finding_when_the_data_gets_in_or_the_service_is_no_ftp() -> None:
    assert ftp.findings(_session(), [_result(Verdict.ACCEPT, 40000, 50001)], 21, False, "", []) == ()
    bad = ftp.FtpSession("tried", True, "SSH-2.0-x", "port 21 answered 'SSH-2.0-x' not an FTP 220 greeting")
    assert ftp.findings(bad, [_result(Verdict.DROP, 40000, 50001)], 21, False, "", []) == ()
    assert bad.to_json()["error"].startswith("port 21 answered")


def test_local_client_gets_words_not_input_commands() -> None:
    [f] = ftp.findings(_session(), [_result(Verdict.DROP, 40000, 50001)], 21, True, "", [])
    assert f.commands == () and "output hook" in f.message


def test_app_ftp_refusals(capsys: object) -> None:
    from tracer import cli

    for argv, words in ((["--dport", "21"], "--app ftp needs a real client socket"),
                        (["--local", "--proto", "udp", "--dport", "69"], "talks FTP over tcp"),
                        (["--local", "--src", "192.0.2.9"], "--src does not apply")):
        assert cli.main(["probe", "--app", "ftp", *argv]) == 2
        err = capsys.readouterr().err  # type: ignore[attr-defined]
        assert words in err and len(err.strip().splitlines()) == 1, err


def test_data_probes_are_traced_whatever_port_the_server_names() -> None:
    import random

    from tracer.model import ProbeRequest
    from tracer.pipeline import appsteps
    from tracer.plan import plan

    control = PacketSpec(Proto.TCP, CLI, SRV, 41000, 21, "S", 7)
    data = appsteps.data_specs(ProbeRequest(dport=21, app="ftp"), (control,), random.Random(1))
    assert [d.dport for d in data] == [0, 0] and len({d.sport for d in data} | {41000}) == 3
    m = plan.match_probe(data[0])
    assert "dport" not in m and f"tcp sport {data[0].sport}" in m and f"ip id {data[0].ident}" in m
    assert plan.match_probe(control).endswith("tcp dport 21")
    assert appsteps.data_specs(ProbeRequest(dport=21), (control,), random.Random(1)) == ()


def test_app_ftp_sequence_probes_each_data_port_while_the_session_is_open() -> None:
    """Scripted (tests/unit/test_pipeline.py's Script): the session opens after the control probe,
    each PASV/EPSV reply's port is built into a probe and sent before the next command, then QUIT."""
    from tests.unit.test_pipeline import Script, run
    from tracer.model import ProbeRequest

    replies = iter(["227 Entering passive mode (192,0,2,1,156,64).", "229 Entering extended passive mode (|||40001|)."])
    script = Script(OpenInjector=CLI, FtpOpen=("220 ready", None, "230 Login successful.", 41000),
                    FtpHelper=("", "tcp ... sport=41000 dport=21", True, None), FtpCommand=lambda cmd: next(replies))
    report = run(ProbeRequest(dport=21, from_netns="cli", dst=SERVER_ADDR, app="ftp"), script)
    names = [n for n in script.names() if n in ("Send", "FtpOpen", "FtpHelper", "FtpCommand", "BuildPackets",
                                                 "FtpClose", "Finish")]
    assert names == ["BuildPackets", "Send", "FtpOpen", "FtpHelper", "FtpCommand", "BuildPackets", "Send",
                     "FtpCommand", "BuildPackets", "Send", "FtpClose", "Finish"]
    sent = [cmd.spec for cmd in script.asked if type(cmd).__name__ == "Send"]
    assert [s.dport for s in sent] == [21, 40000, 40001]
    # the trace plan had their rules from the start, matching them whatever port the server named
    assert all(f"tcp sport {s.sport}" in report.evidence.batch for s in sent)
    assert report.app is not None and [p.port for p in report.app.passive] == [40000, 40001]
    assert [r.spec.dport for r in report.results] == [21, 40000, 40001]


def test_app_ftp_no_greeting_sends_no_data_probe() -> None:
    from tests.unit.test_pipeline import Script, run
    from tracer.model import ProbeRequest
    from tracer.report.outcome import exit_status

    script = Script(OpenInjector=CLI, FtpOpen=("SSH-2.0-OpenSSH_9.2p1", None, "", 41000))
    report = run(ProbeRequest(dport=21, from_netns="cli", dst=SERVER_ADDR, app="ftp"), script)
    assert "FtpCommand" not in script.names() and "FtpClose" in script.names()
    assert report.app is not None and report.app.error == "port 21 answered 'SSH-2.0-OpenSSH_9.2p1' not an FTP 220 greeting"
    assert len(report.results) == 1 and int(exit_status(report)) == 12
