"""The catch-all classifier (tracer.ruleset.match.scope) over iptables matches and nft expressions."""
from __future__ import annotations

import pytest

from tracer.ruleset.match.scope import is_catch_all, narrowings
from tracer.model import Rule


def ipt(line: str) -> Rule:
    return Rule("ip", "filter", "INPUT", 1, None, "", line)


def nft(text: str) -> Rule:
    return Rule("inet", "fw", "input", 1, 3, text)


CATCH_ALL = [
    ipt("-A INPUT -j REJECT --reject-with icmp-host-prohibited"),
    ipt("-A INPUT -p tcp -m tcp --dport 22 -j DROP"),
    ipt("-A INPUT -i eth0 -p tcp -m multiport --dports 22,80 -j DROP"),
    ipt("-A INPUT ! -i lo -j DROP"),
    ipt("-A INPUT -p tcp -m state --state NEW -m tcp --dport 8080 -j REJECT"),
    ipt("-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment \"no new\" -j DROP"),
    nft("reject"),
    nft("counter packets 3 bytes 180 drop"),
    nft("tcp dport { 22, 80 } ct state new counter drop"),
    nft('iifname "eth0" tcp dport 80 drop'),
    nft('iifname != "lo" drop'),
    nft("meta l4proto tcp th dport 22 log prefix \"x \" drop"),
    nft("tcp flags syn / syn,ack drop"),
    nft("meta nfproto ipv4 icmp type echo-request drop"),
]

TARGETED = [
    # the kernel selftests' port-shadowing mitigation (nft_nat.sh): one client source port dropped
    (ipt("-A FORWARD -p udp -m udp --sport 1405 -j DROP"), "sport"),
    (ipt("-A INPUT -p tcp -m multiport --sports 5555,5556 -j DROP"), "sport"),
    (nft("udp sport 1405 drop"), "sport"),
    (nft("meta l4proto tcp th sport != 1024-65535 drop"), "sport"),
    (ipt("-A INPUT -s 203.0.113.0/24 -j DROP"), "source"),
    (ipt("-A INPUT ! -s 10.0.0.0/8 -p tcp --dport 22 -j DROP"), "source"),
    (ipt("-A INPUT -d 192.0.2.1/32 -j DROP"), "destination"),
    (ipt("-A INPUT -m set --match-set banned src -j DROP"), "set"),
    (ipt("-A INPUT -p tcp -m tcp --dport 22 -m recent --update --seconds 60 --hitcount 4 --name SSH --rsource -j DROP"),
     "recent"),
    (ipt("-A INPUT -m limit --limit 5/min -j DROP"), "limit"),
    (ipt("-A INPUT -p tcp -m hashlimit --hashlimit-above 10/sec --hashlimit-name x -j DROP"), "hashlimit"),
    (ipt("-A INPUT -p tcp --syn -m connlimit --connlimit-above 3 -j REJECT"), "connlimit"),
    (ipt("-A INPUT -m time --timestart 18:00 --timestop 08:00 -j DROP"), "time"),
    (ipt("-A INPUT -m string --algo bm --string evil -j DROP"), "string"),
    (ipt("-A INPUT -m mark --mark 0x1 -j DROP"), "mark"),
    (ipt("-A INPUT -i eth1 -j DROP"), "interface"),
    (ipt("-A INPUT -m conntrack --ctstate INVALID -j DROP"), "ct-state"),
    (ipt("-A INPUT -m iprange --src-range 10.0.0.1-10.0.0.9 -j DROP"), "source"),
    (ipt("-A INPUT -m socket -j DROP"), "unknown"),
    (ipt("-A INPUT -m u32 --u32 \"0>>22&0x3C@12>>26&0x3F=0\" -j DROP"), "unknown"),
    (nft("ip saddr 203.0.113.0/24 drop"), "source"),
    (nft("ip daddr 192.0.2.1 drop"), "destination"),
    (nft("ip saddr @banned counter packets 0 bytes 0 drop"), "set"),
    (nft("ip saddr . tcp dport @blocked drop"), "set"),
    (nft("tcp dport 22 ct state new limit rate over 3/minute burst 5 packets drop"), "limit"),
    (nft("tcp dport 22 update @ssh { ip saddr limit rate over 3/minute } drop"), "hashlimit"),
    (nft("ct count over 3 drop"), "connlimit"),
    (nft("meta mark 0x00000001 drop"), "mark"),
    (nft('meta hour "08:00"-"17:00" drop'), "time"),
    (nft('iifname "eth1" drop'), "interface"),
    (nft("ct state invalid drop"), "ct-state"),
    (nft("ct state untracked drop"), "ct-state"),
    (nft("fib daddr type local drop"), "unknown"),
    (nft("ether saddr 00:11:22:33:44:55 drop"), "source"),
]


@pytest.mark.parametrize("rule", CATCH_ALL, ids=lambda r: r.display)
def test_catch_all(rule: Rule) -> None:
    assert is_catch_all(rule, "eth0"), narrowings(rule, "eth0")


@pytest.mark.parametrize("rule,kind", TARGETED, ids=lambda x: x.display if isinstance(x, Rule) else x)
def test_targeted(rule: Rule, kind: str) -> None:
    found = narrowings(rule, "eth0")
    assert found and found[0].kind == kind, found


def test_interface_depends_on_arrival() -> None:
    r = ipt("-A INPUT -i eth0 -j DROP")
    assert is_catch_all(r, "eth0") and not is_catch_all(r, "eth1") and not is_catch_all(r, None)


def test_recent_details() -> None:
    [n] = narrowings(ipt("-A INPUT -m recent --rcheck --seconds 300 --hitcount 10 --name ssh_bf -j DROP"), "eth0")
    assert (n.kind, n.name, n.seconds, n.hitcount) == ("recent", "ssh_bf", 300, 10)
    [d] = narrowings(ipt("-A INPUT -m recent --update -j DROP"), "eth0")
    assert (d.name, d.seconds) == ("DEFAULT", None)


def test_set_details() -> None:
    [n] = narrowings(ipt("-A INPUT -m set ! --match-set allow src,dst -j DROP"), "eth0")
    assert (n.kind, n.name, n.negated, n.direction) == ("set", "allow", True, "src,dst")
    [m] = narrowings(nft("ip daddr != @ours drop"), "eth0")
    assert (m.kind, m.name, m.negated, m.direction) == ("set", "ours", True, "dst")
