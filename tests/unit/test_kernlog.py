"""The kernel-log and conntrack parsers (tracer/collect/kernlog.py) on real captures, and the pure plan
(tracer/plan/kernplan.py). Captures: scripts/capture-kmsg-data -> tests/data/kmsg-*.txt, conntrack-L-*.txt.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tracer import correlate
from tracer.ruleset import snapshot
from tracer.model import Backend, EventKind, PacketSpec, Proto, Ruleset
from tracer.collect import conntrack, kernlog, nflog
from tracer.plan import kernplan

DATA = Path(__file__).parent.parent / "data"
C4, S4 = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1")
C6, S6 = ipaddress.ip_address("2001:db8:1::2"), ipaddress.ip_address("2001:db8:1::1")


def records(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines()


def lines(name: str) -> list[kernlog.LogLine]:
    out = []
    for raw in records(name):
        rec = kernlog.parse_record(raw)
        assert rec is not None
        line = kernlog.parse_line(rec.text)
        assert line is not None, rec.text
        out.append(line)
    return out


# The capture's own ruleset (scripts/capture-kmsg-data, RULES4), as the snapshot would hold it.
LEGACY4 = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 192.0.2.2/32 -m u32 --u32 "0x2&0xffff=0x1000:0x10ff" -j TRACE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:blocklist - [0:0]
-A INPUT -p tcp -m tcp --dport 9999 -j LOG --log-prefix "unrelated "
-A INPUT -s 192.0.2.2/32 -m limit --limit 50/sec -j LOG --log-prefix "fwtrace:1a2b3c4d:1 "
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m multiport --dports 22,80,8080 -j blocklist
-A INPUT -p udp -m udp --dport 5353 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP
-A OUTPUT -p icmp -j LOG --log-prefix "icmp-out "
-A blocklist -s 192.0.2.2/32 -j DROP
COMMIT
"""


def test_record_header() -> None:
    rec = kernlog.parse_record(records("kmsg-ipv4.txt")[0])
    assert rec is not None and rec.seq > 0 and rec.usec > 0
    assert rec.text.startswith("TRACE: raw:PREROUTING:policy:2 IN=eth0 OUT= MAC=")
    assert kernlog.parse_record(b"no separator") is None
    assert kernlog.parse_record(b"6,x,1,-;text") is None


def test_ipv4_trace_tcp_line() -> None:
    # TRACE: raw:PREROUTING:policy:2 IN=eth0 OUT= MAC=... SRC=192.0.2.2 DST=192.0.2.1 LEN=40 ... ID=4097
    #   PROTO=TCP SPT=40001 DPT=8080 SEQ=0 ACK=0 WINDOW=8192 RES=0x00 SYN URGP=0
    line = lines("kmsg-ipv4.txt")[0]
    assert kernlog.trace_of(line) == kernlog.TraceLine("raw", "PREROUTING", "policy", 2)
    assert (line.iif, line.oif, line.src, line.dst, line.proto) == ("eth0", None, C4, S4, "TCP")
    assert (line.sport, line.dport, line.ident) == (40001, 8080, 0x1001)
    assert "SYN" in line.flags and "ACK" not in line.flags and line.family == "ip"


def test_ipv4_trace_path_into_user_chain() -> None:
    got = [(t.table, t.chain, t.type, t.number) for t in
           (kernlog.trace_of(ln) for ln in lines("kmsg-ipv4.txt") if ln.ident == 0x1001) if t]
    assert got == [("raw", "PREROUTING", "policy", 2), ("filter", "INPUT", "rule", 2),
                   ("filter", "INPUT", "rule", 4), ("filter", "blocklist", "rule", 1)]


def test_icmp_echo_keeps_ip_id_apart_from_echo_id() -> None:
    # ... ID=4099 PROTO=ICMP TYPE=8 CODE=0 ID=4242 SEQ=7
    [line] = [ln for ln in lines("kmsg-ipv4.txt") if ln.proto == "ICMP" and ln.prefix.startswith("fwtrace:")]
    assert (line.ident, line.icmp_type, line.icmp_code, line.icmp_id) == (0x1003, 8, 0, 4242)
    assert line.sport is None and line.dport is None


def test_icmp_error_quoting_the_probe_is_the_error_not_the_quote() -> None:
    # icmp-out IN= OUT=eth0 SRC=192.0.2.1 DST=192.0.2.2 ... PROTO=ICMP TYPE=3 CODE=3 [SRC=192.0.2.2 ... SPT=40002 DPT=5353 LEN=8 ]
    [line] = [ln for ln in lines("kmsg-ipv4.txt") if ln.prefix == "icmp-out "]
    assert (line.iif, line.oif, line.src, line.dst) == (None, "eth0", S4, C4)
    assert (line.icmp_type, line.icmp_code) == (3, 3) and line.ident != 0x1002


def test_conntrack_invalid_line() -> None:
    # nf_ct_proto_6: invalid tcp flag combination IN=eth0 ... ID=4101 PROTO=TCP SPT=40005 DPT=8080 ... URG PSH FIN URGP=0
    [line] = [ln for ln in lines("kmsg-ipv4.txt") if ln.prefix.startswith("nf_ct_proto_")]
    assert kernlog.ct_invalid_of(line) == (6, "invalid tcp flag combination")
    assert line.ident == 0x1005 and {"URG", "PSH", "FIN"} <= line.flags
    # The stray ACK (id 0x1004) was INVALID too, but conntrack logs nothing for it (tcp_loose=0).
    assert not [ln for ln in lines("kmsg-ipv4.txt") if ln.ident == 0x1004 and kernlog.ct_invalid_of(ln)]


def test_ipv6_lines_use_the_flow_label() -> None:
    ls = lines("kmsg-ipv6.txt")
    trace = [ln for ln in ls if kernlog.trace_of(ln) and ln.ident == 0x1001]
    assert trace and all((ln.src, ln.dst, ln.family, ln.sport, ln.dport) == (C6, S6, "ip6", 40011, 8080) for ln in trace)
    [echo] = [ln for ln in ls if ln.prefix.startswith("fwtrace:") and ln.proto == "ICMPv6" and ln.icmp_type == 128]
    assert (echo.ident, echo.icmp_id) == (0x1003, 4242)
    [ct] = [ln for ln in ls if kernlog.ct_invalid_of(ln)]
    assert kernlog.ct_invalid_of(ct) == (6, "invalid tcp flag combination") and ct.ident == 0x1005
    [err] = [ln for ln in ls if ln.prefix == "icmp-out " and ln.icmp_type == 1]
    assert err.icmp_code == 4 and err.ident != 0x1002  # the quoted FLOWLBL=4098 is inside brackets


def test_own_log_prefix_only_for_this_run() -> None:
    line = next(ln for ln in lines("kmsg-ipv4.txt") if ln.prefix.startswith("fwtrace:"))
    assert kernlog.own_log_of(line, "1a2b3c4d") == 1
    assert kernlog.own_log_of(line, "deadbeef") is None
    assert kernlog.log_prefix("1a2b3c4d", 12) == "fwtrace:1a2b3c4d:12 " and len(kernlog.log_prefix("1a2b3c4d", 999)) <= 29


def _ctx(run_id: str = "1a2b3c4d") -> kernlog.KernContext:
    rs = snapshot.with_legacy(Ruleset(), {"ip": LEGACY4})
    return kernlog.KernContext(run_id, rs, {("ip", "raw", "PREROUTING"): 1},
                               {1: kernlog.LogPoint("ip", "filter", "INPUT", True)})


def test_events_join_the_legacy_ruleset() -> None:
    ctx = _ctx()
    evs = [e for e in (kernlog.event_of_record(r, ctx) for r in records("kmsg-ipv4.txt")) if e is not None]
    probe = [e for e in evs if e.trace_id == evs[0].trace_id]
    got = [(e.kind.value, e.table, e.chain, e.number, e.verdict) for e in probe]
    # raw PREROUTING: policy:2 minus the one (pretend) fwtrace TRACE rule = policy after 1 rule.
    assert got == [("policy", "raw", "PREROUTING", 1, "accept"), ("rule", "filter", "INPUT", 2, "continue"),
                   ("log", "filter", "INPUT", None, None), ("rule", "filter", "INPUT", 4, "jump blocklist"),
                   ("rule", "filter", "blocklist", 1, "drop")]
    assert all(e.legacy and e.source == "kmsg" for e in probe)
    # Lines of other runs' prefixes and unrelated LOG rules give no events.
    assert not [e for e in evs if "unrelated" in e.text or "icmp-out" in e.text]
    ct = [e for e in evs if e.kind is EventKind.CONNTRACK]
    assert [(e.text, e.verdict) for e in ct] == [("invalid tcp flag combination", "invalid")]


def test_synthesized_headers_let_correlation_pick_the_probe() -> None:
    ctx = _ctx()
    evs = [e for e in (kernlog.event_of_record(r, ctx) for r in records("kmsg-ipv4.txt")) if e is not None]
    spec = PacketSpec(Proto.TCP, C4, S4, 40001, 8080, "S", 0x1001)
    probe, reply = correlate.split_events(evs, spec)
    assert {e.chain for e in probe} == {"PREROUTING", "INPUT", "blocklist"} and not reply
    steps, path = correlate.timeline(probe, ctx.ruleset)
    assert path == ["prerouting", "input"]
    verdict, ref = correlate.decide(steps, ctx.ruleset, True)
    assert verdict.value == "drop" and ref is not None and ref.rule is not None
    assert (ref.chain, ref.rule.number, ref.backend) == ("blocklist", 1, Backend.IPTABLES_LEGACY)
    echo = PacketSpec(Proto.ICMP, C4, S4, 4242, 7, "S", 0x1003)
    assert correlate.split_events(evs, echo)[0]


def test_parse_conntrack_listing() -> None:
    # tcp 6 9 CLOSE src=192.0.2.2 dst=192.0.2.1 sport=41000 dport=8080 src=198.51.100.2 dst=192.0.2.2 sport=80 dport=41000 ...
    v4 = {e.proto: e for e in conntrack.parse_conntrack((DATA / "conntrack-L-ipv4.txt").read_text())}
    assert set(v4) == {"tcp", "udp", "icmp"}
    tcp = v4["tcp"]
    assert (tcp.state, tcp.orig.sport, tcp.orig.dport) == ("CLOSE", 41000, 8080)
    assert tcp.nat == "DNAT to 198.51.100.2:80"
    assert v4["udp"].state is None and v4["udp"].flags == {"UNREPLIED"} and v4["udp"].nat is None
    assert v4["icmp"].orig.sport == 777
    v6 = conntrack.parse_conntrack((DATA / "conntrack-L-ipv6.txt").read_text())
    assert {(e.proto, e.orig.src, e.orig.sport) for e in v6} == {("udp", C6, 41003), ("tcp", C6, 41002)}
    assert "udp 2001:db8:1::2:41003 > 2001:db8:1::1:53 [UNREPLIED]" == next(e for e in v6 if e.proto == "udp").describe()


def test_legacy_tables_skip_empty_ones() -> None:
    saved = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT DROP [0:0]\nCOMMIT\n"
    rs = snapshot.with_legacy(Ruleset(), {"ip": saved})
    assert [(t.name, t.backend) for t in rs.tables] == [("filter", Backend.IPTABLES_LEGACY)]
    chain = rs.chain("ip", "filter", "INPUT", legacy=True)
    assert chain is not None and (chain.hook, chain.priority, chain.policy) == ("input", "0", "drop")
    assert rs.chain("ip", "filter", "INPUT") is None  # nf_tables lookups do not see legacy tables
    assert rs.has_legacy and not rs.has_nft


def test_kern_plan_traces_legacy_chains_by_the_trace_bit() -> None:
    rs = snapshot.with_legacy(Ruleset(), {"ip": LEGACY4})
    spec = PacketSpec(Proto.TCP, C4, S4, 40001, 8080, "S", 0x1234)
    # fwtrace's own nft chain sets the skb's trace bit: ip_tables then logs TRACE lines for the
    # legacy chains by itself, so no TRACE rule (and no x_tables raw table) is needed.
    p = kernplan.kern_plan("1a2b3c4d", [spec], rs, log="")
    assert p.edits == () and p.offsets == {} and p.kmsg and p.families == ("ip",)
    # Without that route a TRACE rule goes into the raw table, and only where it already exists.
    assert kernplan.kern_plan("1a2b3c4d", [spec], rs, log="", trace_bit=False, legacy_raw=False).edits == ()
    p = kernplan.kern_plan("1a2b3c4d", [spec], rs, log="", trace_bit=False, legacy_raw=True)
    assert [c.apply for c in p.edits] == [
        ("iptables-legacy", "-w", "-t", "raw", "-I", chain, "1", "-s", "192.0.2.2/32", "-d", "192.0.2.1/32",
         "-p", "tcp", "--sport", "40001", "--dport", "8080", "-m", "u32", "--u32", "2&0xFFFF=4660",
         "-m", "comment", "--comment", "fwtrace:1a2b3c4d", "-j", "TRACE") for chain in ("PREROUTING", "OUTPUT")]
    assert [c.undo[4] for c in p.edits] == ["-D", "-D"] and p.edits[0].undo[7:] == p.edits[0].apply[8:]
    assert p.offsets == {("ip", "raw", "PREROUTING"): 1, ("ip", "raw", "OUTPUT"): 1}


def test_kern_plan_log_rules() -> None:
    rs = snapshot.with_legacy(Ruleset(), {"ip": LEGACY4})
    spec = PacketSpec(Proto.TCP, C4, S4, 40001, 8080, "S", 0x1234)
    logged = kernplan.kern_plan("1a2b3c4d", [spec], rs, log="kmsg")
    assert len(logged.log_points) == 6  # raw PREROUTING/OUTPUT, filter INPUT/FORWARD/OUTPUT/blocklist
    assert logged.offsets[("ip", "filter", "blocklist")] == 1 and logged.offsets[("ip", "raw", "PREROUTING")] == 1
    first = logged.edits[0].apply
    assert "--log-prefix" in first and first[first.index("--log-prefix") + 1] == "fwtrace:1a2b3c4d:1 "
    assert "limit" in first
    # look-alikes of the same source (other IPv4 ids) never reach the rule's rate limit
    assert first[first.index("--u32") + 1] == "2&0xFFFF=4660"
    many = [PacketSpec(Proto.TCP, C4, S4, 40001 + i, 8080, "S", 100 + i) for i in range(12)]
    assert "2&0xFFFF=100:111" in kernplan.log_match(many)
    assert "2&0xFFFF=100,101,102" in kernplan.log_match(many[:3])
    nfl = kernplan.kern_plan("1a2b3c4d", [spec], rs, log="nflog")
    assert nfl.nflog_group == 0x8000 | 0x3c4d and nfl.kmsg  # legacy rules: their TRACE lines need the kernel log
    assert "NFLOG" in nfl.edits[0].apply and "fwtrace:1a2b3c4d:1" in nfl.edits[0].apply
    nft_only = kernplan.kern_plan("1a2b3c4d", [spec], Ruleset(), log="nflog")
    assert not nft_only.kmsg and nft_only.edits == ()
    v6 = PacketSpec(Proto.TCP, C6, S6, 40001, 8080, "S", 0xABCDE)
    assert "0&0xFFFFF=703710" in kernplan.trace_match(v6)


def test_log_rules_only_in_chains_nf_tables_holds() -> None:
    # iptables-nft-save prints every built-in chain; nf_tables holds only INPUT here, and
    # `iptables-nft -I FORWARD` would create FORWARD (and keep it after -D).
    saved = snapshot.parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                          ":blocklist - [0:0]\n-A INPUT -j blocklist\nCOMMIT\n")
    rs = Ruleset(kernplan.iptables_nft_tables("ip", saved))
    spec = PacketSpec(Proto.TCP, C4, S4, 40001, 8080, "S", 0x1234)
    kp = kernplan.kern_plan("1a2b3c4d", [spec], rs, "nflog", nft_chains=frozenset({("ip", "filter", "INPUT"),
                                                                                    ("ip", "filter", "blocklist")}))
    assert [(p.table, p.chain) for p in kp.log_points.values()] == [("filter", "INPUT"), ("filter", "blocklist")]
    assert [c.apply[5] for c in kp.edits] == ["INPUT", "blocklist"]


def test_priority_values() -> None:
    assert [correlate.priority_value(p) for p in ("filter", "-300", "srcnat + 10", "mangle - 5", None, "x")] == [
        0, -300, 110, -155, 0, 0]


# ---------------------------------------------------------------------------------------------
# Property tests: arbitrary kernel-log text never crashes the parsers.

_keys = st.sampled_from(["IN", "OUT", "SRC", "DST", "ID", "FLOWLBL", "PROTO", "SPT", "DPT", "TYPE", "CODE", "MAC", "LEN"])
_values = st.one_of(st.text(max_size=12), st.integers(-5, 70000).map(str), st.sampled_from(
    ["TCP", "UDP", "ICMP", "ICMPv6", "192.0.2.1", "2001:0db8:0001:0000:0000:0000:0000:0001", "eth0", ""]))
_fieldish = st.lists(st.tuples(_keys, _values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.sampled_from(
    ["SYN", "ACK", "[", "]", "(", ")", "DF"]), max_size=20).map(" ".join)
_prefixes = st.sampled_from(["", "TRACE: filter:INPUT:rule:2 ", "TRACE: raw:x:y:policy:9 ", "nf_ct_proto_6: invalid ",
                             "fwtrace:1a2b3c4d:3 ", "fwtrace:1a2b3c4d:0 "]) | st.text(max_size=30)


@settings(max_examples=400, deadline=None)
@given(prefix=_prefixes, body=_fieldish)
def test_log_lines_never_crash(prefix: str, body: str) -> None:
    text = f"{prefix}IN=eth0 OUT= {body}"
    line = kernlog.parse_line(text)
    assert line is not None
    kernlog.packet_bytes(line)
    kernlog.packet_key(line)
    kernlog.to_event(line, _ctx(), text)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300))
def test_records_never_crash(raw: bytes) -> None:
    kernlog.event_of_record(raw, _ctx())


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_never_crashes(text: str) -> None:
    line = kernlog.parse_line(text)
    if line is not None:
        kernlog.to_event(line, _ctx(), text)
    conntrack.parse_conntrack(text)


# ---------------------------------------------------------------------------------------------
# NFLOG (tests/data/nflog.nlmsg, captured by scripts/capture-kmsg-data)


def test_nflog_packets_from_the_capture() -> None:
    packets = nflog.parse_packets((DATA / "nflog.nlmsg").read_bytes())
    assert {(p.family, p.hook, p.prefix) for p in packets} == {(2, "input", "fwtrace:1a2b3c4d:1"),
                                                                (10, "input", "fwtrace:1a2b3c4d:1")}
    ctx = kernlog.KernContext("1a2b3c4d", Ruleset(), {}, {1: kernlog.LogPoint("ip", "filter", "INPUT", True)})
    evs = [e for e in (nflog.to_event(p, ctx, {2: "eth0"}) for p in packets) if e is not None]
    spec = PacketSpec(Proto.TCP, C4, S4, 40001, 8080, "S", 0x1001)
    probe, _ = correlate.split_events(evs, spec)
    [ev] = probe
    assert (ev.kind, ev.source, ev.table, ev.chain, ev.iif, ev.hook) == (EventKind.LOG, "nflog", "filter", "INPUT", "eth0", "input")
    echo = PacketSpec(Proto.ICMP, C4, S4, 4242, 7, "S", 0x1003)
    assert len(correlate.split_events(evs, echo)[0]) == 1
    v6 = PacketSpec(Proto.TCP, C6, S6, 40011, 8080, "S", 0x1001)
    assert len(correlate.split_events(evs, v6)[0]) == 1
    # Another run's prefix is not ours.
    assert not [e for e in (nflog.to_event(p, dataclasses.replace(ctx, run_id="deadbeef")) for p in packets) if e]


def test_nflog_config_requests() -> None:
    bind = nflog.config_request(33000, 7, command=nflog.NFULNL_CFG_CMD_BIND)
    # nlmsghdr (len, type ULOG<<8|CONFIG, flags REQUEST|ACK, seq 7, pid 0), nfgenmsg (AF_UNSPEC, v0, group), CMD attr
    assert bind == struct.pack("=IHHII", 28, 0x401, 5, 7, 0) + struct.pack(">BBH", 0, 0, 33000) + struct.pack("=HH", 8, 1) + b"\1\0\0\0"
    mode = nflog.config_request(33000, 8, copy_range=128)
    assert struct.pack(">IBB", 128, 2, 0) in mode and len(mode) % 4 == 0
    ack = struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -16) + bind[:16]
    assert nflog.errors(ack) == [-16]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400))
def test_nflog_parser_never_crashes(raw: bytes) -> None:
    ctx = kernlog.KernContext("1a2b3c4d", Ruleset(), {}, {1: kernlog.LogPoint("ip", "filter", "INPUT", True)})
    for p in nflog.parse_packets(raw):
        nflog.to_event(p, ctx)
    nflog.errors(raw)


def test_kern_plan_survives_the_bundle_round_trip() -> None:
    specs = [PacketSpec(Proto.TCP, C4, S4, 40000, 22, "S", 0x1001)]
    saved = snapshot.parse_iptables_save("*filter\n:INPUT ACCEPT [0:0]\n:blocklist - [0:0]\n"
                                          "-A INPUT -j blocklist\nCOMMIT\n")
    rs = Ruleset(kernplan.iptables_nft_tables("ip", saved) + kernplan.legacy_tables("ip", saved))
    kp = kernplan.kern_plan("0badc0de", specs, rs, "kmsg")
    assert {p.legacy for p in kp.log_points.values()} == {True, False} and kp.legacy_edits
    back = kernplan.plan_from_json(kernplan.plan_to_json(kp))
    assert (back.offsets, back.log_points, back.families, back.kmsg, back.nflog_group) == \
        (kp.offsets, kp.log_points, kp.families, kp.kmsg, kp.nflog_group)


def test_only_nftrace_events_say_whether_the_probe_got_through() -> None:
    # A kernel-log event read after the trace ended in our in_end chain does not make it "vanished".
    from tracer.model import TraceEvent

    end = TraceEvent(1, EventKind.POLICY, "inet", "fwtrace_0badc0de", "in_end", verdict="accept")
    late = TraceEvent(2, EventKind.LOG, "ip", "filter", "INPUT", source="kmsg", legacy=True)
    assert correlate.delivered([end, late]) and not correlate.delivered([late])
