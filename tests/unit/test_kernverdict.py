"""Kernel verdicts' pure parts: the counter files as captured by scripts/capture-counter-data, the
decision from eBPF reasons, counter deltas, route lookups and sysctls, and how the report says it
(JSON against the schema, the summary line, the timeline, the findings)."""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import jsonschema

from tracer import diagnose
from tracer.diagnose import kernverdict as kv
from tracer.diagnose.context import Context
from tracer.model import (
    EventKind,
    Listener,
    PacketResult,
    PacketSpec,
    ProbeRequest,
    Proto,
    Reply,
    Ruleset,
    Step,
    TraceEvent,
    Verdict,
)
from tracer.report.outcome import build_report
from tracer.render import jsondoc, timeline

DATA = Path(__file__).parent.parent / "data" / "counters"
SCHEMA = json.loads((Path(__file__).parents[2] / "schema" / "report.schema.json").read_text())
SRC, DST = ipaddress.ip_address("203.0.113.5"), ipaddress.ip_address("192.0.2.1")
SPEC = PacketSpec(Proto.TCP, SRC, DST, 40000, 22, "S", 7)


def files(tag: str) -> dict[str, str]:
    return {name: (DATA / f"{tag}-{name.replace('/', '-')}.txt").read_text() for name in kv.COUNTER_FILES}


def result(verdict: Verdict = Verdict.UNKNOWN, reply: str = "none", steps: tuple[Step, ...] = (),
           path: tuple[str, ...] = ("prerouting",), spec: PacketSpec = SPEC) -> PacketResult:
    return PacketResult(spec, verdict, None, Reply(reply), steps, path)


def ebpf_drop(reason: str, location: str, iif: str = "eth0") -> Step:
    return Step(TraceEvent(trace_id=1, kind=EventKind.DROP, family="", table="", chain="", source="ebpf", reason=reason,
                           location=location, iif=iif))


def test_counter_files_parse_and_the_rp_filter_drop_moves_its_counter() -> None:
    before, after = kv.parse_counters(files("before")), kv.parse_counters(files("after"))
    assert before["IpInAddrErrors"] == 0 and "TcpExtListenOverflows" in before and "Ip6InNoRoutes" in before
    assert "ConntrackDrop" in before and "ConntrackInsertFailed" in before
    moved = kv.deltas(before, after)
    assert moved.get("TcpExtIPReversePathFilter", 0) >= 1
    assert set(moved) <= set(kv.WATCHED)


def test_conntrack_stat_sums_cpus_in_hex() -> None:
    text = "entries  clashres drop early_drop\n00000005  00000000 0000000a 00000001\n00000005  00000000 00000001 00000000\n"
    assert kv.parse_counters({"stat/nf_conntrack": text}) == {
        "ConntrackEntries": 5, "ConntrackClashres": 0, "ConntrackDrop": 11, "ConntrackEarlyDrop": 1}


RP = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.eth0.rp_filter": "1"}


def test_ebpf_reason_decides_and_the_counter_corroborates() -> None:
    facts = kv.Facts({"TcpExtIPReversePathFilter": 1}, True, RP, iif="eth0", ebpf=True)
    k, checked = kv.decide(result(steps=(ebpf_drop("IP_RPFILTER", "ip_rcv_finish_core"),)), facts, DST, 22)
    assert k is not None and (k.cause, k.setting, k.function) == (
        kv.RP_FILTER, "net.ipv4.conf.eth0.rp_filter=1", "ip_rcv_finish_core")
    assert k.evidence == ("eBPF: drop reason IP_RPFILTER at ip_rcv_finish_core", "counter TcpExtIPReversePathFilter +1",
                          "sysctl net.ipv4.conf.eth0.rp_filter=1")
    assert checked[0] == "eBPF drop reasons: IP_RPFILTER at ip_rcv_finish_core"


def test_without_ebpf_the_counters_decide() -> None:
    fwd = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.eth0.forwarding": "0"}
    k, _ = kv.decide(result(), kv.Facts({"IpInAddrErrors": 1}, True, fwd, iif="eth0"), DST, 22)
    assert k is not None and (k.cause, k.setting, k.function) == (kv.FORWARDING, "net.ipv4.ip_forward=0", "ip_error")
    # forwarding off for the arrival interface only: that interface's key is the setting
    one = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth0.forwarding": "0"}
    k, _ = kv.decide(result(), kv.Facts({"IpInAddrErrors": 1}, True, one, iif="eth0"), DST, 22)
    assert k is not None and k.setting == "net.ipv4.conf.eth0.forwarding=0"
    # InAddrErrors with forwarding on is not a forwarding drop
    on = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.eth0.forwarding": "1"}
    assert kv.decide(result(), kv.Facts({"IpInAddrErrors": 1}, True, on, iif="eth0"), DST, 22)[0] is None
    back = kv.RouteLookup(f"ip route get {SRC} from {DST}", "ENETUNREACH")
    k, _ = kv.decide(result(Verdict.ACCEPT, path=("prerouting", "input")),
                     kv.Facts({"IpOutNoRoutes": 1, "TcpExtListenDrops": 1}, True, {}, route_back=back), DST, 22)
    assert k is not None and (k.cause, k.setting) == (kv.NO_ROUTE_BACK, f"no route to {SRC}")
    assert f"route lookup `ip route get {SRC} from {DST}`: ENETUNREACH" in k.evidence
    sock = Listener(Proto.TCP, ipaddress.ip_address("0.0.0.0"), 22)
    k, _ = kv.decide(result(Verdict.ACCEPT, path=("prerouting", "input")),
                     kv.Facts({"TcpExtListenOverflows": 1}, True, {"net.core.somaxconn": "4096"}, listeners=(sock,)),
                     DST, 22)
    assert k is not None and k.setting == "listen backlog of 0.0.0.0:22 (capped by net.core.somaxconn=4096)"
    k, _ = kv.decide(result(Verdict.ACCEPT, path=("prerouting", "input")),
                     kv.Facts({"ConntrackDrop": 3}, True, {"net.netfilter.nf_conntrack_max": "64"}), DST, 22)
    assert k is not None and (k.cause, k.setting) == (kv.CONNTRACK_FULL, "net.netfilter.nf_conntrack_max=64")


def test_route_lookups_decide_when_no_counter_moved() -> None:
    rin = kv.RouteLookup(f"ip route get {DST} from {SRC} iif eth0", "EXDEV")
    k, _ = kv.decide(result(), kv.Facts({}, True, RP, route_in=rin, iif="eth0"), DST, 22)
    assert k is not None and k.cause == kv.RP_FILTER and k.evidence[0].startswith("route lookup")
    martian = kv.RouteLookup(f"ip route get {DST} from 127.0.0.1 iif eth0", "EINVAL")
    k, _ = kv.decide(result(), kv.Facts({}, True, {"net.ipv4.conf.all.rp_filter": "0"}, route_in=martian, iif="eth0"),
                     DST, 22)
    assert k is not None and k.cause == kv.MARTIAN


def test_nothing_explains_it_and_what_was_checked_is_said() -> None:
    r = result()
    k, checked = kv.decide(r, kv.Facts({}, True, RP, route_in=kv.RouteLookup("ip route get x", None, "eth0", "local"),
                                       iif="eth0"), DST, 22)
    assert k is None
    assert checked[0] == "eBPF drop reasons: not watched (--ebpf off)"
    assert checked[1].endswith(": unchanged") and "TcpExtListenOverflows" in checked[1]
    assert "route lookup `ip route get x`: local dev eth0" in checked
    r = PacketResult(SPEC, Verdict.UNKNOWN, None, Reply("none"), (), ("prerouting",), kernel_checked=checked)
    fs = diagnose.diagnose(r, Context(Ruleset(), (), local=False))
    [stack] = [f for f in fs if f.code == "stack-drop"]
    assert "Checked, none of which explains it: eBPF drop reasons: not watched" in stack.message
    assert "no verdict traced" in timeline.summary(report(r))  # nothing found: it may say so


def test_a_rule_decided_drop_is_never_a_kernel_verdict() -> None:
    facts = kv.Facts({"TcpExtIPReversePathFilter": 5}, True, RP, iif="eth0")
    assert kv.decide(result(Verdict.DROP), facts, DST, 22)[0] is None
    assert kv.decide(result(Verdict.ACCEPT, reply="syn-ack"), facts, DST, 22)[0] is None
    # no listener: the RST answers, whatever else the counters say
    assert kv.decide(result(Verdict.ACCEPT, reply="rst"), facts, DST, 22)[0] is None


def report(r: PacketResult) -> Any:
    ctx = Context(Ruleset(), (), local=False, via="eth0", src=SRC)
    return build_report(ProbeRequest(dport=22, src=SRC, dst=DST, via="eth0"), "0badc0de", [r], ctx)


def test_the_report_says_the_kernel_dropped_it() -> None:
    facts = kv.Facts({"TcpExtIPReversePathFilter": 1}, True, RP, iif="eth0")
    r = result()
    k, checked = kv.decide(r, facts, DST, 22)
    r = PacketResult(r.spec, r.verdict, None, r.reply, r.steps, r.path, kernel=k, kernel_checked=checked)
    rep = report(r)
    doc = jsondoc.document(rep)
    jsonschema.validate(doc, SCHEMA)
    [p] = doc["packets"]
    assert doc["schema_version"] == 3 and doc["outcome"] == "blocked"
    assert p["verdict"] == "drop" and p["firewall_verdict"] == "unknown"
    assert p["decided_by"] == {"kind": "kernel", "reason": "IP_RPFILTER", "cause": "reverse-path filter",
                               "function": "ip_rcv_finish_core", "setting": "net.ipv4.conf.eth0.rp_filter=1",
                               "evidence": ["counter TcpExtIPReversePathFilter +1", "sysctl net.ipv4.conf.eth0.rp_filter=1"]}
    assert timeline.summary(rep) == (f"BLOCKED {SRC} -> {DST} tcp/22: dropped by the kernel: reverse-path filter, "
                                     "net.ipv4.conf.eth0.rp_filter=1")
    rows = timeline.packet(1, r)
    [verdict] = [row for row in rows if row.label == "verdict"]
    assert verdict.body.startswith("DROP by the kernel: reverse-path filter, net.ipv4.conf.eth0.rp_filter=1 (IP_RPFILTER")
    assert verdict.style == "bad"
    from tracer.render import svg

    assert "DROP by the kernel: reverse-path filter" in svg.render(r)
    codes = [f.code for f in rep.findings]
    assert "rp-filter" in codes and "stack-drop" not in codes
    [rp] = [f for f in rep.findings if f.code == "rp-filter"]
    assert "Evidence: counter TcpExtIPReversePathFilter +1" in rp.message
    assert rep.conclusions[0].startswith("tcp port 22 is dropped by the kernel, not by a firewall rule: reverse-path filter")
    assert not rep.reached


def test_every_cause_has_a_finding_naming_its_setting() -> None:
    cases = [
        ({"IpInAddrErrors": 1}, {"net.ipv4.ip_forward": "0"}, "forwarding-off", "sysctl -w net.ipv4.conf.eth0.forwarding=1"),
        ({"IpExtInNoRoutes": 1}, {}, "no-route", f"ip route add {DST}"),
        ({"IpOutNoRoutes": 1}, {}, "no-route-back", f"ip route add {SRC}/32"),
        ({"ConntrackDrop": 1}, {"net.netfilter.nf_conntrack_max": "64"}, "conntrack-full", "nf_conntrack_max"),
    ]
    for moved, sysctls, code, fix in cases:
        r = result(Verdict.ACCEPT, path=("prerouting", "input")) if code in ("no-route-back", "conntrack-full") \
            else result()
        k, _ = kv.decide(r, kv.Facts(moved, True, sysctls, iif="eth0"), DST, 22)
        assert k is not None, code
        r = PacketResult(r.spec, r.verdict, None, r.reply, r.steps, r.path, kernel=k)
        rep = report(r)
        found = [f for f in rep.findings if f.code == code]
        assert found, (code, [f.code for f in rep.findings])
        assert fix in (found[0].fix or "") + " ".join(found[0].commands), found[0]
        assert "Evidence: counter" in found[0].message
        assert "dropped by the kernel" in timeline.summary(rep) and not rep.reached


def test_listener_on_another_address_names_the_process() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), DST, 40000, 8080, "S", 7)
    r = PacketResult(spec, Verdict.ACCEPT, None, Reply("rst"), (), ("prerouting", "input"))
    socks = (Listener(Proto.TCP, ipaddress.ip_address("127.0.0.1"), 8080, process="pid 812 (myapp)"),
             Listener(Proto.TCP, ipaddress.ip_address("2001:db8::1"), 8080))
    fs = diagnose.diagnose(r, Context(Ruleset(), socks, local=False))
    [f] = [f for f in fs if f.code == "listener-address"]
    assert "127.0.0.1:8080 (loopback only), held by pid 812 (myapp)" in f.message
    assert "[2001:db8::1]:8080 (IPv6 only)" in f.message
    assert f.fix is not None and f.fix.startswith("make pid 812 (myapp) listen on 192.0.2.1")
    [nl] = [f for f in fs if f.code == "no-listener"]
    assert nl.fix is None  # listener-address says how
    # a socket on all addresses serves it: nothing said
    anyone = (Listener(Proto.TCP, ipaddress.ip_address("0.0.0.0"), 8080),)
    assert not [f for f in diagnose.diagnose(r, Context(Ruleset(), anyone, local=False)) if f.code == "listener-address"]


def test_reverse_path_rules_are_recognised() -> None:
    assert kv.rpfilter_rule("-A PREROUTING -m rpfilter --invert -j DROP")
    assert kv.rpfilter_rule("fib saddr . iif oif missing counter packets 0 bytes 0 drop")
    assert kv.rpfilter_rule("meta nfproto ipv4 fib saddr . mark . iif oif missing drop")  # firewalld's
    assert kv.rpfilter_rule("fib saddr oif 0 drop") and kv.rpfilter_loose("fib saddr oif 0 drop")
    assert not kv.rpfilter_loose("-A PREROUTING -m rpfilter --invert -j DROP")
    assert not kv.rpfilter_rule("-A PREROUTING -m rpfilter -j ACCEPT")  # accepts what passes: no drop of it
    assert not kv.rpfilter_rule("ip saddr 203.0.113.5 drop")
    assert not kv.rpfilter_rule("fib daddr type local accept")


def test_a_reply_leaving_by_another_interface_did_not_reach() -> None:
    r = PacketResult(SPEC, Verdict.ACCEPT, None, Reply("syn-ack"), (), ("prerouting", "input"))
    ctx = Context(Ruleset(), (), local=False, mode="ingress", via="eth0", src=SRC, route_dev="eth1")
    fs = diagnose.diagnose(r, ctx)
    assert [f.code for f in fs] == ["reply-elsewhere"] and not diagnose.reached(r, fs)
    same = Context(Ruleset(), (), local=False, mode="ingress", via="eth0", src=SRC, route_dev="eth0")
    assert diagnose.reached(r, diagnose.diagnose(r, same))
