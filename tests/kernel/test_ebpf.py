"""eBPF probes on the real kernel: the programs are really compiled (bcc) and loaded, in labs of
namespaces each test builds and deletes. What the kernel itself says about the probe packets:
drop reasons, the stack's own RST, rp_filter, a full accept queue, a netdev-ingress drop; the
in-kernel filter lets nothing of other traffic through; --ebpf auto engages by itself only when
the first pass leaves a fate unexplained; the nf_hook_slow path is reported when the kernel has
neither kprobes nor fentry (as here), and traced when it has (the VM tier).
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import structlog

from tracer.ruleset import compare
from tracer import system
from tracer.pipeline.driver import Run
from tracer.collect import ebpf_decode as decode
from tracer.system import ebpf_loader as loader
from tracer.cli.lab import BACKEND4, CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import EventKind, PacketSpec, ProbeRequest, Proto
from tracer.report.outcome import ProbeReport

log = structlog.get_logger("test")
CUSTOMER = ipaddress.ip_address("203.0.113.5")


@pytest.fixture(autouse=True)
def ebpf_prerequisites() -> None:
    """bcc, BTF and headers are installed by scripts/setup: missing ones fail in CI."""
    missing = []
    try:
        import bcc  # noqa: F401
    except ImportError:
        missing.append("bcc (python3-bpfcc)")
    if not os.path.exists(loader.BTF_PATH):
        missing.append("BTF")
    from tracer.system import ebpf_headers as headers

    if headers.find().kind == "none":
        missing.append("kernel headers (linux-headers-amd64)")
    if missing:
        msg = "eBPF prerequisites missing: " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def probe(lab: Lab, **kw: Any) -> ProbeReport:
    kw.setdefault("netns", lab.server)
    kw.setdefault("ebpf", "on")
    if "via" not in kw:
        kw.setdefault("from_netns", lab.client)
        kw.setdefault("dst", SERVER4)
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    report = Run(ProbeRequest(**kw), log).execute()
    after = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    assert compare.leftover(before, after) == []
    assert report.cleanup_ok and report.ruleset_unchanged is True
    return report


def kernel_events(report: ProbeReport, kind: EventKind) -> list[Any]:
    [r] = report.results
    return [s.event for s in r.steps if s.event.source == "ebpf" and s.event.kind is kind]


def finding(report: ProbeReport, code: str) -> Any:
    found = [f for f in report.findings if f.code == code]
    assert found, f"no {code} finding in {[f.code for f in report.findings]}"
    return found[0]


def test_reject_is_a_netfilter_drop_matched_to_the_probe(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    report = probe(lab, dport=8080)
    assert report.ebpf == "loaded"
    [drop] = kernel_events(report, EventKind.DROP)
    assert (drop.reason, drop.hook, drop.iif) == ("NETFILTER_DROP", "input", "eth0")
    [r] = report.results
    assert r.verdict.value == "reject" and r.decided_by is not None and r.decided_by.rule is not None
    # after the deciding rule in the timeline; in JSON with its source and the kernel's spelling
    # (nf_hook_slow's verdicts, where kprobes exist, have their own test below)
    kinds = [(s.event.source, s.event.kind.value) for s in r.steps if s.event.kind is not EventKind.HOOK]
    # in time order: the ICMP error sent while the rule runs, the rule (reported after its
    # expressions), then the drop
    assert kinds == [("ebpf", "send"), ("nftrace", "rule"), ("ebpf", "drop")]
    events = report.to_json()["packets"][0]["events"]
    assert {"source": "ebpf", "reason": "NETFILTER_DROP", "kind": "drop"}.items() <= events[-1].items()
    # the REJECT's ICMP error, tied to the code that sent it
    sent = kernel_events(report, EventKind.SEND)
    assert sent and "type 3 code 10" in sent[0].text and sent[0].location


def test_no_listener_is_confirmed_by_the_kernel(lab: Lab) -> None:
    report = probe(lab, dport=9)
    reasons = [e.reason for e in kernel_events(report, EventKind.DROP)]
    resets = kernel_events(report, EventKind.SEND)
    assert "NO_SOCKET" in reasons or any("RST" in e.text for e in resets)
    f = finding(report, "no-listener")
    assert "The kernel confirms it (eBPF)" in f.message
    assert report.results[0].reply.kind == "rst"


def test_rp_filter_drop_is_named_with_the_sysctl(router_lab: Lab) -> None:
    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):  # per-namespace sysctls of the lab's server
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    report = probe(lab, dport=22, via="eth0", src=CUSTOMER, dst=SERVER4)
    [drop] = kernel_events(report, EventKind.DROP)
    assert drop.reason == "IP_RPFILTER"
    f = finding(report, "rp-filter")
    assert "IP_RPFILTER" in f.message
    assert "net.ipv4.conf.eth0.rp_filter=2" in " ".join(f.commands)
    assert not [x for x in report.findings if x.code == "stack-drop"]
    assert not report.reached


def test_full_accept_queue_is_named(lab: Lab) -> None:
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
        report = probe(lab, dport=8080)
    finally:
        for c in clients:
            c.close()
        srv.close()
    f = finding(report, "accept-queue-full")
    assert "tcp_" in f.message and "accept queue" in f.message
    assert not report.reached
    assert "listen queue overflow" in " ".join(report.conclusions)


def test_netdev_ingress_drop_names_the_hook(lab: Lab) -> None:
    lab.nft(lab.server, "table netdev edge {\n chain in {\n  type filter hook ingress device eth0 priority 0;\n"
                        "  ip saddr 192.0.2.2 tcp dport 22 drop\n }\n}\n")
    report = probe(lab, dport=22)
    [drop] = kernel_events(report, EventKind.DROP)
    assert (drop.reason, drop.hook) == ("NETFILTER_DROP", "ingress")
    # fwtrace also traces the ingress hook of devices with ingress chains (issue 11): the rule
    # that dropped it is known, so no "untraced netfilter drop" is left to explain.
    r = report.results[0]
    d = r.decided_by
    assert r.verdict.value == "drop" and d is not None and d.rule is not None
    assert (d.family, d.table, d.chain, d.rule.number) == ("netdev", "edge", "in", 1)
    assert "netfilter-drop-untraced" not in {f.code for f in report.findings}
    assert "source-blocked" in {f.code for f in report.findings}


def _noise(lab: Lab, src: str, sport: int, stop: threading.Event) -> None:
    """SYNs to the probed port from the same source port, but another source address."""
    from tracer.system.raw import Injector, build

    with system.netns(lab.client):
        inj = Injector()
    try:
        i = 0
        while not stop.is_set():
            spec = PacketSpec(Proto.TCP, ipaddress.ip_address(src), SERVER4, sport, 8080, "S", 1000 + i % 50000)
            inj.send(spec, build(spec))
            i += 1
            time.sleep(0.002)
    finally:
        inj.close()


def test_no_events_from_unrelated_traffic(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)  # the noise is rejected too: drops everywhere
    lab.ip(lab.client, "addr", "add", "192.0.2.3/24", "dev", "eth0")
    stop = threading.Event()
    noise = threading.Thread(target=_noise, args=(lab, "192.0.2.3", 40000, stop))
    noise.start()
    try:
        time.sleep(0.2)
        report = probe(lab, dport=8080, sport=40000, count=2)
    finally:
        stop.set()
        noise.join()
    assert report.evidence is not None
    raw = report.evidence.ebpf
    assert raw, "the programs saw nothing"
    records = [decode.decode(r) for r in raw]
    for rec in records:  # every record read from the kernel, before any filtering in Python
        src = ipaddress.ip_address(rec.packet[12:16])
        dst = ipaddress.ip_address(rec.packet[16:20])
        assert CLIENT4 in (src, dst), f"unrelated packet {src} > {dst} reached user space"
    idents = {r.spec.ident for r in report.results}
    probe_ids = {int.from_bytes(rec.packet[4:6], "big") for rec in records if rec.role == decode.PROBE}
    assert probe_ids <= idents
    assert len([e for r in report.results for s in r.steps if (e := s.event).kind is EventKind.DROP]) == 2


def test_auto_engages_on_a_drop_outside_netfilter(router_lab: Lab) -> None:
    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    report = probe(lab, dport=22, via="eth0", src=CUSTOMER, dst=SERVER4, ebpf="auto")
    assert report.ebpf == "loaded"
    assert any(n.startswith("--ebpf auto: the first pass") for n in report.notes)
    assert [e.reason for e in kernel_events(report, EventKind.DROP)] == ["IP_RPFILTER"]


def test_auto_stays_off_for_an_ordinary_reject(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    report = probe(lab, dport=8080, ebpf="auto")
    assert report.ebpf == ""
    assert not any("--ebpf auto" in n for n in report.notes)
    assert report.results[0].verdict.value == "reject"


def test_hook_verdict_path_is_reported_not_crashed(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    report = probe(lab, dport=8080)
    hooks = kernel_events(report, EventKind.HOOK)
    if loader.kprobes_available():  # the VM tier's stock kernels
        assert any(e.hook == "input" and "drop" in e.text for e in hooks)
    else:
        assert not hooks
        assert any(n.startswith("netfilter hook verdicts not traced") for n in report.notes)
    out = subprocess.run([sys.executable, "-m", "tracer", "doctor", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["probing_works"] is True
    assert facts["kprobes"] is loader.kprobes_available()
    assert facts["ebpf_load"].startswith("compiled and loaded")
    if not facts["kprobes"]:
        assert facts["hook_verdicts"].startswith("not traced")


def test_btf_offsets_match_bpftool() -> None:
    """The pure BTF parser against bpftool's reading of the same kernel."""
    from tracer.plan import ebpf_programs as render

    if system.run(["which", "bpftool"], check=False).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("bpftool missing (scripts/setup installs it)")
        pytest.skip("bpftool missing")
    text = system.run(["bpftool", "btf", "dump", "file", loader.BTF_PATH, "format", "c"]).stdout
    offs = render.offsets(loader.kernel_btf())
    body = text.split("\nstruct net_device {\n", 1)[1].split("\n};\n", 1)[0]
    # bpftool's C dump has no offsets; the raw dump does: check sk_buff's head and the order
    raw = system.run(["bpftool", "btf", "dump", "file", loader.BTF_PATH, "format", "raw"]).stdout
    block = raw.split("STRUCT 'sk_buff' size=", 1)[1].split("\n[", 1)[0]
    head_bits = int(block.split("'head' type_id=", 1)[1].split("bits_offset=", 1)[1].split()[0])
    assert offs.get("SKB_HEAD_OFF") == head_bits // 8
    assert "ifindex;" in body and offs.get("DEV_IFINDEX_OFF") is not None


def test_ipv6_no_listener_and_udp_port_unreachable(lab: Lab) -> None:
    from tracer.cli.lab import SERVER6

    report = probe(lab, dport=9, dst=SERVER6)
    [drop] = kernel_events(report, EventKind.DROP)
    assert (drop.family, drop.reason) == ("ip6", "NO_SOCKET")
    assert "NO_SOCKET" in finding(report, "no-listener").message
    udp = probe(lab, dport=9, proto=Proto.UDP)
    sent = kernel_events(udp, EventKind.SEND)
    assert sent and "ICMP type 3 code 3" in sent[0].text
    assert udp.results[0].reply.kind.endswith("port-unreachable")


def test_unavailable_ebpf_degrades_the_run(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_btf() -> Any:
        raise loader.EbpfUnavailable("no usable kernel BTF (test)")

    monkeypatch.setattr(loader, "kernel_offsets", no_btf)
    lab.iptables_restore(lab.server, SEED_RULESET)
    report = probe(lab, dport=8080)
    assert report.ebpf.startswith("unavailable: no usable kernel BTF")
    assert any(n.startswith("eBPF probes not loaded") for n in report.notes)
    assert report.results[0].verdict.value == "reject"  # the netfilter sources still decide


def test_hook_program_passes_the_verifier_here() -> None:
    """probes/nfhook.c (kprobe variant) compiles and is accepted by this kernel's verifier; only
    the attach needs kprobes. Keeps the VM tier's path from rotting where it cannot run."""
    from bcc import BPF

    from tracer.system import ebpf_headers as headers
    from tracer.plan import ebpf_programs as render

    found = headers.find()
    if found.kind != "matching":
        os.environ["BCC_KERNEL_SOURCE"] = headers.prepare(found)
    src = render.render_hooks(render.template("nfhook.c"), loader.kernel_offsets(), "kprobe")
    if loader.kprobes_available():
        BPF(text=src.encode()).cleanup()
        return
    with pytest.raises(Exception, match="Failed to attach BPF program b'kprobe__nf_hook_slow'"):
        BPF(text=src.encode())


def test_two_runs_with_ebpf_at_once_see_only_their_own(lab: Lab, tmp_path: Any) -> None:
    """Each run loads its own maps and programs: two at once (one rejected, one without a
    listener) each get their own drop reason, and no record of the other's probe reaches it."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j REJECT\nCOMMIT\n")
    argv = [sys.executable, "-m", "tracer", "probe", "--netns", lab.server, "--from-netns", lab.client, "--json",
            "--ebpf", "on"]
    procs = [subprocess.Popen(argv + ["--dport", port, "--evidence", str(tmp_path / port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for port in ("8080", "9")]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode in (0, 1), err
        docs.append(json.loads(out))
    reasons = [[e["reason"] for e in d["packets"][0]["events"] if e["source"] == "ebpf" and e["kind"] == "drop"]
               for d in docs]
    assert reasons == [["NETFILTER_DROP"], ["NO_SOCKET"]]
    for port, d in zip(("8080", "9"), docs, strict=True):
        raw = (tmp_path / port / "ebpf-records.bin").read_bytes()
        size = decode.HEAD_SIZE + 192
        records = [decode.decode(raw[i:i + size]) for i in range(0, len(raw), size)]
        assert records
        sport = d["packets"][0]["probe"]["sport"]
        for rec in records:  # the probe (source port) or its reply (destination port): this run's only
            assert rec.packet[0] >> 4 == 4, rec
            at = (rec.packet[0] & 0xF) * 4
            if rec.packet[9] == 1:  # REJECT's ICMP error: the ports are in the header it quotes
                assert rec.packet[at] == 3, rec  # destination unreachable
                at += 8 + (rec.packet[at + 8] & 0xF) * 4
            ports = {int.from_bytes(rec.packet[at:at + 2], "big"), int.from_bytes(rec.packet[at + 2:at + 4], "big")}
            assert sport in ports and int(port) in ports


def test_auto_says_why_it_cannot_engage(router_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = router_lab
    monkeypatch.setattr(loader, "unavailable", lambda: "bcc is not importable (test)")
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    report = probe(lab, dport=22, via="eth0", src=CUSTOMER, dst=SERVER4, ebpf="auto")
    assert report.ebpf == ""  # one pass only
    assert any("eBPF cannot run here: bcc is not importable (test)" in n for n in report.notes)
    assert "rp-filter" in {f.code for f in report.findings}  # the first pass's own reasoning stays
