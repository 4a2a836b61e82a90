"""what-if's translation of owner commands (tracer/plan/ownercmd.py, owner_ufw.py, owner_firewalld.py):
ufw's and firewalld's rules as their sources write them, on the layouts of tests/kernel/test_owners.py
and the captured firewalld 2.x listing (tests/data/nft-list-firewalld.txt)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.kernel.test_owners import FIREWALLD, UFW
from tracer.errors import UsageError
from tracer.plan import ownercmd, owner_ufw
from tracer.plan.ownerrules import Target

DATA = Path(__file__).resolve().parent.parent / "data"
UFW = UFW.replace(":ufw-user-input - [0:0]\n", ":ufw-user-input - [0:0]\n:ufw-user-output - [0:0]\n")  # ufw's user.rules has it
UFW6 = UFW.replace("ufw-", "ufw6-")


def rules(argv: list[str], target: Target) -> tuple[str, ...]:
    return ownercmd.translate(ownercmd.parse(argv), target).rules


@pytest.mark.parametrize("argv,want", [
    (["ufw", "allow", "8443/tcp"], ["-A ufw-user-input -p tcp --dport 8443 -j ACCEPT"]),
    (["ufw", "allow", "22"], ["-A ufw-user-input -p tcp --dport 22 -j ACCEPT", "-A ufw-user-input -p udp --dport 22 -j ACCEPT"]),
    (["ufw", "deny", "from", "1.2.3.4"], ["-A ufw-user-input -s 1.2.3.4 -j DROP"]),
    (["ufw", "allow", "from", "192.0.2.2/32", "to", "any", "port", "8443", "proto", "tcp"],
     ["-A ufw-user-input -p tcp --dport 8443 -s 192.0.2.2 -j ACCEPT"]),
    (["ufw", "reject", "in", "on", "eth0", "to", "192.0.2.1", "port", "80"],
     ["-A ufw-user-input -i eth0 -p tcp -d 192.0.2.1 --dport 80 -j REJECT --reject-with tcp-reset",
      "-A ufw-user-input -i eth0 -p udp -d 192.0.2.1 --dport 80 -j REJECT"]),
    (["ufw", "allow", "80,443/tcp"], ["-A ufw-user-input -p tcp -m multiport --dports 80,443 -j ACCEPT"]),
    (["ufw", "allow", "out", "53/udp"], ["-A ufw-user-output -p udp --dport 53 -j ACCEPT"]),
    (["ufw", "allow", "from", "10.0.0.5/8"], ["-A ufw-user-input -s 10.0.0.0/8 -j ACCEPT"]),  # ufw normalizes
])
def test_ufw_rules_as_ufw_writes_them(argv: list[str], want: list[str]) -> None:
    assert rules(argv, Target(ipt4=UFW)) == tuple(f"iptables-nft {w}" for w in want)


def test_ufw_limit_insert_delete_and_v6() -> None:
    got = rules(["ufw", "limit", "22/tcp"], Target(ipt4=UFW, ipt4_tool="iptables-legacy"))
    assert got[-3:] == ("iptables-legacy -A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --set",
                        "iptables-legacy -A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --update "
                        "--seconds 30 --hitcount 6 -j ufw-user-limit",
                        "iptables-legacy -A ufw-user-input -p tcp --dport 22 -j ufw-user-limit-accept")
    assert "iptables-legacy -N ufw-user-limit" in got  # the condensed layout has no limit chains
    assert rules(["ufw", "insert", "1", "deny", "from", "1.2.3.4"], Target(ipt4=UFW)) == \
        ("iptables-nft -I ufw-user-input 1 -s 1.2.3.4 -j DROP",)
    tr = ownercmd.translate(ownercmd.parse(["ufw", "delete", "allow", "22/tcp"]), Target(ipt4=UFW))
    assert tr.steps[0].argv == ("iptables-nft", "-D", "ufw-user-input", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    assert tr.steps[0].check[1] == "-C" and "non-existent" in tr.steps[0].absent
    both = rules(["ufw", "allow", "8443/tcp"], Target(ipt4=UFW, ipt6=UFW6))
    assert both == ("iptables-nft -A ufw-user-input -p tcp --dport 8443 -j ACCEPT",
                    "ip6tables-nft -A ufw6-user-input -p tcp --dport 8443 -j ACCEPT")
    assert rules(["ufw", "allow", "from", "2001:db8::/32"], Target(ipt4=UFW, ipt6=UFW6)) == \
        ("ip6tables-nft -A ufw6-user-input -s 2001:db8::/32 -j ACCEPT",)
    tr = ownercmd.translate(ownercmd.parse(["ufw", "allow", "8443/tcp"]), Target(ipt4=UFW))
    assert "### tuple ### allow tcp 8443 0.0.0.0/0 any 0.0.0.0/0 in" in tr.notes[0]


def test_ufw_rule_numbers_group_a_rules_lines() -> None:
    lines = ["-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT", "-A ufw-user-input -p udp -m udp --dport 22 -j ACCEPT",
             "-A ufw-user-input -p tcp --dport 80 -m conntrack --ctstate NEW -m recent --set",
             "-A ufw-user-input -p tcp --dport 80 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 -j ufw-user-limit",
             "-A ufw-user-input -p tcp --dport 80 -j ufw-user-limit-accept", "-A ufw-user-input -s 1.2.3.4 -j DROP"]
    assert owner_ufw.tuples(lines, "ufw") == [0, 2, 5]
    save = UFW.replace("-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT\n", "".join(x + "\n" for x in lines))
    assert rules(["ufw", "insert", "3", "allow", "8443/tcp"], Target(ipt4=save)) == \
        ("iptables-nft -I ufw-user-input 6 -p tcp --dport 8443 -j ACCEPT",)
    with pytest.raises(UsageError, match="Invalid position '9'"):
        rules(["ufw", "insert", "9", "allow", "8443/tcp"], Target(ipt4=save))


def test_firewalld_rules_as_firewalld_writes_them() -> None:
    t = Target(nft=FIREWALLD)
    assert rules(["firewall-cmd", "--add-port=8443/tcp"], t) == \
        ("nft add rule inet firewalld filter_IN_public_allow tcp dport 8443 accept",)
    rich = "rule family=ipv4 source address=192.0.2.2 port port=8443 protocol=tcp accept"
    assert rules(["firewall-cmd", "--zone=public", f"--add-rich-rule={rich}"], t) == \
        ("nft add rule inet firewalld filter_IN_public_allow meta nfproto ipv4 ip saddr 192.0.2.2 tcp dport 8443 accept",)
    assert rules(["firewall-cmd", "--add-rich-rule", "rule source address=198.51.100.0/24 drop"], t) == \
        ("nft add rule inet firewalld filter_IN_public_deny meta nfproto ipv4 ip saddr 198.51.100.0/24 drop",)
    assert rules(["firewall-cmd", "--add-source=10.0.0.0/8"], t) == \
        ("nft insert rule inet firewalld filter_INPUT_ZONES ip saddr 10.0.0.0/8 goto filter_IN_public",)
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--remove-port=22/tcp"]), t)
    assert tr.steps[0].nft_delete == ("filter_IN_public_allow", "tcp dport 22 accept")
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--permanent", "--add-port=1/udp"]), t)
    assert any("--reload" in n for n in tr.notes) and tr.rules
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--reload"]), t)
    assert tr.steps == () and "nothing applied" in tr.notes[0]


def test_firewalld_services_from_the_target_or_the_stock_table() -> None:
    xml = '<service><port protocol="udp" port="546"/><destination ipv6="fe80::/64"/></service>'
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--add-service=dhcpv6-client"]),
                            Target(nft=FIREWALLD, services={"dhcpv6-client": xml}))
    assert tr.rules == ("nft add rule inet firewalld filter_IN_public_allow ip6 daddr fe80::/64 udp dport 546 accept",)
    assert any("the target's dhcpv6-client.xml" in n for n in tr.notes)
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--add-service=dns"]), Target(nft=FIREWALLD))
    assert len(tr.rules) == 2 and any("stock definition" in n for n in tr.notes)
    with pytest.raises(UsageError, match="service nosuch"):
        rules(["firewall-cmd", "--add-service=nosuch"], Target(nft=FIREWALLD))


def test_firewalld_2x_layout_binds_a_source_with_the_zone_target() -> None:
    t = Target(nft=(DATA / "nft-list-firewalld.txt").read_text())
    tr = ownercmd.translate(ownercmd.parse(["firewall-cmd", "--zone=internal", "--add-source=192.0.2.0/24"]), t)
    assert tr.steps[0].input == ("insert rule inet firewalld filter_INPUT_POLICIES ip saddr 192.0.2.0/24 reject with "
                                 "icmpx admin-prohibited\ninsert rule inet firewalld filter_INPUT_POLICIES ip saddr "
                                 "192.0.2.0/24 jump filter_IN_internal\n")
    assert rules(["firewall-cmd", "--add-port=8443/tcp"], t) == \
        ("nft add rule inet firewalld filter_IN_public_allow tcp dport 8443 accept",)  # the default zone


@pytest.mark.parametrize("argv,named", [
    (["ufw", "allow", "OpenSSH"], "OpenSSH"), (["ufw", "route", "allow", "22"], "route"),
    (["ufw", "delete", "3"], "delete NUM"), (["ufw", "--dry-run", "allow", "22"], "--dry-run"),
    (["ufw", "allow", "proto", "esp", "from", "1.2.3.4"], "esp"), (["ufw", "allow", "80,443"], "multiple ports"),
    (["ufw", "allow", "log", "22/tcp"], "log"), (["ufw", "allow", "from", "nonsense"], "nonsense"),
    (["firewall-cmd", "--add-masquerade"], "--add-masquerade"), (["firewall-cmd", "--add-port=80"], "80"),
    (["firewall-cmd", "--add-rich-rule=rule service name=ssh log prefix=x accept"], "log"),
    (["firewall-cmd", "--add-rich-rule=rule family=ipv6 source address=10.0.0.1 accept"], "not ipv6"),
    (["firewall-cmd", "--zone=public"], "no change"),
])
def test_unsupported_owner_commands_are_named(argv: list[str], named: str) -> None:
    with pytest.raises(UsageError) as e:
        ownercmd.parse(argv)
    assert named in e.value.message and e.value.hint


def test_refused_without_the_owner_s_layout() -> None:
    with pytest.raises(UsageError, match="no ufw chains"):
        rules(["ufw", "allow", "22"], Target(nft=FIREWALLD))
    with pytest.raises(UsageError, match="no `table inet firewalld`"):
        rules(["firewall-cmd", "--add-port=22/tcp"], Target(ipt4=UFW))
    with pytest.raises(UsageError, match="no zone dmz .*zones there: public"):
        rules(["firewall-cmd", "--zone=dmz", "--add-port=22/tcp"], Target(nft=FIREWALLD))
    with pytest.raises(UsageError, match="no ufw6-user-input"):
        rules(["ufw", "allow", "from", "2001:db8::1"], Target(ipt4=UFW))
