"""The offline matcher: truth tables on the captured rulesets, both syntaxes, and robustness."""
from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer.ruleset.match import PacketFacts, ipt_spec, rule_action, rule_matches
from tracer.model import PacketSpec, Proto, Rule, Ruleset
from tracer.ruleset import (
    attach_iptables,
    managed_tables,
    parse_iptables_save,
    parse_nft_ruleset,
)

DATA = Path(__file__).resolve().parent.parent / "data"
a = ipaddress.ip_address


def snapshot(case: str, save: str = "", family: str = "ip") -> Ruleset:
    text = (DATA / f"nft-list-{case}.txt").read_text()
    rs = parse_nft_ruleset(text, managed_tables((DATA / f"nft-list-stderr-{case}.txt").read_text()))
    return attach_iptables(rs, family, parse_iptables_save((DATA / save).read_text())) if save else rs


SEED = snapshot("seed", "iptables-save-seed.txt")
NATIVE = snapshot("native")


def seed_input(n: int) -> Rule:
    return SEED.chain("ip", "filter", "INPUT").rules[n - 1]  # type: ignore[union-attr]


def native(handle: int) -> Rule:
    for r in NATIVE.rules():
        if r.family == "inet" and r.handle == handle:
            return r
    raise KeyError(handle)


def tcp(dport: int = 8080, flags: str = "S", src: str = "192.0.2.9", iif: Optional[str] = "eth0",
        ct: Optional[str] = "new", sport: int = 40000) -> PacketFacts:
    v6 = ":" in src
    dst = a("2001:db8::1") if v6 else a("192.0.2.1")
    return PacketFacts(6 if v6 else 4, Proto.TCP, a(src), dst, sport, dport, flags, iif, None, ct, None)


def udp(dport: int, sport: int = 40000, src: str = "192.0.2.9") -> PacketFacts:
    return dataclasses.replace(tcp(dport, "", src, sport=sport), proto=Proto.UDP)


def ping(src: str = "192.0.2.9") -> PacketFacts:
    p = tcp(1, "", src, sport=7)
    return dataclasses.replace(p, proto=Proto.ICMP, icmp_type=8 if p.family == 4 else 128)


def nft(text: str, family: str = "inet") -> Rule:
    return Rule(family, "t", "c", 1, 1, text)


def ipt(line: str, family: str = "ip") -> Rule:
    return Rule(family, "filter", "INPUT", 1, 1, "", line)


# ---------------------------------------------------------------------------------------------
# The seed firewall (iptables form attached, as fwtrace sees it)


def test_seed_rule_8_matches_syn_to_8080() -> None:
    assert seed_input(8).ipt == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
    assert rule_matches(seed_input(8), tcp(8080)) is True
    assert rule_matches(seed_input(8), tcp(8081)) is False
    assert rule_matches(seed_input(8), udp(8080)) is False


def test_seed_rule_4_new_ssh_only() -> None:
    assert rule_matches(seed_input(4), tcp(8080)) is False
    assert rule_matches(seed_input(4), tcp(22)) is True
    assert rule_matches(seed_input(4), tcp(22, "A", ct="established")) is False
    assert rule_matches(seed_input(4), tcp(22, ct=None)) is None  # conntrack state unknown
    assert rule_matches(seed_input(4), tcp(8080, ct=None)) is False  # ...but the port rules it out


def test_seed_reject_all_shadows_8080() -> None:
    rule7 = seed_input(7)
    assert rule_matches(rule7, tcp(8080)) is True and rule_action(rule7) == "reject"
    assert rule_matches(rule7, ping()) is True
    assert rule_matches(rule7, tcp(8080, src="2001:db8::9")) is False  # an ip table sees no IPv6


def test_seed_interface_and_state_rules() -> None:
    assert rule_matches(seed_input(3), tcp(iif="lo")) is True
    assert rule_matches(seed_input(3), tcp(iif="eth0")) is False
    assert rule_matches(seed_input(3), tcp(iif=None)) is None
    assert rule_matches(seed_input(2), tcp(ct="related")) is True
    assert rule_matches(seed_input(2), tcp(ct="new")) is False


def test_seed_fail2ban_sources() -> None:
    f2b = SEED.chain("ip", "filter", "fail2ban-SSH").rules  # type: ignore[union-attr]
    assert rule_matches(f2b[0], tcp(22, src="117.239.37.150")) is True
    assert rule_matches(f2b[0], tcp(22, src="117.239.37.151")) is False


def test_both_syntaxes_agree_on_every_captured_rule() -> None:
    # Each iptables-nft rule is judged once by its iptables form, once by nft's translation;
    # where both are understood they must agree, on a grid of packets.
    packets = [
        tcp(22), tcp(80), tcp(1500, "SA"), tcp(8080, "A", "10.1.2.3", "lo", "established"),
        tcp(443, "S", "2001:db8:1::1"), tcp(22, "S", "2001:db8::5", None, None),
        udp(53), udp(5005, 53), udp(546, 53, "2001:db8::7"), ping(), ping("2001:db8::9"),
    ]
    rulesets = [SEED, snapshot("matchers", "iptables-save-matchers.txt"),
                snapshot("ip6", "ip6tables-save-ip6.txt", "ip6")]
    checked = 0
    for rule in (r for rs in rulesets for r in rs.rules()):
        assert rule.ipt is not None
        for p in packets:
            # A text nft could not render leaves the iptables form to decide alone.
            by_ipt = rule_matches(dataclasses.replace(rule, text='xt match "?"'), p)
            by_nft = rule_matches(dataclasses.replace(rule, ipt=None), p)
            assert by_ipt == by_nft, (rule, p)
            checked += by_ipt is not None
        assert rule_action(rule) == rule_action(dataclasses.replace(rule, ipt=None)), rule
    assert checked > 300


def test_mistranslated_rule_is_unknown_not_guessed() -> None:
    # iptables-save printed nft's `tcp dport { 1, 2 } accept` as `-p tcp -j ACCEPT`.
    saved = parse_iptables_save((DATA / "iptables-save-incompat.txt").read_text())
    listed = snapshot("incompat").chain("ip", "filter", "INPUT")
    assert listed is not None
    rule = dataclasses.replace(listed.rules[9], ipt=saved["filter"].chains[0].rules[9])
    assert (rule.text, rule.ipt) == ("tcp dport { 1, 2 } accept", "-A INPUT -p tcp -j ACCEPT")
    assert rule_matches(rule, tcp(2)) is True
    assert rule_matches(rule, tcp(8080)) is None
    assert rule_matches(rule, udp(2)) is False


# ---------------------------------------------------------------------------------------------
# Native nft rules (captured inet table)


@pytest.mark.parametrize(("handle", "packet", "expected"), [
    (11, tcp(ct="established"), True),
    (11, tcp(ct=None), None),
    (13, tcp(iif="lo"), True),
    (14, tcp(22, iif="eth1"), True),  # iifname "eth*"
    (14, tcp(22, iif="wlan0"), False),
    (15, tcp(), None),  # ip saddr @blocked4: named set
    (15, tcp(src="2001:db8::9"), False),  # ...but an IPv6 packet never has an ip saddr
    (18, tcp(587, src="192.0.2.20"), True),
    (18, tcp(587, src="192.0.2.21"), False),
    (19, tcp(80, src="2001:db8::9"), True),  # ip6 nexthdr tcp tcp dport != 22
    (19, tcp(22, src="2001:db8::9"), False),
    (20, ping(), True),  # icmp type echo-request limit rate 10/second
    (20, ping("2001:db8::9"), False),
    (21, ping("2001:db8::9"), True),
    (23, tcp(8080), None),  # vmap
    (24, tcp(1500, "S"), True),  # tcp flags syn tcp dport 1000-2000
    (24, tcp(1500, "SA"), True),  # any of the flags
    (24, tcp(1500, "A"), False),
    (25, tcp(flags="S"), True),  # tcp flags syn / syn,ack
    (25, tcp(flags="SA"), False),
    (26, udp(546, src="2001:db8::9"), True),  # meta nfproto ipv6
    (26, udp(546), False),
    (29, udp(7), True),  # th dport 7
    (29, ping(), None),
    (30, udp(1234), True),  # ip protocol udp ... meta nftrace set 1
    (31, tcp(), None),  # meta mark
    (32, tcp(), None),  # iifname @ifs
])
def test_native_rules(handle: int, packet: PacketFacts, expected: Optional[bool]) -> None:
    assert rule_matches(native(handle), packet) is expected


# ---------------------------------------------------------------------------------------------
# iptables forms not in the captures


@pytest.mark.parametrize(("line", "packet", "expected"), [
    ("-A INPUT -m set --match-set foo src -j DROP", tcp(), None),
    ("-A INPUT -p udp -m set --match-set foo src -j DROP", tcp(), False),  # known miss wins
    ("-A INPUT -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 9 -j ACCEPT", tcp(), False),
    ("-A INPUT -m socket -j ACCEPT", tcp(), None),  # a module without options still matters
    ("-A INPUT -p tcp -m recent --rcheck --name x -j DROP", tcp(), None),
    ("-A INPUT -s 10.0.0.0/8,192.0.2.0/24 -j ACCEPT", tcp(), True),
    ("-A INPUT ! -s 10.0.0.0/8,192.0.2.0/24 -j ACCEPT", tcp(), False),
    ("-A INPUT -p 6 -j ACCEPT", tcp(), True),
    ("-A INPUT -p all -j ACCEPT", udp(1), True),
    ("-A INPUT -p tcp --dport 8000:9000 -j ACCEPT", tcp(), True),  # implicit -m tcp
    ("-A INPUT -p tcp -m tcp --sport 1024: -j ACCEPT", tcp(), True),
    ("-A INPUT -p tcp -m tcp --syn -j ACCEPT", tcp(flags="SA"), False),
    ("-A INPUT -p tcp -m tcp --tcp-flags ALL NONE -j DROP", tcp(flags=""), True),
    ("-A INPUT -p tcp -m multiport --ports 40000 -j ACCEPT", tcp(), True),  # source or dest
    ("-A INPUT -p udp -m multiport --dports 1:100 -j ACCEPT", ping(), False),
    ("-A INPUT -m state --state UNTRACKED -j ACCEPT", tcp(ct="untracked"), True),
    ("-A INPUT -m conntrack --ctstate DNAT -j ACCEPT", tcp(ct="new"), None),
    ("-A INPUT -m conntrack --ctorigdst 1.2.3.4 -j ACCEPT", tcp(), None),
    ("-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT", ping(), True),
    ("-A INPUT -p icmp -m icmp --icmp-type 8/0 -j ACCEPT", ping(), True),
    ("-A INPUT -p icmp -m icmp --icmp-type port-unreachable -j ACCEPT", ping(), False),
    ("-A INPUT -p icmp -m icmp --icmp-type any -j ACCEPT", ping(), True),
    ("-A INPUT -i eth+ -j ACCEPT", tcp(iif="eth0"), True),
    ("-A INPUT -i eth+ -j ACCEPT", tcp(iif="veth0"), False),
    ("-A INPUT -f -j DROP", tcp(), False),
    ("-A INPUT -m comment --comment \"-j DROP\" -j ACCEPT", tcp(), True),
    ("-A INPUT -m comment --comment \"unbalanced -j ACCEPT", tcp(), True),
    ("-A INPUT -j ACCEPT", tcp(), True),
])
def test_iptables_forms(line: str, packet: PacketFacts, expected: Optional[bool]) -> None:
    assert rule_matches(ipt(line), packet) is expected


# ---------------------------------------------------------------------------------------------
# nft forms not in the captures


@pytest.mark.parametrize(("text", "packet", "expected"), [
    ("accept", tcp(), True),
    ("", udp(1), True),
    ("tcp flags == syn accept", tcp(flags="S"), True),
    ("tcp flags == syn accept", tcp(flags="SA"), False),
    ("tcp flags & (syn|ack) == syn drop", tcp(flags="SA"), False),
    ("tcp flags & (syn|ack) == syn drop", tcp(flags="S"), True),
    ("tcp flags ! syn,ack drop", tcp(flags="F"), True),
    ("tcp flags { syn, syn|ack } accept", tcp(flags="SA"), True),
    ("tcp dport < 1024 accept", tcp(22), True),
    ("tcp dport >= 1024 accept", tcp(22), False),
    ("ip saddr 192.0.2.1-192.0.2.10 accept", tcp(), True),
    ("ip saddr != { 192.0.2.9, 10.0.0.0/8 } accept", tcp(), False),
    ("ip daddr . tcp dport { 192.0.2.1 . 8080 } accept", tcp(), None),
    ('iif "lo" accept', tcp(iif="lo"), True),
    ("iif 3 accept", tcp(iif="lo"), None),
    ('oifname { "eth0", "wg*" } accept', dataclasses.replace(tcp(), oif="wg1"), True),
    ("meta l4proto { tcp, udp } accept", ping(), False),
    ("meta nfproto ipv4 accept", tcp(src="2001:db8::9"), False),
    ("ct original ip saddr 1.2.3.4 accept", tcp(), None),
    ("ct status dnat accept", tcp(), None),
    ("limit rate over 10/second drop", tcp(), None),
    ("limit rate 1 mbytes/second burst 5 packets accept", tcp(), True),
    ("log prefix \"x\" level warn flags tcp sequence,options counter accept", tcp(), True),
    ("quota over 10 mbytes drop", tcp(), None),
    ('xt match "recent" counter drop', tcp(), None),
    ('xt match "recent" tcp dport 22 counter drop', tcp(), None),  # stops at what it cannot follow
    ("tcp dport 22 xt match \"recent\" drop", tcp(), False),  # ...but a known miss before it counts
    ("icmpv6 type { echo-request, nd-neighbor-solicit } accept", ping("2001:db8::9"), True),
    ("icmp code 0 accept", tcp(), False),
    ("ether type arp accept", tcp(), None),
])
def test_nft_forms(text: str, packet: PacketFacts, expected: Optional[bool]) -> None:
    assert rule_matches(nft(text), packet) is expected


def test_family_of_the_table_decides_first() -> None:
    assert rule_matches(nft("accept", "ip6"), tcp()) is False
    assert rule_matches(nft("accept", "ip6"), tcp(src="2001:db8::9")) is True
    assert rule_matches(nft("accept", "arp"), tcp()) is False
    assert rule_matches(nft("accept", "bridge"), tcp()) is True
    assert rule_matches(nft("accept", "unheard-of"), tcp()) is None
    assert rule_matches(ipt("-A INPUT -j ACCEPT", "ip6"), tcp()) is False


# ---------------------------------------------------------------------------------------------
# rule_action and ipt_spec


@pytest.mark.parametrize(("rule", "action"), [
    (ipt("-A INPUT -p tcp -m tcp --dport 22 -j fail2ban-SSH"), "jump fail2ban-SSH"),
    (ipt("-A INPUT -g LOGDROP"), "goto LOGDROP"),
    (ipt("-A INPUT -j REJECT --reject-with icmp-host-prohibited"), "reject"),
    (ipt("-A INPUT -m limit --limit 5/min -j LOG --log-prefix \"in: \""), "continue"),
    (ipt("-A INPUT -m comment --comment \"-j DROP\""), "continue"),
    (ipt("-A INPUT -j NFQUEUE --queue-num 1"), "other"),
    (ipt("-A POSTROUTING -o eth0 -j MASQUERADE"), "masquerade"),
    (nft("tcp dport 2222 redirect to :22"), "redirect"),
    (nft("udp sport 53 ct state new counter reject with icmpx admin-prohibited"), "reject"),
    (nft('xt target "REJECT"'), "reject"),
    (nft('xt target "LOG"'), "continue"),
    (nft("ct status dnat accept"), "accept"),
    (nft("ct status dnat counter"), "continue"),
    (nft('log prefix "drop accept" counter'), "continue"),
    (nft("tcp dport vmap { 22 : accept, 23 : drop }"), "other"),
    (nft("tcp dport 1235 goto empty"), "goto empty"),
    (nft("queue num 1"), "other"),
    (nft("return"), "return"),
    (nft("continue"), "continue"),
    (nft("ip daddr 10.0.0.1 dnat ip to 10.0.0.2"), "dnat"),
    (nft("ip saddr 10.1.0.0/16 snat to 192.0.2.1"), "snat"),
])
def test_rule_action(rule: Rule, action: str) -> None:
    assert rule_action(rule) == action


def test_rule_action_on_captured_native_rules() -> None:
    actions = {r.handle: rule_action(r) for r in NATIVE.rules() if r.family == "inet"}
    assert actions[11] == "accept" and actions[12] == "drop" and actions[23] == "other"
    assert actions[24] == "jump services" and actions[30] == "continue" and actions[31] == "continue"
    assert actions[34] == "goto empty" and actions[35] == "return"
    nat = [rule_action(r) for r in NATIVE.rules() if (r.family, r.table) == ("ip", "nat")]
    assert nat == ["dnat", "redirect", "masquerade", "snat"]


def test_ipt_spec() -> None:
    assert ipt_spec(seed_input(8)) == "-p tcp -m tcp --dport 8080 -j ACCEPT"
    assert ipt_spec(seed_input(7)) == "-j REJECT --reject-with icmp-host-prohibited"
    assert ipt_spec(native(11)) is None


def test_facts_from_spec() -> None:
    spec = PacketSpec(Proto.ICMP, a("2001:db8::2"), a("2001:db8::1"), 555, 1)
    facts = PacketFacts.from_spec(spec, iif="eth0", ct_state="new")
    assert (facts.family, facts.icmp_type, facts.iif, facts.oif) == (6, 128, "eth0", None)
    assert rule_matches(native(21), facts) is True


# ---------------------------------------------------------------------------------------------
# Never raise

WORDS = ["ip", "ip6", "saddr", "daddr", "tcp", "udp", "th", "dport", "sport", "flags", "meta",
         "l4proto", "nfproto", "iifname", "oif", "ct", "state", "icmp", "icmpv6", "type", "{", "}",
         ",", "!=", "==", "<", "!", "&", "/", "(syn|ack)", "syn", "@s", ".", "vmap", "counter",
         "packets", "log", "prefix", "flags", "limit", "rate", "over", "comment", '"x', '"eth*"',
         "jump", "goto", "xt", "target", "match", "1-2", "10.0.0.0/33", "::1", "fe80::/10",
         "1.2.3.4-::1", "0x1f", "²", "-A", "INPUT", "-p", "-s", "-d", "-i", "-m", "tcp",
         "multiport", "--dports", "--tcp-flags", "--syn", "--icmp-type", "8/x", "--state",
         "--ctstate", "-j", "-g", "'", '"', "\\", "1:", ":", "9999999999999", "set", "burst"]

rules = st.builds(
    Rule,
    family=st.sampled_from(["ip", "ip6", "inet", "arp", "bridge", "netdev", "", "x"]),
    table=st.just("t"), chain=st.just("c"), number=st.just(1), handle=st.none(),
    text=st.one_of(st.text(), st.lists(st.sampled_from(WORDS)).map(" ".join)),
    ipt=st.one_of(st.none(), st.text(), st.lists(st.sampled_from(WORDS)).map(" ".join)),
)
packets = st.builds(
    PacketFacts,
    family=st.sampled_from([4, 6]), proto=st.sampled_from(list(Proto)),
    src=st.one_of(st.ip_addresses()), dst=st.ip_addresses(),
    sport=st.integers(0, 65535), dport=st.integers(0, 65535), tcp_flags=st.text(max_size=4),
    iif=st.one_of(st.none(), st.text(max_size=6)), oif=st.one_of(st.none(), st.text(max_size=6)),
    ct_state=st.one_of(st.none(), st.sampled_from(["new", "established", "x"])),
    icmp_type=st.one_of(st.none(), st.integers(0, 255)),
)


@settings(max_examples=1000)
@given(rules, packets)
def test_matcher_never_raises(rule: Rule, packet: PacketFacts) -> None:
    assert rule_matches(rule, packet) in (True, False, None)
    assert isinstance(rule_action(rule), str)
    spec = ipt_spec(rule)
    assert spec is None or isinstance(spec, str)
