"""Kernel verdicts on the real kernel: the kernel, not a rule, drops the probe (reverse-path
filter, forwarding off on a DNAT router, no route back, a full accept queue), each run once with
the eBPF drop-reason probe and once without it (the verdict then comes from the namespace's
counter deltas, route lookups and sysctls); and a listener bound to 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import structlog

from tracer import system
from tracer.pipeline.driver import Run
from tracer.cli.lab import BACKEND4, SERVER4, Lab, published_port
from tracer.model import ProbeRequest, Proto
from tracer.report.outcome import ProbeReport
from tracer.render import jsondoc, timeline

log = structlog.get_logger("test")
CUSTOMER = ipaddress.ip_address("203.0.113.5")
SCHEMA = __import__("json").loads((Path(__file__).parents[2] / "schema" / "report.schema.json").read_text())


@pytest.fixture(params=["on", "off"])
def ebpf(request: pytest.FixtureRequest) -> str:
    """eBPF on (bcc, BTF and headers installed by scripts/setup: missing ones fail in CI) or off."""
    if request.param == "on":
        from tracer.system import ebpf_headers as headers, ebpf_loader as loader

        missing = [] if os.path.exists(loader.BTF_PATH) and headers.find().kind != "none" else ["BTF or headers"]
        try:
            import bcc  # noqa: F401
        except ImportError:
            missing.append("bcc (python3-bpfcc)")
        if missing:
            msg = "eBPF prerequisites missing: " + ", ".join(missing)
            if os.environ.get("CI") == "true":
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
    return str(request.param)


def probe(lab: Lab, ebpf: str, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("timeout", 0.6)
    if "via" not in kw:
        kw.setdefault("from_netns", lab.client)
        kw.setdefault("dst", SERVER4)
    report = Run(ProbeRequest(ebpf=ebpf, **kw), log).execute()
    assert report.cleanup_ok and report.ruleset_unchanged is True
    assert report.ebpf == ("loaded" if ebpf == "on" else "")
    return report


def kernel_drop(report: ProbeReport, cause: str, setting: str, ebpf: str, evidence: str) -> dict[str, Any]:
    """The JSON document's verdict and decided_by, the summary line and the conclusion agree."""
    doc = jsondoc.document(report)
    jsonschema.validate(doc, SCHEMA)
    [p] = doc["packets"]
    d = p["decided_by"]
    assert p["verdict"] == "drop" and d["kind"] == "kernel", (p["verdict"], d, p["kernel_checked"])
    assert d["cause"] == cause and d["setting"] == setting, d
    said = " ".join(d["evidence"])
    assert ("eBPF: " in said) == (ebpf == "on"), said  # eBPF's view is evidence only when it watched
    assert evidence in said, said
    line = timeline.summary(report)
    assert f"dropped by the kernel: {cause}, {setting}" in line and "no verdict traced" not in line
    assert "dropped by the kernel" in " ".join(report.conclusions)
    assert not report.reached and doc["outcome"] == "blocked"
    return d


def test_rp_filter(router_lab: Lab, ebpf: str) -> None:
    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):  # per-namespace sysctls of the lab's server
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    report = probe(lab, ebpf, dport=22, via="eth0", src=CUSTOMER, dst=SERVER4)
    d = kernel_drop(report, "reverse-path filter", "net.ipv4.conf.eth0.rp_filter=1", ebpf,
                    "eBPF: drop reason IP_RPFILTER" if ebpf == "on" else "counter TcpExtIPReversePathFilter +1")
    assert d["reason"] == "IP_RPFILTER"
    rp = [f for f in report.findings if f.code == "rp-filter"]
    assert rp and "net.ipv4.conf.eth0.rp_filter=2" in " ".join(rp[0].commands)
    assert not [f for f in report.findings if f.code in ("stack-drop", "kernel-drop")]


def test_forwarding_off_on_a_dnat_router(router_lab: Lab, ebpf: str) -> None:
    lab = router_lab
    assert lab.backend is not None
    lab.iptables_restore(lab.server, published_port(forward_policy="ACCEPT"))
    lab.listen(lab.backend, Proto.TCP, 80)
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.ip_forward", "0")
    report = probe(lab, ebpf, dport=8080)
    d = kernel_drop(report, "forwarding disabled", "net.ipv4.ip_forward=0", ebpf,
                    "eBPF: drop reason IP_INADDRERRORS" if ebpf == "on" else "counter IpInAddrErrors +1")
    assert d["function"] == "ip_error"
    [f] = [f for f in report.findings if f.code == "forwarding-off"]
    assert f.commands == ("sysctl -w net.ipv4.conf.eth0.forwarding=1",)
    assert str(BACKEND4) in f.message


def test_no_route_back(lab: Lab, ebpf: str) -> None:
    lab.listen(lab.server, Proto.TCP, 8080)
    stranger = ipaddress.ip_address("198.51.100.77")  # the server has no route to it
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "0")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "0")
    report = probe(lab, ebpf, dport=8080, src=stranger)
    d = kernel_drop(report, "no route back for the reply", f"no route to {stranger}", ebpf, "counter IpOutNoRoutes +1")
    assert "route lookup `ip route get 198.51.100.77" in " ".join(d["evidence"])
    assert [f for f in report.findings if f.code == "no-route-back"]
    assert not [f for f in report.findings if f.code == "accept-queue-full"]


def test_listen_queue_overflow(lab: Lab, ebpf: str) -> None:
    with system.netns(lab.server):
        srv = socket.socket()
    clients = []
    try:
        srv.bind(("0.0.0.0", 8080))
        srv.listen(0)  # one connection fills the queue; nobody accepts
        for _ in range(2):
            with system.netns(lab.client):
                c = socket.socket()
            c.setblocking(False)
            clients.append(c)
            try:
                c.connect((str(SERVER4), 8080))
            except BlockingIOError:
                pass
        time.sleep(0.3)
        report = probe(lab, ebpf, dport=8080)
    finally:
        for c in clients:
            c.close()
        srv.close()
    d = kernel_drop(report, "listen queue overflow", d_setting(report), ebpf, "counter TcpExtListenOverflows +1")
    assert d["setting"].startswith("listen backlog of 0.0.0.0:8080 (capped by net.core.somaxconn=")
    assert [f for f in report.findings if f.code == "accept-queue-full"]


def d_setting(report: ProbeReport) -> str:
    k = report.results[0].kernel
    assert k is not None and k.setting is not None, report.results[0].kernel_checked
    return k.setting


def test_listener_on_loopback_names_the_process(lab: Lab) -> None:
    lab.listen(lab.server, Proto.TCP, 8080, addr="127.0.0.1")
    report = probe(lab, "off", dport=8080)
    [f] = [f for f in report.findings if f.code == "listener-address"]
    assert "127.0.0.1:8080 (loopback only)" in f.message
    assert f"pid {os.getpid()} (" in f.message  # the lab's socket is this process's
    assert "0.0.0.0" in (f.fix or "")
    assert not report.reached
    assert report.results[0].kernel is None  # the kernel answered with a RST: no kernel drop


@pytest.mark.parametrize("rules", ["iptables", "nft"])
def test_reverse_path_rule_is_explained_by_the_route_back(router_lab: Lab, rules: str) -> None:
    """`-m rpfilter --invert -j DROP` and nft's `fib saddr . iif oif missing drop` (the kernel
    selftests' rpath.sh rulesets): the route back, never a ban of the source with a whitelist."""
    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "0")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "0")
    if rules == "iptables":
        lab.iptables_restore(lab.server, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                         "-A PREROUTING -m rpfilter --invert -j DROP\nCOMMIT\n")
    else:
        lab.nft(lab.server, "table inet t {\n chain pre {\n  type filter hook prerouting priority raw;\n"
                            "  fib saddr . iif oif missing counter drop\n }\n}\n")
    report = probe(lab, "off", dport=22, via="eth0", src=CUSTOMER, dst=SERVER4)
    [r] = report.results
    assert r.verdict.value == "drop" and r.decided_by is not None and r.kernel is None
    assert jsondoc.document(report)["packets"][0]["decided_by"]["kind"] == "rule"
    [f] = [f for f in report.findings if f.code == "rp-filter-rule"]
    assert "not a ban of 203.0.113.5" in f.message and "leaves by eth1, not eth0" in f.message
    assert not [x for x in report.findings if x.code == "blocked-by-rule"]
    assert not any("203.0.113.5" in c for x in report.findings for c in x.commands)  # no whitelist
    assert "reverse-path check" in report.conclusions[0]


def test_reply_leaving_by_another_interface_is_no_reply_the_client_got(router_lab: Lab) -> None:
    """Loose rp_filter lets the probe in; its SYN-ACK leaves by eth1 (the route back), not eth0."""
    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "2")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "2")
    lab.listen(lab.server, Proto.TCP, 8080)
    report = probe(lab, "off", dport=8080, via="eth0", src=CUSTOMER, dst=SERVER4)
    [r] = report.results
    assert r.reply.kind == "syn-ack" and r.kernel is None
    [f] = [f for f in report.findings if f.code == "reply-elsewhere"]
    assert "leaves by eth1" in f.message and "not by eth0" in f.message
    assert not report.reached and "another interface" in report.conclusions[0]


@pytest.mark.parametrize("mode", ["from-netns", "ingress"])
def test_proto_both_on_a_dns_like_service(lab: Lab, mode: str) -> None:
    """--proto both: TCP and UDP to port 53 in one run; the firewall lets UDP in and drops TCP,
    as a resolver whose zone transfers / large answers over TCP are blocked."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 53 -j DROP\n"
                                     "-A INPUT -p udp -m udp --dport 53 -j ACCEPT\nCOMMIT\n")
    lab.listen(lab.server, Proto.TCP, 53)
    lab.listen(lab.server, Proto.UDP, 53)
    kw: dict[str, Any] = {}
    if mode == "ingress":
        lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", "192.0.2.2", "dev", "eth0")
        kw = dict(via="eth0", src=CUSTOMER, dst=SERVER4)
    report = probe(lab, "off", dport=53, proto=Proto.TCP, both=True, **kw)
    tcp, udp = report.results
    assert (tcp.spec.proto, udp.spec.proto) == (Proto.TCP, Proto.UDP)
    assert tcp.verdict.value == "drop" and tcp.decided_by is not None and tcp.decided_by.rule is not None
    assert tcp.decided_by.rule.number == 1 and tcp.kernel is None
    assert udp.verdict.value == "accept" and udp.reply.kind == "udp"
    assert not report.reached and "1 of 2 reached" in report.conclusions[0]
    doc = jsondoc.document(report)
    jsonschema.validate(doc, SCHEMA)
    assert [p["outcome"] for p in doc["packets"]] == ["blocked", "reached"]


WRAPPED_SERVER = r'''
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"wrapdemo", 0, 0, 0)  # PR_SET_NAME: the name hosts.deny knows it by
wrap = ctypes.CDLL("libwrap.so.0")  # the real TCP wrappers library, as sshd/vsftpd link it
wrap.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    if wrap.hosts_ctl(b"wrapdemo", b"unknown", peer[0].encode(), b"unknown"):
        c.sendall(b"hello\n")
    c.close()
'''


def wrapped_server(lab: Lab, tmp_path: Path, deny: str, port: int) -> Any:
    """The server in the lab's server namespace and in a mount namespace of its own, whose /etc is
    a copy with this hosts.deny (the machine's /etc is never touched)."""
    import subprocess
    import sys

    etc = tmp_path / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=False, capture_output=True)
    (etc / "hosts.allow").write_text("")
    (etc / "hosts.deny").write_text(deny)
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount --bind {etc} /etc && exec ip netns exec {lab.server} {sys.executable} -c "$0" {port}', WRAPPED_SERVER],
        stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.parametrize("deny", ["wrapdemo: 192.0.2.2\n", "wrapdemo: 198.51.100.0/24\n"])
def test_closed_after_accept_names_the_hosts_deny_line(lab: Lab, tmp_path: Path, deny: str) -> None:
    proc = wrapped_server(lab, tmp_path, deny, 2222)
    try:
        report = probe(lab, "off", dport=2222)
    finally:
        proc.kill()
        proc.wait()
    [r] = report.results
    assert r.reply.kind == "syn-ack" and r.after_accept is not None
    if "192.0.2.2" in deny:  # the client is denied: the server closes at once
        assert r.after_accept.seen == "closed" and r.after_accept.libwrap is True and r.after_accept.denied
        [f] = [f for f in report.findings if f.code == "closed-after-accept"]
        assert f"pid {proc.pid} (wrapdemo)" in f.message
        assert "/etc/hosts.deny line 1 `wrapdemo: 192.0.2.2`" in f.message
        assert f.fix is not None and "`wrapdemo: 192.0.2.2` to /etc/hosts.allow" in f.fix
        assert not report.reached and "closes the connection at once" in report.conclusions[0]
    else:  # another network is denied: the client gets its greeting
        assert r.after_accept.seen == "data"
        assert not [f for f in report.findings if f.code == "closed-after-accept"]
    jsonschema.validate(jsondoc.document(report), SCHEMA)
