"""Simulated ingress, the pure decisions: route/link/tc parsing, filter preference, rp_filter,
the netlink request, frames and undo commands (sample outputs captured from ip/tc 6.1)."""
from __future__ import annotations

import ipaddress

import pytest

from tracer import diagnose
from tracer.inject import ingress
from tracer.inject.ingress import Route, TcState
from tracer.model import PacketResult, PacketSpec, Proto, Reply, Ruleset, Verdict

a = ipaddress.ip_address

ROUTE_GET = '[{"dst":"203.0.113.5","gateway":"192.0.2.2","dev":"eth0","prefsrc":"192.0.2.1","flags":[],"uid":0,"cache":[]}]'
ROUTE_GET_LOCAL = '[{"type":"local","dst":"127.0.0.1","dev":"lo","prefsrc":"127.0.0.1","flags":[],"uid":0,"cache":["local"]}]'
ROUTE_GET6 = ('[{"dst":"2001:db8::1","from":"::","gateway":"fd00::1","dev":"eth0","prefsrc":"fd00::2","metric":1024,'
              '"flags":[],"pref":"medium"}]')
LINKS = (
    '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN",'
    '"linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00",'
    '"broadcast":"00:00:00:00:00:00"},'
    '{"ifindex":2,"link_index":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,'
    '"qdisc":"noqueue","operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether",'
    '"address":"6a:1b:2c:3d:4e:5f","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0},'
    '{"ifindex":5,"ifname":"wg0","flags":["POINTOPOINT","NOARP","UP","LOWER_UP"],"mtu":1420,"qdisc":"noqueue",'
    '"operstate":"UNKNOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"none"}]'
)
QDISC_NONE = '[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]'
QDISC_CLSACT = QDISC_NONE[:-1] + ',{"kind":"clsact","handle":"ffff:","parent":"ffff:fff1","options":{}}]'
QDISC_INGRESS = QDISC_NONE[:-1] + ',{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1","options":{}}]'
FILTERS = ('[{"protocol":"all","pref":10,"kind":"u32","chain":0},{"protocol":"all","pref":10,"kind":"u32","chain":0,'
           '"options":{"fh":"800:","ht_divisor":1}},{"protocol":"ip","pref":49152,"kind":"bpf","chain":0}]')


def test_parse_route_get() -> None:
    assert ingress.parse_route_get(ROUTE_GET) == Route("eth0", a("192.0.2.2"), "unicast")
    assert ingress.parse_route_get(ROUTE_GET6) == Route("eth0", a("fd00::1"), "unicast")
    assert ingress.parse_route_get(ROUTE_GET_LOCAL) == Route("lo", None, "local")
    assert ingress.parse_route_get("") is None
    assert ingress.parse_route_get("[]") is None


def test_parse_links() -> None:
    links = ingress.parse_links(LINKS)
    assert links["eth0"] == ingress.Link(2, "eth0", "ether", bytes.fromhex("6a1b2c3d4e5f"), True)
    assert links["wg0"].mac is None and links["wg0"].link_type == "none"
    assert ingress.link_header_len(links["eth0"]) == 14
    assert ingress.link_header_len(links["wg0"]) == 0
    assert ingress.link_header_len(links["lo"]) is None


def test_parse_tc_state_and_preference() -> None:
    bare = ingress.parse_tc_state(QDISC_NONE, "")
    assert bare == TcState(False, False, ())
    assert ingress.egress_pref(bare) == 1
    used = ingress.parse_tc_state(QDISC_CLSACT, FILTERS)
    assert used == TcState(True, False, (10, 49152))
    assert ingress.egress_pref(used) == 9  # before the admin's own filters
    assert ingress.egress_pref(TcState(True, False, (1, 5))) is None  # nothing can run before pref 1
    assert ingress.parse_tc_state(QDISC_INGRESS, "").ingress_qdisc


@pytest.mark.parametrize("state, tcx, expected", [
    (TcState(False, False, ()), None, ingress.Catcher("classic", 1, True)),  # before 6.6: classic
    (TcState(False, False, ()), 0, ingress.Catcher("classic", 1, True)),  # tcx possible, none there
    (TcState(True, False, (10,)), 0, ingress.Catcher("classic", 9, False)),  # the admin's clsact stays
    (TcState(True, False, (10,)), 2, ingress.Catcher("tcx")),  # Cilium: tcx programs run first
    (TcState(True, False, (1,)), 0, ingress.Catcher("tcx")),  # pref 1 taken: tcx runs before it
    (TcState(False, True, ()), 0, ingress.Catcher("tcx")),  # old ingress qdisc: no clsact, tcx works
])
def test_choose_catcher(state: TcState, tcx: int, expected: ingress.Catcher) -> None:
    assert ingress.choose_catcher("eth0", state, tcx) == expected


def test_choose_catcher_gives_up_only_without_tcx() -> None:
    c = ingress.choose_catcher("eth0", TcState(True, False, (1,)), None)
    assert c.how == "none" and "preference 1 on eth0" in c.reason and "no tcx" in c.reason
    c = ingress.choose_catcher("eth0", TcState(False, True, ()), None)
    assert c.how == "none" and "`ingress` qdisc" in c.reason


@pytest.mark.parametrize("rp_all, rp_dev, back, drops", [
    (0, 0, Route("eth1"), False),  # off
    (1, 0, Route("eth0"), False),  # strict, symmetric route
    (1, 0, Route("eth1"), True),  # strict, route back by another interface
    (0, 1, Route("eth1"), True),  # the interface's own setting counts too: max(all, dev)
    (2, 0, Route("eth1"), False),  # loose: any route back will do
    (2, 0, None, True),  # loose, but no route back at all
    (1, 1, Route("eth0", kind="unreachable"), True),
    (None, None, Route("eth1"), False),
])
def test_rp_filter_drops(rp_all: int, rp_dev: int, back: Route, drops: bool) -> None:
    assert ingress.rp_filter_drops(rp_all, rp_dev, "eth0", back) is drops


def test_frame_and_names_and_undos() -> None:
    pkt4, pkt6 = bytes([0x45]) + bytes(19), bytes([0x60]) + bytes(39)
    dst, src = bytes.fromhex("6a1b2c3d4e5f"), bytes.fromhex("020000000001")
    assert ingress.frame(dst, src, pkt4) == dst + src + b"\x08\x00" + pkt4
    assert ingress.frame(dst, src, pkt6)[12:14] == b"\x86\xdd"
    assert ingress.port_names("1a2b3c4d") == ("fwi1a2b3c4d", "fwp1a2b3c4d")
    assert all(len(n) < 16 for n in ingress.port_names("1a2b3c4d"))
    assert ingress.undo_port("fwi1a2b3c4d") == ("ip", "link", "del", "fwi1a2b3c4d")
    assert ingress.undo_filter("eth0", "egress", 9) == ("tc", "filter", "del", "dev", "eth0", "egress", "pref", "9",
                                                         "handle", "1", "bpf")
    assert not ingress.clsact_in_use("[]", "")
    assert ingress.clsact_in_use("[]", FILTERS)
    assert ingress.default_source(4) == a("203.0.113.5") and ingress.default_source(6) == a("2001:db8:ffff::5")


SPEC = PacketSpec(Proto.TCP, a("198.51.100.77"), a("192.0.2.1"), 40000, 8080, "S", 1)


def _result(path: tuple[str, ...], verdict: Verdict = Verdict.ACCEPT) -> PacketResult:
    return PacketResult(SPEC, verdict, None, Reply("none"), (), path)


def _ctx(drops: bool) -> diagnose.Context:
    return diagnose.Context(Ruleset(), (), local=False, mode="ingress", via="eth0", src=SPEC.src, route_dev="eth1",
                            rp_filter_drops=drops)


def test_rp_filter_finding() -> None:
    r = _result(("prerouting",))
    fs = diagnose.diagnose(r, _ctx(True))
    [f] = [f for f in fs if f.code == "rp-filter"]
    assert "arrived on eth0" in f.message and "leaves by eth1" in f.message
    assert f.commands == ("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2",)
    assert not diagnose.reached(r, fs)
    assert "reverse-path filter" in diagnose.conclusion(r, fs)
    # Not when the packet got on to INPUT, or rp_filter would not drop it, or a rule dropped it first.
    assert "rp-filter" not in {f.code for f in diagnose.diagnose(_result(("prerouting", "input")), _ctx(True))}
    assert "rp-filter" not in {f.code for f in diagnose.diagnose(r, _ctx(False))}
    assert "rp-filter" not in {f.code for f in diagnose.diagnose(_result(("prerouting",), Verdict.DROP), _ctx(True))}
    assert "local-probe" not in {f.code for f in fs}


def test_local_probe_wording_for_local_and_fallback() -> None:
    r = _result(("output", "input"))
    [asked] = [f for f in diagnose.diagnose(r, diagnose.Context(Ruleset(), (), local=True, mode="local")) if f.code == "local-probe"]
    assert "(--local" in asked.message and "drop --local" in (asked.fix or "")
    fell = diagnose.Context(Ruleset(), (), local=True, mode="local",
                            fallback="eth0: bpf(BPF_PROG_LOAD) failed: Operation not permitted")
    [f] = [f for f in diagnose.diagnose(r, fell) if f.code == "local-probe"]
    assert f.message.startswith("Simulated ingress was not possible (eth0: bpf(BPF_PROG_LOAD) failed: Operation not "
                                "permitted), so the probe was sent locally instead: it took OUTPUT -> lo -> INPUT")
    assert "--from-netns" in (f.fix or "")


def test_pick_address_prefers_the_via_interface() -> None:
    from tracer.pipeline.probe import pick_address

    addrs = ('[{"ifname":"lo","flags":["UP"],"addr_info":[{"local":"127.0.0.1","scope":"host"}]},'
             '{"ifname":"eth0","flags":["UP"],"addr_info":[{"local":"192.0.2.1","scope":"global"},'
             '{"local":"2001:db8:1::1","scope":"global"}]},'
             '{"ifname":"eth1","flags":["UP"],"addr_info":[{"local":"198.51.100.1","scope":"global"}]}]')
    assert pick_address(addrs, 4) == a("192.0.2.1")
    assert pick_address(addrs, 4, "eth1") == a("198.51.100.1")
    assert pick_address(addrs, 6, "eth1") is None
    assert pick_address(addrs, 6) == a("2001:db8:1::1")
