"""The pure parts of `fwtrace watch --ebpf`: the kernel-side filter's map values, eBPF drop events
joined to the traced packets of their flow, the accounting, the option."""
from __future__ import annotations

import ipaddress
import re
from typing import Optional

from tracer.cli import build_parser, cliargs
from tracer.correlate.flows import KERNEL_WAIT, Flows, flow_events
from tracer.model import EventKind, Proto, TraceEvent
from tracer.plan.ebpf_keys import WATCH, watch_keys
from tracer.plan.ebpf_programs import template
from tracer.plan.watchplan import WatchFilter
from tracer.report.watch import Accounting

C, S, TABLE = "192.0.2.2", "192.0.2.1", "fwtrace_0123abcd"


def test_watch_keys_per_family_prefix_port_and_proto() -> None:
    [(slot, v)] = watch_keys(WatchFilter(ipaddress.ip_network("198.51.100.0/25"), 8080, Proto.TCP)).items()
    assert slot == 0 and WATCH.unpack(v) == (4, 6, 8080, 25, bytes([198, 51, 100, 0]) + bytes(12))
    six = watch_keys(WatchFilter(ipaddress.ip_network("2001:db8::/32"), None, Proto.UDP))
    assert list(six) == [1] and WATCH.unpack(six[1])[:4] == (6, 17, 0, 32)
    both = watch_keys(WatchFilter(None, 53, None))  # no --src: both families, any source and protocol
    assert {s: WATCH.unpack(v)[:4] for s, v in both.items()} == {0: (4, 0, 53, 0), 1: (6, 0, 53, 0)}
    icmp = watch_keys(WatchFilter(None, None, Proto.ICMP))
    assert [WATCH.unpack(v)[1] for v in icmp.values()] == [1, 58]


def test_drops_c_declares_the_watch_struct_and_maps_the_loader_copies() -> None:
    src = template("drops.c")
    body = re.search(r"struct watch_t \{(.*?)\};", src, re.S)
    assert body and re.findall(r"(u8|u16|u32) (\w+)", body.group(1)) == [
        ("u8", "family"), ("u8", "proto"), ("u16", "port"), ("u32", "plen"), ("u8", "addr")]
    assert WATCH.size == 24
    for name in ("watchf", "lost"):
        assert re.search(rf"BPF_ARRAY\({name},", src)
    from tracer.system.ebpf_loader import DROPS_MAPS  # (bcc is imported lazily: not here)

    assert {"watchf", "lost"} <= set(DROPS_MAPS)


def syn(dport: int, ident: int) -> bytes:
    from scapy.layers.inet import IP, TCP

    return bytes(IP(src=C, dst=S, id=ident) / TCP(sport=40000, dport=dport, flags="S"))


def traced(tid: int, pkt: bytes) -> TraceEvent:
    return TraceEvent(tid, EventKind.RULE, "inet", TABLE, "pre0", None, None, "eth0", None, None, pkt)


def kdrop(pkt: bytes, reason: str = "IP_RPFILTER") -> TraceEvent:
    return TraceEvent(1 << 40, EventKind.DROP, "ip", "", "", None, None, "eth0", None, None, pkt, reason=reason,
                      location="ip_rcv_finish_core", source="ebpf")


def test_kernel_drops_join_their_traced_packet_even_when_they_come_first() -> None:
    flows = Flows(TABLE)
    first, second = syn(9090, 7), syn(9090, 8)
    flows.feed([traced(1, first)], 1.0)
    changed = flows.feed([kdrop(second), traced(2, second)], 1.1)  # its trace came in the same poll, after
    assert changed == {("tcp", C, 40000, S, 9090)}
    flow = flows.flows[("tcp", C, 40000, S, 9090)]
    assert [len(p.events) for p in flow.packets] == [1, 2]  # the packet of its IPv4 id, not the first
    assert flow.decisive() is flow.packets[1]  # the kernel dropped it: it stands for the flow
    assert [e.source for e in flow_events(flow)] == ["nftrace", "ebpf"]
    assert flows.kernel_events == 1 and not flows.kernel_pending
    # one of no traced packet waits (bounded), then counts as unplaced
    flows.feed([kdrop(syn(7071, 9))] * (KERNEL_WAIT + 3), 2.0)
    assert len(flows.kernel_pending) == KERNEL_WAIT and flows.unplaced == 3


def acc(status: str, events: int = 0, lost: int = 0) -> Accounting:
    return Accounting(3, 3, 9, False, 3, 0, ebpf=status, ebpf_events=events, ebpf_lost=lost)


def test_accounting_counts_ebpf_events_and_the_lost_ones() -> None:
    a = acc("loaded", 5, 2)
    assert a.to_json()["ebpf"] == {"status": "loaded", "events": 5, "lost": 2}
    assert "eBPF drop reasons: 5 event(s), 2 lost" in a.text()
    assert "eBPF" not in acc("off").text() and acc("off").to_json()["ebpf"]["status"] == "off"


def req(*args: str) -> Optional[str]:
    return str(cliargs.watch_request(build_parser().parse_args(["watch", "--dport", "80", *args])).ebpf)


def test_the_option_is_the_probes() -> None:
    assert (req(), req("--ebpf", "on"), req("--ebpf", "off")) == ("auto", "on", "off")


def test_ebpf_on_fails_in_one_line_where_auto_goes_on() -> None:
    import pytest

    from tracer.errors import EnvironmentProblem
    from tracer.pipeline import watch_ebpf
    from tracer.plan.ebpf_commands import OpenEbpf
    from tracer.plan.watch_commands import WatchEbpfFilter

    f = WatchFilter(ipaddress.ip_network("192.0.2.0/24"), 80, None)
    for strict in (True, False):
        steps = watch_ebpf.open_ebpf(f, strict)
        assert isinstance(next(steps), OpenEbpf)
        if strict:
            with pytest.raises(EnvironmentProblem, match=r"^--ebpf on: .*\(no BTF\)"):
                steps.send("unavailable: no BTF")
        else:
            with pytest.raises(StopIteration) as done:
                steps.send("unavailable: no BTF")
            assert done.value.value == "unavailable: no BTF"
            assert watch_ebpf.note(done.value.value) == ("--ebpf auto: the kernel's drop reasons were not watched: no BTF",)
    steps = watch_ebpf.open_ebpf(f, True)
    next(steps)
    put = steps.send("loaded")
    assert isinstance(put, WatchEbpfFilter) and dict(put.slots) == watch_keys(f)
