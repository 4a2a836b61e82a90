"""`fwtrace watch`'s pure parts: the plan, the kernel counters, the capture's classic BPF filter (run
by a small interpreter on packets built with scapy), the flows, the argument checks."""
from __future__ import annotations

import argparse
import ipaddress
import struct
from typing import Any, Optional

import pytest

from tracer.cli import build_parser, cliargs
from tracer.correlate.flows import Flows, flow_events, key_text, reply_headers
from tracer.errors import UsageError
from tracer.model import EventKind, Proto, Ruleset, TraceEvent
from tracer.packet import parse_headers
from tracer.pipeline.watch import matches
from tracer.plan import plan, watchplan
from tracer.plan.watchplan import WatchFilter, budget, capture_filter, watch_plan

C, S = "192.0.2.2", "192.0.2.1"


def f(src: Optional[str] = C, dport: Optional[int] = 8080, proto: Optional[Proto] = None) -> WatchFilter:
    return WatchFilter(ipaddress.ip_network(src) if src else None, dport, proto)


def test_plan_traces_only_the_filter_and_rate_limits_it() -> None:
    p = watch_plan("0123abcd", f(proto=Proto.TCP), 7, plan.floors(""))
    tracing = [line.strip() for line in p.batch.splitlines() if "counter" in line]
    assert len(tracing) == 8  # two entries (client, answers) x (over budget, traced) x (prerouting, output)
    for over, traced in zip(tracing[::2], tracing[1::2]):
        assert "limit rate over 50/second burst 100 packets counter return" in over
        assert traced.endswith(("jump pre0", "jump pre1", "jump out0", "jump out1")) and "limit" not in traced
        assert over.split(" limit")[0] == traced.split(" counter")[0]  # the same match
    assert "ip saddr 192.0.2.2/32 meta l4proto tcp th dport 8080" in p.batch
    # the answers by their destination only: behind a port-forward the service answers from its own port
    assert "ip daddr 192.0.2.2/32 meta l4proto tcp counter jump" in p.batch and "th sport" not in p.batch
    assert "meta nfproto { ipv4, ipv6 } meta l4proto tcp th sport 8080" in watch_plan("0123abcd", f(None, proto=Proto.TCP), 7).batch
    # nothing in it decides any packet's fate: only return (the accept policy) and jumps to flag setters
    assert not any(v in p.batch for v in (" accept\n", " drop", " reject"))
    assert watchplan.base_chains(p) == ("pre", "out")
    assert p.undo == "delete table inet fwtrace_0123abcd\n"
    ingress = watch_plan("0123abcd", f(), 7, plan.floors('table netdev t {\n chain c {\n type filter hook ingress device "eth0" priority -500; policy accept;\n'))
    assert 'hook ingress device "eth0" priority -1000' in ingress.batch and "ingress_0" in watchplan.base_chains(ingress)


LISTING = """table inet fwtrace_0123abcd {
	chain pre { # handle 1
		type filter hook prerouting priority -1000; policy accept;
		ip saddr 192.0.2.2 tcp dport 8080 limit rate over 50/second burst 100 packets counter packets 7 bytes 420 return # handle 10
		ip saddr 192.0.2.2 tcp dport 8080 counter packets 150 bytes 9000 jump pre0 # handle 11
		ip daddr 192.0.2.2 tcp sport 8080 limit rate over 50/second burst 100 packets counter packets 0 bytes 0 return # handle 12
		ip daddr 192.0.2.2 tcp sport 8080 counter packets 3 bytes 180 jump pre1 # handle 13
	}
}
table inet fwtrace_0123abcd {
	chain out { # handle 4
		type filter hook output priority -1000; policy accept;
		ip saddr 192.0.2.2 tcp dport 8080 limit rate over 50/second burst 100 packets counter packets 0 bytes 0 return # handle 16
		ip saddr 192.0.2.2 tcp dport 8080 counter packets 0 bytes 0 jump out0 # handle 17
		ip daddr 192.0.2.2 tcp sport 8080 limit rate over 50/second burst 100 packets counter packets 2 bytes 120 return # handle 18
		ip daddr 192.0.2.2 tcp sport 8080 counter packets 100 bytes 6000 jump out1 # handle 19
	}
}
"""


def test_budget_reads_the_counters() -> None:
    b = budget(LISTING)
    assert (b.traced, b.over, b.arrived, b.read, b.hit) == (253, 9, 157, True, True)
    assert not budget(LISTING.replace("packets 7 ", "packets 0 ").replace("packets 2 ", "packets 0 ")).hit
    pre_only = LISTING[:LISTING.index("table inet", 1)]
    ingress = pre_only.replace("chain pre {", "chain ingress_0 {").replace("jump pre", "jump ing")
    assert budget(ingress + LISTING).traced == budget(LISTING).traced  # counted once, at prerouting
    assert not budget("").read and not budget("Error: No such file or directory").read  # unknown, not zero


# --- the capture's classic BPF, run ------------------------------------------------------------
def run_cbpf(code: bytes, pkt: bytes, protocol: int) -> int:
    prog = [struct.unpack("HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    a = x = 0
    pc = 0

    def load(off: int, size: int) -> int:
        if off == watchplan._SKF_AD_PROTOCOL:
            return protocol
        if off + size > len(pkt):
            raise IndexError
        return int.from_bytes(pkt[off:off + size], "big")

    while True:
        op, jt, jf, k = prog[pc]
        pc += 1
        if op == watchplan._RET:
            return k
        if op in (watchplan._LD_H_ABS, watchplan._LD_B_ABS, watchplan._LD_W_ABS):
            off = k - (1 << 32) if k & 0x80000000 else k
            a = load(off, {watchplan._LD_H_ABS: 2, watchplan._LD_B_ABS: 1, watchplan._LD_W_ABS: 4}[op])
        elif op == watchplan._LD_H_IND:
            a = load(x + k, 2)
        elif op == watchplan._LDX_MSH:
            x = 4 * (pkt[k] & 0xF)
        elif op == watchplan._AND:
            a &= k
        elif op == watchplan._JEQ:
            pc += jt if a == k else jf
        elif op == watchplan._JSET:
            pc += jt if a & k else jf
        else:
            raise AssertionError(f"unknown op {op:#x}")


def ip4(src: str, dst: str, proto: str, dport: int = 0, frag: int = 0) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    l4: Any = {"tcp": TCP(sport=40000, dport=dport, flags="S"), "udp": UDP(sport=40000, dport=dport), "icmp": ICMP()}[proto]
    return bytes(IP(src=src, dst=dst, frag=frag) / l4)


def ip6(src: str, dst: str, dport: int) -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    return bytes(IPv6(src=src, dst=dst) / TCP(sport=40000, dport=dport))


def test_capture_filter_passes_the_filter_and_its_near_misses_only() -> None:
    code = capture_filter(f("192.0.2.0/24", 8080, Proto.TCP))
    v4 = 0x0800
    assert run_cbpf(code, ip4(C, S, "tcp", 8080), v4) == watchplan.SNAPLEN
    assert run_cbpf(code, ip4(C, S, "udp", 53), v4)  # from the client to elsewhere: a near miss
    assert run_cbpf(code, ip4("198.51.100.9", S, "udp", 8080), v4)  # another client to the port
    assert run_cbpf(code, ip4("198.51.100.9", S, "udp", 5555), v4) == 0  # unrelated
    assert run_cbpf(code, ip4("198.51.100.9", S, "icmp"), v4) == 0
    assert run_cbpf(code, ip4("198.51.100.9", S, "udp", 8080, frag=100), v4) == 0  # no ports in a later fragment
    assert run_cbpf(code, b"\x00" * 28, 0x0806) == 0  # not IP
    assert run_cbpf(code, ip6("2001:db8::2", "2001:db8::1", 8080), 0x86DD) == 0  # an IPv4 source: no IPv6
    six = capture_filter(WatchFilter(ipaddress.ip_network("2001:db8::/32"), None, Proto.TCP))
    assert run_cbpf(six, ip6("2001:db8::2", "2001:db8::1", 22), 0x86DD)
    assert run_cbpf(six, ip6("2001:db9::2", "2001:db8::1", 22), 0x86DD) == 0
    anyport = capture_filter(WatchFilter(None, 443, None))
    assert run_cbpf(anyport, ip6("2001:db9::2", "2001:db8::1", 443), 0x86DD)
    assert run_cbpf(anyport, ip4("198.51.100.9", S, "tcp", 443), v4)
    assert run_cbpf(anyport, ip4("198.51.100.9", S, "tcp", 444), v4) == 0
    udp = capture_filter(WatchFilter(None, None, Proto.UDP))
    assert run_cbpf(udp, ip4("198.51.100.9", S, "udp", 1), v4) and run_cbpf(udp, ip4("198.51.100.9", S, "tcp", 1), v4) == 0


def test_matches_is_the_exact_filter() -> None:
    flt = f("192.0.2.0/24", 8080, Proto.TCP)
    h = parse_headers(ip4(C, S, "tcp", 8080))
    assert h is not None and matches(flt, h)
    for other in (ip4(C, S, "udp", 8080), ip4(C, S, "tcp", 80), ip4("198.51.100.9", S, "tcp", 8080)):
        h2 = parse_headers(other)
        assert h2 is not None and not matches(flt, h2)


# --- flows ----------------------------------------------------------------------------------------
TABLE = "fwtrace_0123abcd"


def ev(tid: int, chain: str, pkt: Optional[bytes] = None, table: str = TABLE, verdict: Optional[str] = None,
       kind: EventKind = EventKind.RULE, handle: Optional[int] = None) -> TraceEvent:
    return TraceEvent(tid, kind, "inet", table, chain, handle, verdict, "eth0", None, None, pkt)


def reply4(dport: int = 40000) -> bytes:
    from scapy.layers.inet import IP, TCP

    return bytes(IP(src=S, dst=C) / TCP(sport=8080, dport=dport, flags="SA"))


def test_flows_group_packets_and_answers_by_five_tuple() -> None:
    flows = Flows(TABLE)
    syn = ip4(C, S, "tcp", 8080)
    changed = flows.feed([ev(1, "pre0", syn), ev(1, "input", syn, table="filter", verdict="drop", handle=5),
                          ev(2, "pre0", ip4(C, S, "tcp", 9090)), ev(2, "in_end", kind=EventKind.POLICY, verdict="accept"),
                          ev(1, "ghost")], 1.0)
    assert len(changed) == 2 and flows.packets_traced == 2 and flows.events == 5
    drop = flows.flows[("tcp", C, 40000, S, 8080)]
    assert drop.quick == "drop" and len(drop.packets) == 1 and key_text(drop.key) == f"tcp {C}:40000 > {S}:8080"
    ok = flows.flows[("tcp", C, 40000, S, 9090)]
    assert ok.quick == "accept"
    # the kernel recycles trace id 1: a new header dump in our chain is a new packet
    flows.feed([ev(1, "out1", reply4()), ev(1, "post_end", kind=EventKind.POLICY, verdict="accept")], 2.0)
    assert len(drop.replies) == 1 and reply_headers(drop) is not None
    assert [e.trace_id for e in flow_events(drop)] == [1, 1, 1, 2, 2]  # ghost: a later event of packet 1
    # events of a trace id fwtrace never saw start (not ours) are counted, not placed
    flows.feed([ev(99, "input", table="filter")], 3.0)
    assert flows.unplaced == 1
    # a capture joins the same flow; one nobody traced is its own
    h = parse_headers(ip4(C, S, "tcp", 7070))
    assert h is not None and flows.captured(h, "eth0", 3.0) == ("tcp", C, 40000, S, 7070)
    assert flows.flows[("tcp", C, 40000, S, 7070)].quick == "not-in-netfilter"


def test_a_packet_flagged_at_ingress_and_again_at_prerouting_is_one_packet() -> None:
    flows = Flows(TABLE)
    syn = ip4(C, S, "tcp", 8080)
    flows.feed([ev(1, "ing0", syn), ev(1, "pre0", syn), ev(1, "input", syn, table="filter", verdict="drop")], 1.0)
    [flow] = flows.flows.values()
    assert flows.packets_traced == 1 and len(flow.packets) == 1 and len(flow.packets[0].events) == 3
    assert flow.quick == "drop"


def ctev(tid: int, ct_id: int, chain: str = "input") -> TraceEvent:
    return TraceEvent(tid, EventKind.RULE, "inet", "filter", chain, 3, "accept", "eth0", ct_id=ct_id)


def test_a_dnat_flows_answers_join_it_by_conntrack_id() -> None:
    """A port-forward 8080 -> 10.0.0.5:80: the answers come from 10.0.0.5:80 (another 5-tuple)
    and name the same conntrack entry as the client's packets once conntrack has seen them."""
    from scapy.layers.inet import IP, TCP

    flows = Flows(TABLE, dport=8080)
    synack = bytes(IP(src="10.0.0.5", dst=C) / TCP(sport=80, dport=40000, flags="SA"))
    other = bytes(IP(src=S, dst=C) / TCP(sport=22, dport=40001, flags="A"))  # an answer of a flow not watched
    flows.feed([ev(1, "pre0", ip4(C, S, "tcp", 8080)), ctev(1, 77)], 1.0)
    flows.feed([ev(2, "pre1", synack), ctev(2, 77, "forward"), ev(3, "out1", other), ctev(3, 5, "output")], 2.0)
    [flow] = flows.flows.values()
    assert flow.key == ("tcp", C, 40000, S, 8080) and flow.ct_id == 77
    assert len(flow.replies) == 1 and flow.replies[0].headers.sport == 80
    assert flows.aliases == {("tcp", C, 40000, "10.0.0.5", 80): flow.key}
    # the next answer of that 5-tuple joins at once, before its trace names the entry
    flows.feed([ev(4, "pre1", synack)], 3.0)
    assert len(flow.replies) == 2 and len(flows.flows) == 1
    assert [e.trace_id for e in flow_events(flow)] == [1, 1, 2, 2]


def test_answers_before_their_entry_is_known_wait_and_join() -> None:
    """An answer-only flow of the filter's port (a DNAT to another host keeping the port) merges
    into the client's flow once the conntrack id ties them; waiting answers stay bounded."""
    from scapy.layers.inet import IP, TCP

    flows = Flows(TABLE, dport=8080)
    back = bytes(IP(src="10.0.0.5", dst=C) / TCP(sport=8080, dport=40000, flags="SA"))
    flows.feed([ev(1, "pre0", ip4(C, S, "tcp", 8080)), ev(2, "pre1", back)], 1.0)
    assert len(flows.flows) == 2  # not yet known to be one
    flows.feed([ctev(1, 9), ctev(2, 9, "forward")], 1.5)
    [flow] = flows.flows.values()
    assert flow.key == ("tcp", C, 40000, S, 8080) and len(flow.replies) == 1
    for i in range(400):
        flows.feed([ev(1000 + i, "out1", bytes(IP(src=S, dst=C) / TCP(sport=22, dport=1024 + i)))], 2.0)
    assert len(flows.waiting) == 256 and len(flows.flows) == 1


def test_flows_stay_bounded() -> None:
    flows = Flows(TABLE, max_flows=2)
    for port in (1, 2, 3):
        flows.feed([ev(port, "pre0", ip4(C, S, "udp", port))], 1.0)
    assert len(flows.flows) == 2 and flows.flows_dropped == 1
    busy = Flows(TABLE)
    busy.feed([ev(i, "pre0", ip4(C, S, "tcp", 8080)) for i in range(100)], 1.0)
    busy.trim()
    assert len(busy.flows[("tcp", C, 40000, S, 8080)].packets) == 8 and busy.packets_traced == 100
    # a busy flow over a long watch: the trace ids followed stay bounded too (they hold their packets)
    for i in range(5000):
        busy.feed([ev(10_000 + i, "pre0", ip4(C, S, "tcp", 8080)), ev(10_000 + i, "in_end", kind=EventKind.POLICY)], 2.0)
        busy.trim()
    assert len(busy.current) <= 1024 and busy.packets_traced == 5100


# --- the command line -----------------------------------------------------------------------------
def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["watch", *args])


def test_a_filter_that_matches_everything_is_refused_unless_all() -> None:
    with pytest.raises(UsageError, match="--all"):
        cliargs.watch_request(parse())
    req = cliargs.watch_request(parse("--all"))
    assert req.filter.everything and req.duration == 30.0
    assert cliargs.watch_request(parse("--proto", "icmp")).filter.proto is Proto.ICMP
    with pytest.raises(UsageError, match="--dport does not apply"):
        cliargs.watch_request(parse("--proto", "icmp", "--dport", "1"))
    req = cliargs.watch_request(parse("--src", "203.0.113.0/24", "--dport", "8080", "--duration", "2m", "--max-packets", "5"))
    assert str(req.filter.src) == "203.0.113.0/24" and req.duration == 120 and req.max_packets == 5


@pytest.mark.parametrize("text", ["0", "0s", "-1", "-3s", "3601", "2h", "soon", ""])
def test_durations_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cliargs.duration(text)


def test_durations() -> None:
    assert cliargs.duration("30s") == 30 and cliargs.duration("1.5") == 1.5 and cliargs.duration("1h") == 3600


def test_capture_filter_everything() -> None:
    assert capture_filter(WatchFilter(everything=True)) == struct.pack("HBBI", watchplan._RET, 0, 0, watchplan.SNAPLEN)


# --- the pipeline, answered from a script ---------------------------------------------------------
def scripted(interrupt_at_poll: Optional[int], listing: str = "", early: tuple[Any, ...] = (),
             events: tuple[TraceEvent, ...] = ()) -> tuple[Any, list[str]]:
    from tracer.pipeline import watch as w
    from tracer.plan import commands as c
    from tracer.plan import watch_commands as wc
    from tracer.plan.commands import drive
    from tracer.ruleset.snapshot import Snapshot

    seen: list[str] = []
    polls = [0]
    clock = [100.0]

    def execute(cmd: Any) -> Any:
        name = type(cmd).__name__
        seen.append(name)
        if isinstance(cmd, wc.Now):
            return clock[0]
        if isinstance(cmd, wc.PollWatch):
            polls[0] += 1
            if polls[0] == interrupt_at_poll:
                from tracer.errors import Interrupted

                raise Interrupted("SIGTERM")
            clock[0] = max(clock[0] + 0.3, min(cmd.until, clock[0] + 0.3))
            return wc.WatchPolled(clock[0], events if polls[0] == 1 else ())
        return {c.ListBaseChains: "", c.Begin: None, wc.OpenCapture: ("eth0",), c.ProofListing: {},
                c.Generation: 1, c.Change: None, c.ListChains: listing, wc.CaptureStats: (0, 0),
                c.Finish: c.Finished(), wc.Show: None, c.ReadSysctl: None, wc.MarkCapture: early,
                c.MetChains: Snapshot(Ruleset(), "", {}), c.Listeners: (), c.Conntrack: "none"}[type(cmd)]

    req = w.WatchRequest(f(proto=Proto.TCP), duration=1.0)
    return drive(w.watch(req, "0123abcd", 1), execute), seen


def test_pipeline_order_nothing_arrived_and_duration() -> None:
    quiet = LISTING
    for n in (150, 7, 3, 2, 100):
        quiet = quiet.replace(f"packets {n} ", "packets 0 ")
    s, seen = scripted(None, quiet)
    # the capture before the proof's listing, the listing before the table, the table before any poll;
    # the counters and the capture's counts before the undo, the proof after it
    order = [seen.index(n) for n in ("OpenCapture", "ProofListing", "Change", "MarkCapture", "PollWatch", "ListChains", "CaptureStats",
                                     "Finish")]
    assert order == sorted(order) and "ProofListing" in seen[seen.index("Finish"):]
    assert s.stopped_by == "duration" and s.outcome == "nothing-arrived" and s.interfaces == ("eth0",)
    assert s.outside and "eth0" in s.message and s.cleanup_ok
    assert s.accounting.budget_hit is False and s.accounting.kernel_arrived == 0


def test_pipeline_signal_mid_watch_still_undoes_and_summarises() -> None:
    s, seen = scripted(2)
    assert s.stopped_by == "SIGTERM" and seen.count("Finish") == 1
    assert seen.index("Finish") > seen.index("Change")
    assert s.accounting.budget_hit is None  # no counters listed: "unknown", not "not hit"


def test_captures_queued_before_the_table_count_only_if_traced() -> None:
    """Packets the capture queued until the table was in (a loaded machine may take long to put
    it in) arrived before it, or in the instant since: untraced, they are no sign of "never
    reached netfilter" (false not-in-netfilter flows made test_accepted_flow flaky); traced, they
    were captured too."""
    from tracer.plan import watch_commands as wc

    def seen(sport: int, ident: int) -> Any:
        data = ip4(C, S, "tcp", 8080)
        data = data[:4] + struct.pack(">H", ident) + data[6:20] + struct.pack(">H", sport) + data[22:]
        h = parse_headers(data)
        assert h is not None
        return wc.Seen(h, data, "eth0", 99.0)

    before, during = seen(40001, 7), seen(40000, 1)  # scapy's IP id is 1: `during` is the traced SYN
    syn = ip4(C, S, "tcp", 8080)
    s, _ = scripted(None, early=(before, during), events=(ev(1, "pre0", syn), ev(1, "in_end", kind=EventKind.POLICY,
                                                                                 verdict="accept")))
    assert [(r.key[2], r.verdict, r.captured) for r in s.rows] == [(40000, "accept", 1)], s.rows
    assert s.accounting.packets_captured == 1 and s.outcome == "flows"
    assert s.accounting.capture_before == 1 and s.accounting.to_json()["capture"]["before_table_left_out"] == 1
