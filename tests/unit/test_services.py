"""probe --service: /etc/services and /etc/rpc parsing, the ports to probe and why
(tracer/plan/services.py), and the PMAPPROC_DUMP call and reply (tracer/system/rpcbind.py).

tests/data/rpcbind/pmapproc-dump-statd.bin is a real reply (xid 0x5eed0001) of Debian 12's rpcbind
1.2.6 (`rpcbind -w -f`) with rpc.statd (nfs-common) registered, captured over TCP in a scratch
namespace; proc-unavail.bin is its UDP answer to procedure 99 (xid 0x5eed0002)."""
from __future__ import annotations

import argparse
import ipaddress
import struct
from pathlib import Path

import pytest

from tracer import cli
from tracer.errors import ExitStatus, UsageError
from tracer.model import Listener, Proto
from tracer.plan import services as sv
from tracer.system import rpcbind

DATA = Path(__file__).parents[1] / "data" / "rpcbind"
# Lines as Debian 12's netbase /etc/services writes them.
SERVICES = """\
# Network services, Internet style
ftp\t\t21/tcp
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
domain\t\t53/tcp\t\t\t\t# Domain Name Server
domain\t\t53/udp
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
sunrpc\t\t111/tcp\t\tportmapper\t# RPC 4.0 portmapper
sunrpc\t\t111/udp\t\tportmapper
"""
RPC = "portmapper\t100000\tportmap sunrpc rpcbind\nmountd\t\t100005\tmount showmount\nnlockmgr\t100021\nstatus\t\t100024\n"
BOTH = (Proto.TCP, Proto.UDP)


def sock(proto: Proto, port: int, who: str = "", addr: str = "0.0.0.0", pid: int = 812) -> Listener:
    return Listener(proto, ipaddress.ip_address(addr), port, process=f"pid {pid} ({who})" if who else None)


def test_parse_services_and_rpc() -> None:
    es = sv.parse_services(SERVICES)
    assert sv.Entry("ssh", 22, Proto.TCP) in es and sv.Entry("http", 80, Proto.TCP, ("www",)) in es
    assert len(es) == 7
    rpc = sv.parse_rpc(RPC)
    assert rpc["mount"] == rpc["mountd"] == 100005 and rpc["rpcbind"] == 100000


def test_etc_services_and_the_listener_disagree() -> None:
    p = sv.resolve("ssh", SERVICES, [sock(Proto.TCP, 2222, "sshd"), sock(Proto.TCP, 2222, "sshd", "::")], BOTH)
    assert p.warnings == ("/etc/services says ssh is 22/tcp; sshd listens on 2222/tcp",)
    assert [(t.port, t.protos) for t in p.targets] == [(2222, (Proto.TCP,))]  # what sshd really listens on
    assert p.targets[0].why == "sshd (pid 812) listens there"
    assert p.lines()[-1] == "probing tcp/2222: sshd (pid 812) listens there"


def test_agreement_is_no_warning() -> None:
    p = sv.resolve("ssh", SERVICES, [sock(Proto.TCP, 22, "sshd"), sock(Proto.TCP, 8080, "python3")], BOTH)
    assert not p.warnings and [t.port for t in p.targets] == [22]
    assert "agrees" in p.targets[0].why


def test_domain_is_one_run_of_tcp_and_udp() -> None:
    p = sv.resolve("domain", SERVICES, [sock(Proto.UDP, 53, "dnsmasq"), sock(Proto.TCP, 53, "dnsmasq")], BOTH)
    [t] = p.targets
    assert t.protos == BOTH and t.label() == "tcp+udp/53" and not p.warnings
    only_udp = sv.resolve("domain", SERVICES, [sock(Proto.UDP, 53, "dnsmasq"), sock(Proto.TCP, 53, "dnsmasq")], (Proto.UDP,))
    assert [t.protos for t in only_udp.targets] == [(Proto.UDP,)]


def test_another_daemon_on_the_registered_port() -> None:
    p = sv.resolve("ssh", SERVICES, [sock(Proto.TCP, 22, "tinysshd", pid=9)], BOTH)
    [t] = p.targets
    assert t.port == 22 and t.why == "/etc/services gives it, and tinysshd (pid 9) listens there"


def test_nothing_listens_probes_the_registered_port() -> None:
    p = sv.resolve("http", SERVICES, [sock(Proto.TCP, 22, "sshd")], BOTH)
    [t] = p.targets
    assert t.port == 80 and "nothing listens there" in t.why


def test_process_without_entry() -> None:
    p = sv.resolve("redis-server", SERVICES, [sock(Proto.TCP, 6379, "redis-server", "127.0.0.1")], BOTH)
    assert [t.port for t in p.targets] == [6379]
    assert p.notes == ("no 'redis-server' in /etc/services (for tcp/udp); redis-server listens on 6379/tcp",)


def test_unknown_name_is_one_line_with_its_own_status() -> None:
    with pytest.raises(sv.ServiceUnknown) as e:
        sv.resolve("foo", SERVICES, [sock(Proto.TCP, 22, "sshd")], BOTH)
    assert e.value.message == "no service 'foo' in /etc/services and no process named foo listening"
    assert e.value.hint and "--dport" in e.value.hint
    assert e.value.status == ExitStatus.SERVICE_UNKNOWN == 11


def test_many_ports_are_capped_and_named() -> None:
    socks = [sock(Proto.TCP, 9000 + i, "myd") for i in range(10)]
    p = sv.resolve("my", SERVICES, socks, BOTH)
    assert len(p.targets) == sv.MAX_TARGETS and "9008, 9009" in p.notes[-1]


def test_rpc_program_names() -> None:
    assert sv.rpc_program("statd", RPC) == ("status", 100024)
    assert sv.rpc_program("mount", RPC) == ("mountd", 100005)
    assert sv.rpc_program("100021", RPC) == ("100021", 100021)
    with pytest.raises(sv.ServiceUnknown, match="no RPC program 'nfsx' in /etc/rpc"):
        sv.rpc_program("nfsx", RPC)


def test_captured_dump_reply() -> None:
    regs = rpcbind.decode_reply((DATA / "pmapproc-dump-statd.bin").read_bytes(), 0x5eed0001)
    assert sv.Registration(100024, 1, Proto.UDP, 51311) in regs and sv.Registration(100024, 1, Proto.TCP, 55699) in regs
    assert {r.prog for r in regs} == {100000, 100024} and len(regs) == 8
    with pytest.raises(rpcbind.RpcError, match="not the reply to this call"):
        rpcbind.decode_reply((DATA / "pmapproc-dump-statd.bin").read_bytes(), 0x1234)
    with pytest.raises(rpcbind.RpcError, match="PROC_UNAVAIL"):
        rpcbind.decode_reply((DATA / "proc-unavail.bin").read_bytes(), 0x5eed0002)
    with pytest.raises(rpcbind.RpcError, match="cut short"):
        rpcbind.decode_reply((DATA / "pmapproc-dump-statd.bin").read_bytes()[:50], 0x5eed0001)


def test_call_encoding() -> None:
    """RFC 5531 call header: xid, CALL(0), rpcvers 2, prog 100000, vers 2, proc 4 (DUMP), AUTH_NONE x2."""
    assert struct.unpack(">10I", rpcbind.encode_call(7)) == (7, 0, 2, 100000, 2, 4, 0, 0, 0, 0)


def test_rpc_plan_names_the_program_and_its_ports() -> None:
    regs = rpcbind.decode_reply((DATA / "pmapproc-dump-statd.bin").read_bytes(), 0x5eed0001)
    socks = [sock(Proto.TCP, 111, "rpcbind", pid=5), sock(Proto.UDP, 51311, "rpc.statd", pid=6),
             sock(Proto.TCP, 55699, "rpc.statd", pid=6)]
    p = sv.resolve_rpc("status", 100024, regs, "PMAPPROC_DUMP over tcp to 127.0.0.1:111", socks, BOTH)
    assert [t.label() for t in p.targets] == ["tcp+udp/111", "udp/51311", "tcp/55699"]
    assert p.targets[2].why == "rpcbind maps status (100024) version 1 to tcp/55699; rpc.statd (pid 6) listens there"
    assert p.registered == ("51311/udp", "55699/tcp") and p.name == "rpc:status"
    missing = sv.resolve_rpc("mountd", 100005, regs, "PMAPPROC_DUMP over tcp to 127.0.0.1:111", socks, BOTH)
    assert [t.port for t in missing.targets] == [111]
    assert "has no registration of mountd (100005)" in missing.notes[0] and "100000, 100024" in missing.notes[0]


def test_rpcbind_not_answering_still_probes_111() -> None:
    tried = "PMAPPROC_DUMP over tcp to 127.0.0.1:111: Connection refused"
    p = sv.resolve_rpc("mountd", 100005, None, tried, [], BOTH)
    assert p.notes == (f"rpcbind did not answer: {tried}; only its own port 111 is probed",)
    assert [t.label() for t in p.targets] == ["tcp+udp/111"]


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["probe", *argv])


@pytest.mark.parametrize("argv, message", [
    (("--service", "ssh", "--dport", "22"), "--service ssh and --dport exclude each other"),
    (("--service", "ssh", "--proto", "icmp"), "--proto icmp does not apply"),
    (("--service", "rpc:"), "not a service name"),
    (("--service", "ssh", "--evidence", "/tmp/x.tar.gz"), "--evidence writes one probe's bundle"),
])
def test_usage_errors(argv: tuple[str, ...], message: str) -> None:
    from tracer.cli import servicecmd

    with pytest.raises(UsageError, match=message):
        servicecmd.check(parse(*argv))


def test_usage_error_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--service", "ssh", "--dport", "22"]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exclude each other" in err
