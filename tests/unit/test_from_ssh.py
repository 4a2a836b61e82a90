"""--from ssh:// (issue 26): the URL, the options that cannot apply, the trace match of a probe
whose IP id the client's kernel picks, and ssh's failures as one line each."""
from __future__ import annotations

import ipaddress

import pytest

from tracer import cli
from tracer.errors import ExitStatus, UsageError
from tracer.model import PacketSpec, Proto
from tracer.plan import plan
from tracer.plan.sshurl import parse
from tracer.system.ssh import classify


def test_url_forms() -> None:
    d = parse("ssh://admin@10.0.0.7:2222")
    assert (d.user, d.host, d.port) == ("admin", "10.0.0.7", 2222)
    assert d.argv() == ["-p", "2222", "-l", "admin", "--", "10.0.0.7"]
    assert parse("ssh://[2001:db8::1]").argv() == ["--", "2001:db8::1"]
    for bad in ("ssh://", "ssh://-oProxyCommand=x", "ssh://h:99999", "ssh://a b", "http://h"):
        with pytest.raises(UsageError):
            parse(bad)


@pytest.mark.parametrize("extra, word", [(["--local"], "--local"), (["--from-netns", "x"], "--from-netns"),
                                         (["--proto", "icmp"], "tcp or udp"), (["--flags", "A"], "--flags A"),
                                         (["--log"], "--log"), (["--ebpf", "on"], "--ebpf on"),
                                         (["--src", "192.0.2.9"], "--src")])
def test_options_that_cannot_apply(extra: list[str], word: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["probe", "--from", "ssh://h"] + (extra if "icmp" in extra else ["--dport", "80"] + extra)
    assert cli.main(argv) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip()
    assert word in err and len(err.splitlines()) == 1


def test_only_ssh_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--dport", "80", "--from", "host"]) == ExitStatus.USAGE
    assert "only ssh:// is supported" in capsys.readouterr().err


def test_probe_match_without_ident_is_the_syn() -> None:
    a, b = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1")
    m = plan.match_probe(PacketSpec(Proto.TCP, a, b, 40000, 8080, "S", 0))
    assert "ip id" not in m and m.endswith("tcp sport 40000 tcp dport 8080 tcp flags & (syn | ack) == syn")
    assert "ip id 7" in plan.match_probe(PacketSpec(Proto.TCP, a, b, 40000, 8080, "S", 7))


def test_ssh_failures_classified() -> None:
    assert classify("h", 255, "ssh: connect to host h port 22: Connection refused\n").status == ExitStatus.SSH_UNREACHABLE
    assert classify("h", 255, "root@h: Permission denied (publickey).\n").status == ExitStatus.SSH_AUTH
    assert classify("h", 255, "Host key verification failed.\n").status == ExitStatus.SSH_AUTH
    assert classify("h", 127, "sh: 1: python3: not found\n").status == ExitStatus.REMOTE_PYTHON
