"""The pure parts of the eBPF probes: BTF offsets, drop-reason names, source rendering, filter
keys, record decoding (records captured by scripts/capture-ebpf-data), timeline, findings, the
--ebpf auto policy, and the doctor's rendering."""
from __future__ import annotations

import ipaddress
import json
import os
import struct

import pytest

from tracer.diagnose import Context, diagnose
from tracer.collect import btf, ebpf_decode as decode, ebpf_reasons as reasons
from tracer.diagnose import ebpf_findings as findings
from tracer.plan import ebpf_keys as keys, ebpf_policy as policy, ebpf_programs as render
from tracer.correlate import ebpf_timeline as timeline
from tracer.render.ebpf_text import ebpf_line
from tracer.render import jsondoc
from tracer.model import (
    EventKind,
    Listener,
    PacketResult,
    PacketSpec,
    Proto,
    Reply,
    Step,
    TraceEvent,
    Verdict,
)

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "ebpf")
RECORD = decode.HEAD_SIZE + render.PKT_MAX


# --- BTF -------------------------------------------------------------------------------------


def _btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    hdr = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(body), len(body), len(strings))
    return hdr + body + strings


def _t(name: int, kind: int, vlen: int, size: int, kflag: int = 0) -> bytes:
    return struct.pack("<III", name, (kflag << 31) | (kind << 24) | vlen, size)


def small_btf() -> bytes:
    """struct sk_buff { union { struct { void *next; }; u64 x; }; u16 network_header; unsigned char *head; }
    (an anonymous union holding an anonymous struct, as the kernel's), struct net_device { int ifindex; },
    enum skb_drop_reason { SKB_DROP_REASON_NO_SOCKET = 3 }."""
    s = b"\0int\0sk_buff\0next\0x\0network_header\0head\0net_device\0ifindex\0skb_drop_reason\0SKB_DROP_REASON_NO_SOCKET\0u16\0"
    off = {name: s.index(b"\0" + name.encode() + b"\0") + 1 for name in
           ("int", "sk_buff", "next", "x", "network_header", "head", "net_device", "ifindex", "skb_drop_reason",
            "SKB_DROP_REASON_NO_SOCKET", "u16")}
    m = lambda name, tid, bits: struct.pack("<III", off[name] if name else 0, tid, bits)  # noqa: E731
    types = [
        _t(off["int"], btf.INT, 0, 4) + struct.pack("<I", 32),  # 1 int
        _t(0, btf.PTR, 0, 0),  # 2 void *
        _t(0, btf.STRUCT, 1, 8) + m("next", 2, 0),  # 3 anon struct { void *next; }
        _t(0, btf.UNION, 2, 8) + m("", 3, 0) + m("x", 1, 0),  # 4 anon union
        _t(off["u16"], btf.INT, 0, 2) + struct.pack("<I", 16),  # 5 u16
        _t(off["sk_buff"], btf.STRUCT, 3, 32) + m("", 4, 64) + m("network_header", 5, 128) + m("head", 2, 192),  # 6
        _t(off["net_device"], btf.STRUCT, 1, 8) + m("ifindex", 1, 32),  # 7
        _t(off["skb_drop_reason"], btf.ENUM, 1, 4) + struct.pack("<Ii", off["SKB_DROP_REASON_NO_SOCKET"], 3),  # 8
    ]
    return _btf(types, s)


def test_btf_offsets_through_anonymous_members() -> None:
    b = btf.BTF(small_btf())
    assert b.member_offset("sk_buff", "next") == 8  # anon union at 8, anon struct at 0, next at 0
    assert b.member_offset("sk_buff", "network_header") == 16
    assert b.member_offset("sk_buff", "head") == 24
    assert b.member_size("sk_buff", "head") == 8 and b.member_size("sk_buff", "network_header") == 2
    assert b.member_offset("net_device", "ifindex") == 4
    assert b.member_offset("sk_buff", "nope") is None and b.member_offset("nope", "x") is None
    assert b.enum("skb_drop_reason") == {3: "SKB_DROP_REASON_NO_SOCKET"}
    assert reasons.from_btf(b) == {3: "NO_SOCKET"}


def test_btf_rejects_garbage() -> None:
    with pytest.raises(btf.BTFError):
        btf.BTF(b"\0" * 40)
    data = bytearray(small_btf())
    struct.pack_into("<I", data, 12, struct.unpack_from("<I", data, 12)[0] - 3)  # type_len cut mid-type
    with pytest.raises(btf.BTFError):
        btf.BTF(bytes(data))


def test_offsets_for_render() -> None:
    offs = render.offsets(btf.BTF(small_btf()))
    assert offs.get("SKB_HEAD_OFF") == 24 and offs.get("SKB_NH_OFF") == 16 and offs.get("DEV_IFINDEX_OFF") == 4
    assert offs.get("SKB_DEV_OFF") is None  # not in the small BTF: render refuses
    with pytest.raises(render.RenderError, match="SKB_DEV_OFF"):
        render.render_drops("", offs, {})


# --- reasons ---------------------------------------------------------------------------------


def format_text() -> str:
    with open(os.path.join(DATA, "kfree_skb-format-6.18.txt")) as f:
        return f.read()


def test_reason_names_come_from_the_tracefs_format() -> None:
    table = reasons.from_format(format_text())
    assert (table[3], table[12], table[16], table[29], table[40]) == (
        "NO_SOCKET", "NETFILTER_DROP", "IP_RPFILTER", "SOCKET_BACKLOG", "TCP_LISTEN_OVERFLOW")
    assert reasons.name(table, 9999) == "reason 9999"
    assert reasons.from_format("print fmt: \"x\"") == {}


# --- rendering -------------------------------------------------------------------------------

OFFS = render.Offsets((("SKB_HEAD_OFF", 192), ("SKB_NH_OFF", 180), ("SKB_DEV_OFF", 16), ("DEV_IFINDEX_OFF", 224),
                       ("DEV_NET_OFF", 280), ("NET_INUM_OFF", 172), ("HOOK_STATE_HOOK_OFF", 0), ("HOOK_STATE_PF_OFF", 1)))
RST_FORMAT = "field:const void * skbaddr;\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\n"


def test_render_drops_defines_offsets_and_present_tracepoints() -> None:
    tpl = render.template("drops.c")
    src = render.render_drops(tpl, OFFS, {"skb/kfree_skb": format_text(), "tcp/tcp_send_reset": RST_FORMAT})
    assert "#define SKB_HEAD_OFF 192\n" in src and "#define NET_INUM_OFF 172\n" in src
    assert "#define HAVE_KFREE_SKB 1" in src and "#define HAVE_TCP_SEND_RESET 1" in src
    assert "#define HAVE_RST_REASON 1" in src
    assert "HAVE_ICMP_SEND 1" not in src and "HAVE_SOCK_STATE 1" not in src  # absent here: left out
    # enum types of the fields are declared by fwtrace, after the includes, before any use
    stub = "#define sk_rst_reason fwtrace_sk_rst_reason"
    assert src.index("#include <uapi/linux/ptrace.h>") < src.index(stub) < src.index("TRACEPOINT_PROBE")
    assert "#define skb_drop_reason fwtrace_skb_drop_reason" in src
    assert src.endswith(tpl[tpl.index("#include <uapi/linux/ptrace.h>") + 200:])  # the template itself follows


def test_render_drops_needs_the_reason_field() -> None:
    with pytest.raises(render.RenderError, match="drop reason"):
        render.render_drops("", OFFS, {"skb/kfree_skb": "field:void * skbaddr;"})


def test_render_hooks_per_attach_type() -> None:
    tpl = render.template("nfhook.c")
    assert "#define USE_KPROBE 1" in render.render_hooks(tpl, OFFS, "kprobe")
    assert "#define USE_FENTRY 1" in render.render_hooks(tpl, OFFS, "fentry")
    with pytest.raises(render.RenderError):
        render.render_hooks(tpl, OFFS, "uprobe")


# --- keys ------------------------------------------------------------------------------------


def test_keys_for_probe_and_replies() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 22, "S", 0x1234)
    (probe, r1), (reply, r2) = keys.keys(spec)
    assert (r1, r2) == (keys.PROBE, keys.REPLY) and len(probe) == 24
    assert keys.KEY.unpack(probe) == (4, 6, 40000, 0x1234, bytes([192, 0, 2, 2]) + bytes(12))
    assert keys.KEY.unpack(reply)[3] == 0
    icmp6 = PacketSpec(Proto.ICMP, ipaddress.ip_address("2001:db8::2"), ipaddress.ip_address("2001:db8::1"), 7, 1, "S", 5)
    assert keys.KEY.unpack(keys.keys(icmp6)[0][0])[:4] == (6, 58, 7, 5)


# --- decoding captured records ---------------------------------------------------------------


def captured(scenario: str) -> tuple[list[decode.Record], decode.Names, dict[str, object]]:
    with open(os.path.join(DATA, scenario, "ebpf-records.bin"), "rb") as f:
        data = f.read()
    with open(os.path.join(DATA, scenario, "ebpf-names.json")) as f:
        n = json.load(f)
    assert len(data) % RECORD == 0
    recs = [decode.decode(data[i:i + RECORD]) for i in range(0, len(data), RECORD)]
    names = decode.Names({int(k): v for k, v in n["reasons"].items()}, {int(k): v for k, v in n["ifnames"].items()},
                         lambda a: n["symbols"].get(str(a), hex(a)), lambda i: tuple(n["stacks"].get(str(i), ())))
    return recs, names, n


def events(scenario: str) -> list[TraceEvent]:
    recs, names, n = captured(scenario)
    wanted = [r for r in recs if decode.wanted(r, int(n["netns"]), names.symbol, names.stack)]  # type: ignore[arg-type]
    return [decode.to_event(r, names, i) for i, r in enumerate(wanted)]


def test_decode_reject() -> None:
    evs = events("reject")
    drop = next(e for e in evs if e.kind is EventKind.DROP)
    assert (drop.reason, drop.location, drop.hook, drop.iif, drop.source) == ("NETFILTER_DROP", "nft_do_chain", "input", "eth0", "ebpf")
    icmp = next(e for e in evs if e.kind is EventKind.SEND)
    assert "ICMP type 3 code 10" in icmp.text and icmp.location == "reject_tg"
    assert drop.to_json()["reason"] == "NETFILTER_DROP"


def test_decode_no_listener_and_the_copies_left_out() -> None:
    recs, names, n = captured("no-listener")
    kinds = {r.kind for r in recs}
    assert decode.CONSUME in kinds  # captured: copies for packet sockets, the client's own
    evs = events("no-listener")
    assert not [e for e in evs if e.kind is EventKind.CONSUME]
    assert [e.reason for e in evs if e.kind is EventKind.DROP][0] == "NO_SOCKET"
    reset = next(e for e in evs if e.kind is EventKind.SEND)
    assert "RST" in reset.text and reset.location == "tcp_v4_rcv"


def test_decode_rp_filter_and_netdev() -> None:
    [rp] = [e for e in events("rp-filter") if e.kind is EventKind.DROP]
    assert (rp.reason, rp.location, rp.hook) == ("IP_RPFILTER", "ip_rcv_finish_core", None)
    [nd] = [e for e in events("netdev-ingress") if e.kind is EventKind.DROP]
    assert (nd.reason, nd.hook) == ("NETFILTER_DROP", "ingress")


def test_decode_errors_and_unknown_kinds() -> None:
    with pytest.raises(decode.DecodeError):
        decode.decode(b"\0" * 10)
    bad = bytearray(RECORD)
    struct.pack_into("<H", bad, 50, 999)  # plen past the end
    with pytest.raises(decode.DecodeError):
        decode.decode(bytes(bad))
    rec = decode.decode(bytes(RECORD))
    with pytest.raises(decode.DecodeError):
        decode.to_event(rec, decode.Names({}, {}, hex, lambda i: ()), 0)


def test_hook_of_stack() -> None:
    assert decode.hook_of_stack(("nft_do_chain", "nf_hook_slow", "ip_local_deliver", "ip_rcv")) == "input"
    assert decode.hook_of_stack(("nft_do_chain", "nf_hook_slow", "__netif_receive_skb_core.constprop.0")) == "ingress"
    assert decode.hook_of_stack(("nft_do_chain", "ip_forward")) == "forward"
    assert decode.hook_of_stack(("x",)) is None


def test_state_record_as_headers_from_the_peer() -> None:
    from tracer.packet import parse_headers

    pkt = bytes([192, 0, 2, 1]) + bytes(12) + bytes([192, 0, 2, 2]) + bytes(12) + (22).to_bytes(2, "big") + (40000).to_bytes(2, "big")
    rec = decode.Record(0, 0, 0, decode.STATE, 0, 0, -1, 10, 3, decode.REPLY, 4, pkt)
    ev = decode.to_event(rec, decode.Names({}, {}, hex, lambda i: ()), 0)
    h = parse_headers(ev.packet)
    assert h is not None and (str(h.src), str(h.dst), h.sport, h.dport) == ("192.0.2.2", "192.0.2.1", 40000, 22)
    assert ev.text == "socket 192.0.2.1:22 LISTEN -> SYN_RECV"


def test_hook_event() -> None:
    data = struct.pack("<QQIIiI", 1, 2, 1, 2, -1, 0) + bytes(render.PKT_MAX)
    ev = decode.hook_event(data, 3)
    assert (ev.kind, ev.hook, ev.family) == (EventKind.HOOK, "input", "ip") and "drop" in ev.text
    assert ebpf_line(ev).endswith("(drop)")


# --- timeline, findings, policy -------------------------------------------------------------


def spec_of(report: dict[str, object]) -> PacketSpec:
    p = report["packets"][0]["probe"]  # type: ignore[index]
    return PacketSpec(Proto(p["proto"]), ipaddress.ip_address(p["src"]), ipaddress.ip_address(p["dst"]), p["sport"],
                      p["dport"], p["flags"], p["ident"])


def result_for(scenario: str, verdict: Verdict, path: tuple[str, ...], reply: str = "none") -> PacketResult:
    with open(os.path.join(DATA, scenario, "report.json")) as f:
        spec = spec_of(json.load(f))
    return timeline.attach(PacketResult(spec, verdict, None, Reply(reply), (), path), events(scenario))


def ctx(**kw: object) -> Context:
    from tracer.model import Ruleset

    return Context(Ruleset(), kw.pop("listeners", ()), False, **kw)  # type: ignore[arg-type]


def test_rp_filter_finding_from_the_reason() -> None:
    r = result_for("rp-filter", Verdict.UNKNOWN, ("prerouting",))
    assert [s.event.reason for s in r.steps] == ["IP_RPFILTER"]
    fs = diagnose(r, ctx(mode="ingress", via="eth0", src=r.spec.src))
    codes = [f.code for f in fs]
    assert "rp-filter" in codes and "stack-drop" not in codes
    f = next(f for f in fs if f.code == "rp-filter")
    assert "IP_RPFILTER" in f.message and f.commands == ("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2",)


def test_netdev_drop_finding_names_the_hook() -> None:
    r = result_for("netdev-ingress", Verdict.UNKNOWN, ())
    fs = diagnose(r, ctx())
    [f] = [f for f in fs if f.code == "netfilter-drop-untraced"]
    assert "ingress hook" in f.message
    assert findings.conclusion(r, fs) is not None and "ingress hook" in findings.conclusion(r, fs)  # type: ignore[operator]


def test_no_listener_confirmed() -> None:
    r = result_for("no-listener", Verdict.ACCEPT, ("prerouting", "input"), "rst")
    assert not r.reply_steps  # the reply's NO_SOCKET at the raw-socket client says nothing
    fs = diagnose(r, ctx(mode="from-netns"))
    [f] = [f for f in fs if f.code == "no-listener"]
    assert "NO_SOCKET" in f.message
    assert jsondoc.packet_outcome(r, fs) == "no-listener"
    # the same packet dropped by a rule is blocked, whatever another packet's findings say
    dropped = PacketResult(r.spec, Verdict.DROP, None, Reply("none"), (), r.path)
    assert jsondoc.packet_outcome(dropped, fs) == "blocked"


def test_accept_queue_full_from_a_silently_consumed_syn() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 8080, "S", 9)
    ev = TraceEvent(decode.TRACE_ID_BASE, EventKind.CONSUME, "ip", "", "", source="ebpf", location="tcp_rcv_state_process")
    r = PacketResult(spec, Verdict.ACCEPT, None, Reply("none"), (Step(ev),), ("prerouting", "input"))
    listening = (Listener(Proto.TCP, ipaddress.ip_address("0.0.0.0"), 8080),)
    fs = diagnose(r, ctx(listeners=listening))
    assert [f.code for f in fs] == ["accept-queue-full"]
    assert "accept queue is full" in findings.conclusion(r, fs)  # type: ignore[operator]
    assert diagnose(r, ctx()) == []  # no listener: not this
    answered = PacketResult(spec, Verdict.ACCEPT, None, Reply("syn-ack"), (Step(ev),), ("prerouting", "input"))
    assert diagnose(answered, ctx(listeners=listening)) == []


def test_kernel_findings_name_the_port_after_redirect() -> None:
    """The eBPF findings judge the port the socket lookup used, as the netfilter checks do (issue
    19: they were given the port as sent, before a REDIRECT or DNAT rewrote it)."""
    from tracer.model import Rule

    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 8080, "S", 9)
    redirect = Rule("ip", "nat", "PREROUTING", 1, 5, "tcp dport 8080 redirect to :80",
                    "-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80")
    nat = Step(TraceEvent(1, EventKind.RULE, "ip", "nat", "PREROUTING", handle=5, verdict="accept"), redirect)
    took = TraceEvent(decode.TRACE_ID_BASE, EventKind.CONSUME, "ip", "", "", source="ebpf", location="tcp_rcv_state_process")
    r = PacketResult(spec, Verdict.ACCEPT, None, Reply("none"), (nat, Step(took)), ("prerouting", "input"))
    on_80 = (Listener(Proto.TCP, ipaddress.ip_address("0.0.0.0"), 80),)
    [f] = [f for f in diagnose(r, ctx(listeners=on_80)) if f.code == "accept-queue-full"]
    assert "tcp port 80 " in f.message and "sport = :80'" in (f.fix or "")
    on_8080 = (Listener(Proto.TCP, ipaddress.ip_address("0.0.0.0"), 8080),)
    assert not [f for f in diagnose(r, ctx(listeners=on_8080)) if f.code == "accept-queue-full"]
    no_socket = TraceEvent(decode.TRACE_ID_BASE, EventKind.DROP, "ip", "", "", source="ebpf", reason="NO_SOCKET",
                           location="tcp_v4_rcv")
    dropped = PacketResult(spec, Verdict.ACCEPT, None, Reply("none"), (nat, Step(no_socket)), ("prerouting", "input"))
    [f] = [f for f in diagnose(dropped, ctx()) if f.code == "no-listener"]
    assert "port 80 at 192.0.2.1" in f.message and f.fix == "start the service on port 80"


def test_auto_policy() -> None:
    spec = PacketSpec(Proto.TCP, ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1"), 40000, 22, "S", 9)
    res = lambda v, reply: PacketResult(spec, v, None, Reply(reply))  # noqa: E731
    assert policy.unexplained([res(Verdict.REJECT, "rst")]) is None
    assert policy.unexplained([res(Verdict.DROP, "none")]) is None
    assert policy.unexplained([res(Verdict.ACCEPT, "syn-ack")]) is None
    assert "no netfilter verdict" in (policy.unexplained([res(Verdict.UNKNOWN, "none")]) or "")
    assert "no reply" in (policy.unexplained([res(Verdict.ACCEPT, "none")]) or "")
    assert "rejected" in (policy.unexplained([res(Verdict.REJECT, "none")]) or "")


def test_own_injection_port_events_left_out() -> None:
    r = result_for("reject", Verdict.REJECT, ("prerouting", "input"))
    probe_steps = [s for s in r.steps if s.event.source == "ebpf"]
    assert probe_steps
    with open(os.path.join(DATA, "reject", "report.json")) as f:
        spec = spec_of(json.load(f))
    bare = PacketResult(spec, Verdict.REJECT, None, Reply("none"), (), ())
    evs = events("reject")
    assert timeline.attach(bare, evs, frozenset({"eth0"})).steps == tuple(
        Step(e) for e in evs if e.iif is None and timeline.attach(bare, [e]).steps)


# --- the pipeline's eBPF steps (scripted, as tests/unit/test_pipeline.py) -------------------


def test_pipeline_asks_for_the_ebpf_steps_in_order() -> None:
    import random

    from tests.unit.test_pipeline import Script
    from tracer.plan.commands import drive
    from tracer.plan.ebpf_commands import EbpfOutcome
    from tracer.model import ProbeRequest
    from tracer.pipeline.probe import probe

    raw = open(os.path.join(DATA, "reject", "ebpf-records.bin"), "rb").read()
    script = Script(OpenEbpf="loaded", CollectEbpf=EbpfOutcome("loaded", ("a note",), (raw[:RECORD],), {"netns": 1}))
    report = drive(probe(ProbeRequest(dport=8080, local=True, ebpf="on"), "0badc0de", 4242, random.Random(1)), script)
    names = script.names()
    assert names[0] == "StartEbpf"  # first: the load runs beside everything else
    assert names.index("OpenEbpf") < names.index("Change")  # open before anything is sent
    assert names.index("WatchEbpf") == names.index("Send") - 1
    assert names.index("CollectEbpf") == names.index("Finish") + 1
    assert report.ebpf == "loaded" and "a note" in report.notes
    assert report.evidence.ebpf == (raw[:RECORD],) and report.to_json()["ebpf"] == {"mode": "on", "status": "loaded"}
    off = Script()
    drive(probe(ProbeRequest(dport=8080, local=True), "0badc0de", 4242, random.Random(1)), off)
    assert not [n for n in off.names() if "Ebpf" in n]


def test_bundle_replay_puts_the_kernel_events_back() -> None:
    from tracer.pipeline.evidence import replay
    from tracer.system.bundle_io import read_dir as read_bundle

    bundles = os.path.join(DATA, "..", "bundles")
    [rp] = replay(read_bundle(os.path.join(bundles, "ebpf-rp-filter")))
    assert [(s.event.source, s.event.reason) for s in rp.steps if s.event.source == "ebpf"] == [("ebpf", "IP_RPFILTER")]
    [rej] = replay(read_bundle(os.path.join(bundles, "ebpf-reject")))
    # the REJECT's ICMP error is sent while its rule runs, before nftrace reports the rule
    assert [(s.event.source, s.event.kind.value) for s in rej.steps] == [
        ("ebpf", "send"), ("nftrace", "rule"), ("ebpf", "drop")]


# skb:consume_skb's fields as each kernel's tracefs format lists them: 6.1 has no `location` (6.3+).
CONSUME_61 = "field:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n"
CONSUME_618 = CONSUME_61 + "field:void * location;\toffset:16;\tsize:8;\tsigned:0;\n"


def test_render_reads_consume_location_only_where_the_tracepoint_has_it() -> None:
    tpl = render.template("drops.c")
    old = render.render_drops(tpl, OFFS, {"skb/kfree_skb": format_text(), "skb/consume_skb": CONSUME_61})
    new = render.render_drops(tpl, OFFS, {"skb/kfree_skb": format_text(), "skb/consume_skb": CONSUME_618})
    assert "#define HAVE_CONSUME_SKB 1" in old and "#define HAVE_CONSUME_LOCATION 1" not in old
    assert "#define HAVE_CONSUME_LOCATION 1" in new


def test_consumer_without_location_comes_from_the_stack() -> None:
    """Linux 6.1's skb:consume_skb has no `location` (Debian 12): the kernel stack names the
    consumer, so packet sockets' copies still stay out of the timeline there."""
    frames = {1: ("consume_skb", "packet_rcv", "__netif_receive_skb_core", "process_backlog"),
              2: ("consume_skb", "tcp_rcv_state_process", "tcp_v4_do_rcv", "tcp_v4_rcv"),
              3: ()}
    symbol, stack = (lambda a: hex(a)), (lambda i: frames.get(i, ()))

    def rec(stack_id: int, location: int = 0) -> decode.Record:
        return decode.Record(1, 2, location, decode.CONSUME, 0, 3, stack_id, 0, 0, decode.PROBE, 4, b"", 7)

    assert not decode.wanted(rec(1), 7, symbol, stack)  # a capture's copy
    assert decode.wanted(rec(2), 7, symbol, stack)  # the stack itself took it
    assert decode.freed_by(rec(2), symbol, stack) == "tcp_rcv_state_process"
    assert decode.freed_by(rec(3), symbol, stack) == "?"  # no stack either: said, not guessed
    assert decode.freed_by(rec(1, location=0x10), symbol, stack) == "0x10"  # Linux >= 6.3: its location
    names = decode.Names({}, {}, symbol, stack)
    assert decode.to_event(rec(2), names, 0).text == "consumed (no drop reason) by tcp_rcv_state_process"


def test_a_capture_dropping_its_copy_is_not_the_probes_fate() -> None:
    """Seen on Linux 6.1 under load: a packet socket whose buffer is full frees its copy with
    kfree_skb at packet_rcv (reason NOT_SPECIFIED), in whichever namespace the capture runs."""
    syms = {0x10: "packet_rcv", 0x20: "nf_hook_slow", 0x30: "kfree_skb_reason"}
    frames = {4: ("kfree_skb_reason", "tpacket_rcv", "__netif_receive_skb_core")}
    symbol, stack = (lambda a: syms.get(a, hex(a))), (lambda i: frames.get(i, ()))

    def drop(location: int, stack_id: int = -1, netns: int = 7) -> decode.Record:
        return decode.Record(1, 2, location, decode.DROP, 1, 3, stack_id, 0, 0, decode.PROBE, 4, b"", netns)

    assert not decode.wanted(drop(0x10, netns=9), 7, symbol, stack)
    assert not decode.wanted(drop(0x30, 4), 7, symbol, stack)  # the location a helper: the stack says
    assert decode.wanted(drop(0x20), 7, symbol, stack)  # netfilter's drop: the probe's fate
    # a capture closed with the copy unread (QUEUE_PURGE): the location is the purge helper
    frames[5] = ("sk_skb_reason_drop", "skb_queue_purge_reason", "packet_release", "__sock_release", "sock_close")
    syms[0x40] = "skb_queue_purge_reason"
    assert not decode.wanted(drop(0x40, 5), 7, symbol, stack)
    frames[6] = ("sk_skb_reason_drop", "skb_queue_purge_reason", "udp_destroy_sock", "sk_common_release")
    assert decode.wanted(drop(0x40, 6), 7, symbol, stack)  # a socket of the service's: not a capture
    frames[7] = ("sk_skb_reason_drop", "dev_hard_start_xmit", "__dev_queue_xmit", "packet_snd", "packet_sendmsg")
    assert decode.wanted(drop(0x50, 7), 7, symbol, stack)  # the sender's own drop: the probe never left
    assert decode.wanted(drop(0x20, netns=9), 7, symbol, stack)  # a drop elsewhere on the path counts too
