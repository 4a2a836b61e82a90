"""probe --service on the kernel: a daemon named sshd on another port than /etc/services says,
an unknown name, and RPC services behind a real rpcbind (Debian's rpcbind, asked with a real
PMAPPROC_DUMP) with a real rpc.statd (nfs-common) registered with it; and SELinux, which cannot
run on this Debian kernel, is not mentioned where it is absent.

rpcbind and rpc.statd run in the lab's server namespace and in a mount namespace of their own with
tmpfs on /run (rpcbind.sock, rpcbind.lock, statd's pid file) and on /var/lib/nfs (statd's state
and sm/ directories): nothing of the machine's own is read or written. rpc.statd rather than a test
server: it is a real program registering itself with rpcbind (RPCBPROC_SET over rpcbind.sock),
on ports of its own choosing, as on an NFS server.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from tracer import cli, system
from tracer.cli.lab import SERVER4, Lab
from tracer.errors import ExitStatus

SCHEMA = json.loads((Path(__file__).parents[2] / "schema" / "report.schema.json").read_text())

NAMED_SERVER = r'''
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME: the comm ss -p shows
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c = s.accept()[0]
    c.sendall(b"SSH-2.0-fwtrace-test\r\n")  # a greeting, as sshd sends first
    c.close()
'''
RPC_DAEMONS = ("mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/nfs && mkdir /var/lib/nfs/sm "
               "/var/lib/nfs/sm.bak && chown statd /var/lib/nfs/sm /var/lib/nfs/sm.bak && { rpcbind -w -f & } && "
               "for i in 1 2 3 4 5 6 7 8 9 10; do [ -S /run/rpcbind.sock ] && break; sleep 0.2; done; "
               "{ rpc.statd -F -L & } ; wait")


def fwtrace(lab: Lab, capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    status = cli.main(["probe", *argv, "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4),
                       "--timeout", "0.6", "--ebpf", "off", "--json"])
    out, err = capfd.readouterr()
    doc = json.loads(out) if out.strip() else None
    for one in (doc or {}).get("probes", []):
        jsonschema.validate(one, SCHEMA)  # each port's document is a probe's own
    return status, doc, err


@pytest.fixture
def named_sshd(lab: Lab) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.server, sys.executable, "-c", NAMED_SERVER, "sshd", "2222"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_service_listening_elsewhere_than_etc_services(lab: Lab, named_sshd: Any, capfd: Any) -> None:
    """The firewall opens 22 as /etc/services says; sshd was moved to 2222, which it drops."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
                                     "-A INPUT -p tcp -m tcp --dport 2222 -j DROP\nCOMMIT\n")
    status, doc, _ = fwtrace(lab, capfd, "--service", "ssh")
    s = doc["service"]
    assert s["warnings"] == ["/etc/services says ssh is 22/tcp; sshd listens on 2222/tcp"]
    assert [(p["port"], p["protos"]) for p in s["probed"]] == [(2222, ["tcp"])]
    assert s["probed"][0]["why"] == f"sshd (pid {named_sshd.pid}) listens there"
    [probe] = doc["probes"]
    [pkt] = probe["packets"]
    assert pkt["probe"]["dport"] == 2222 and pkt["verdict"] == "drop" and pkt["decided_by"]["rule_number"] == 2
    assert status == ExitStatus.BLOCKED


def test_service_text_says_what_was_probed(lab: Lab, named_sshd: Any, capfd: Any) -> None:
    status = cli.main(["probe", "--service", "ssh", "--netns", lab.server, "--from-netns", lab.client,
                       "--dst", str(SERVER4), "--timeout", "0.6", "--ebpf", "off"])
    out = capfd.readouterr().out
    assert out.startswith("ssh: warning: /etc/services says ssh is 22/tcp; sshd listens on 2222/tcp\n"
                          f"ssh: probing tcp/2222: sshd (pid {named_sshd.pid}) listens there\n")
    assert status == ExitStatus.OK


def test_unknown_service_is_one_line_and_changes_nothing(lab: Lab, capfd: Any) -> None:
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    status, doc, err = fwtrace(lab, capfd, "--service", "nosuchsvc")
    assert status == ExitStatus.SERVICE_UNKNOWN and doc is None
    assert err == ("fwtrace: error: no service 'nosuchsvc' in /etc/services and no process named nosuchsvc listening "
                   "(hint: see `getent services` and `ss -ltnup` for the names and who listens, or give --dport)\n")
    assert lab.run(lab.server, ["nft", "list", "ruleset"]).stdout == before


@pytest.fixture
def rpc_daemons(lab: Lab) -> Iterator[None]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.server, "unshare", "-m", "--propagation", "private",
                             "sh", "-c", RPC_DAEMONS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        for _ in range(50):  # statd's own registration: both its ports are up
            if proc.poll() is None and _statd_up(lab):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"rpcbind/rpc.statd did not start: {proc.stderr.read() if proc.stderr else ''}")
        yield
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started: sh, rpcbind, rpc.statd
        proc.wait()


def _statd_up(lab: Lab) -> bool:
    from tracer.system import rpcbind

    with system.netns(lab.server):
        regs, _ = rpcbind.dump()
    return bool(regs) and {r.proto.value for r in regs if r.prog == 100024} == {"tcp", "udp"}


def test_rpc_service_behind_rpcbind(lab: Lab, rpc_daemons: None, capfd: Any) -> None:
    """The firewall opens rpcbind's 111 but not statd's dynamic ports: the report names the
    program, its ports and the rule that drops them."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
                                     "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
                                     "-A INPUT -p tcp -m tcp --dport 111 -j ACCEPT\n"
                                     "-A INPUT -p udp -m udp --dport 111 -j ACCEPT\nCOMMIT\n")
    status, doc, _ = fwtrace(lab, capfd, "--service", "rpc:statd")
    s = doc["service"]
    assert s["name"] == "rpc:status" and s["source"] == "rpcbind"
    probed = s["probed"]
    assert (probed[0]["port"], probed[0]["protos"]) == (111, ["tcp", "udp"])
    dynamic = probed[1:]
    assert {p for d in dynamic for p in d["protos"]} == {"tcp", "udp"}
    for d in dynamic:
        assert f"rpcbind maps status (100024) version 1 to {d['protos'][0]}/{d['port']}" in d["why"]
        assert "rpc.statd (pid " in d["why"]
    first, *rest = doc["probes"]
    assert [p["verdict"] for p in first["packets"]] == ["accept", "accept"]
    for probe, d in zip(rest, dynamic):
        [pkt] = probe["packets"]
        assert pkt["probe"]["dport"] == d["port"] and pkt["verdict"] == "drop", pkt
        by = pkt["decided_by"]  # the blocking rule: INPUT's policy DROP
        assert (by["chain"], by["rule"]) == ("INPUT", "policy DROP"), by
    assert status == ExitStatus.BLOCKED


def test_rpcbind_not_answering(lab: Lab, capfd: Any) -> None:
    status, doc, _ = fwtrace(lab, capfd, "--service", "rpc:mountd")
    s = doc["service"]
    [note] = s["notes"]
    assert note.startswith("rpcbind did not answer: PMAPPROC_DUMP over tcp to 127.0.0.1:111: Connection refused; "
                           "PMAPPROC_DUMP over udp to 127.0.0.1:111: Connection refused")
    assert note.endswith("only its own port 111 is probed")
    [probe] = doc["probes"]
    assert [p["probe"]["dport"] for p in probe["packets"]] == [111, 111]  # the other results still reported
    assert status == ExitStatus.BLOCKED


def test_nothing_about_selinux_where_it_is_absent(lab: Lab, capfd: Any) -> None:
    """This Debian kernel has no SELinux (/sys/fs/selinux absent): a port the firewall lets through
    and nothing listens on (where SELinux is asked) gets no finding or word of it."""
    import os

    assert not os.path.exists("/sys/fs/selinux/enforce")
    status, doc, _ = fwtrace(lab, capfd, "--service", "http")  # /etc/services' 80/tcp; nothing listens
    [probe] = doc["probes"]
    assert [f["code"] for f in probe["findings"]] == ["no-listener"]
    assert "selinux" not in json.dumps(doc).lower() and status == ExitStatus.BLOCKED
