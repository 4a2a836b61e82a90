"""Intent and client-scoped fixes (tracer/diagnose/safe.py), and the second-source narrowing of
--prove-fix (tracer/plan/narrow.py): pure, on hand-built timelines."""
from __future__ import annotations

import ipaddress

from tracer import diagnose
from tracer.diagnose.safe import holding_element, set_expiry
from tracer.model import (
    Backend,
    Chain,
    EventKind,
    PacketResult,
    PacketSpec,
    Proto,
    Reply,
    Rule,
    RuleRef,
    Ruleset,
    Step,
    Table,
    TraceEvent,
    Verdict,
)
from tracer.plan.narrow import narrow

CLIENT = ipaddress.ip_address("203.0.113.5")
SERVER = ipaddress.ip_address("192.0.2.1")
OTHER = ipaddress.ip_address("203.0.113.6")


def test_the_element_that_holds_the_client() -> None:
    elems = ("10.0.0.0/8", "203.0.113.0/24", "198.51.100.1-198.51.100.9")
    assert holding_element(elems, "203.0.113.5") == "203.0.113.0/24"
    assert holding_element(elems, "198.51.100.4") == "198.51.100.1-198.51.100.9"
    assert holding_element(elems, "192.0.2.9") is None


LISTING = """table inet filter {
	set banned {
		type ipv4_addr
		flags dynamic,timeout
		timeout 10m
		elements = { 203.0.113.5 timeout 5m expires 4m12s }
	}
	set fixed {
		type ipv4_addr
		elements = { 203.0.113.0/24 }
	}
}
"""


def test_set_expiry_as_the_listing_says() -> None:
    assert set_expiry(LISTING, "inet", "filter", "banned", "203.0.113.5") == "the entry expires in 4m12s"
    assert set_expiry(LISTING, "inet", "filter", "banned", None) == "entries time out after 10m"
    assert set_expiry(LISTING, "inet", "filter", "fixed", "203.0.113.0/24") == \
        "the entry does not expire (the set has no timeout)"
    assert set_expiry(None, "inet", "filter", "fixed", None) is None


def _ufw_limit() -> PacketResult:
    """ufw limit: the xt_recent condition is on the jump, the REJECT in the jumped-to chain is a catch-all."""
    jump = Rule("ip", "filter", "ufw-user-input", 2, None, "",
                "-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 "
                "--hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j ufw-user-limit")
    reject = Rule("ip", "filter", "ufw-user-limit", 1, None, "", "-A ufw-user-limit -j REJECT --reject-with icmp-port-unreachable")
    spec = PacketSpec(Proto.TCP, CLIENT, SERVER, 40000, 22, "S", 1)
    ev1 = TraceEvent(1, EventKind.RULE, "ip", "filter", "ufw-user-input", verdict="jump ufw-user-limit", iif="eth0")
    ev2 = TraceEvent(1, EventKind.RULE, "ip", "filter", "ufw-user-limit", verdict="drop", iif="eth0")
    ref = RuleRef("ip", "filter", "ufw-user-limit", reject, None, Backend.IPTABLES_NFT)
    return PacketResult(spec, Verdict.REJECT, ref, Reply("icmp 3/3 port-unreachable"), (Step(ev1, jump), Step(ev2, reject)),
                        ("prerouting", "input"))


def test_a_limit_on_the_jump_makes_it_rate_limited_with_a_client_exemption_first() -> None:
    r = _ufw_limit()
    chains = (Chain("ip", "filter", "ufw-user-input", rules=(r.steps[0].rule,)),  # type: ignore[arg-type]
              Chain("ip", "filter", "ufw-user-limit", rules=(r.steps[1].rule,)))  # type: ignore[arg-type]
    ruleset = Ruleset((Table("ip", "filter", chains, Backend.IPTABLES_NFT),))
    [f] = diagnose.diagnose(r, diagnose.Context(ruleset, (), local=False, mode="ingress", via="eth0"))
    assert (f.code, f.intent, f.scope) == ("rate-limited", "limit", "client")
    assert "6 or more new connections from one address within 30 s" in f.message
    assert f.fixes[0].owner == "ufw"
    assert f.commands == (f"ufw insert 1 allow from {CLIENT} to any port 22 proto tcp",
                          f"iptables -I ufw-user-input 2 -s {CLIENT}/32 -p tcp --dport 22 -j ACCEPT",
                          f"echo -{CLIENT} > /proc/net/xt_recent/DEFAULT")
    assert f.fixes[0].lets_in == f"lets in only {CLIENT} to tcp/22"
    assert all(x.scope == "client" for x in f.fixes)


def test_second_source_narrowing_keeps_the_fix_own_source() -> None:
    n = narrow(f"iptables -I INPUT 3 -s {CLIENT}/32 -p tcp --dport 22 -j ACCEPT", OTHER, 40001, Proto.TCP, "abcd1234",
               None, keep_source=True)
    assert n is not None and n.argv[n.argv.index("-s") + 1] == f"{CLIENT}/32" and str(OTHER) not in " ".join(n.argv)
    assert "--sport" in n.argv and "40001" in n.argv
    m = narrow(f"nft insert rule inet fw input position 5 ip saddr {CLIENT} tcp dport 22 accept", OTHER, 40001, Proto.TCP,
               "abcd1234", None, keep_source=True)
    assert m is not None and m.argv[-1].startswith(f"tcp sport 40001 ip saddr {CLIENT} tcp dport 22 accept")
    # a fix without a source of its own is not tried from a second source (it would let it in by design)
    assert narrow("iptables -I INPUT 3 -p tcp --dport 22 -j ACCEPT", OTHER, 40001, Proto.TCP, "abcd1234", None,
                  keep_source=True) is None


def test_a_firewalld_policy_is_named_with_policy_not_zone() -> None:
    """firewalld's policies (chains filter_IN_policy_NAME_deny) take --policy=NAME: no zone policy_NAME exists."""
    from tracer.diagnose import owners

    deny = Rule("inet", "firewalld", "filter_IN_policy_allow-host_deny", 1, 7, "tcp dport 8080 reject")
    spec = PacketSpec(Proto.TCP, CLIENT, SERVER, 40000, 8080, "S", 1)
    ev = TraceEvent(1, EventKind.RULE, "inet", "firewalld", deny.chain, verdict="drop", iif="eth0")
    r = PacketResult(spec, Verdict.REJECT, RuleRef("inet", "firewalld", deny.chain, deny), Reply("none"), (Step(ev, deny),),
                     ("prerouting", "input"))
    fix = owners.fix(r, "nft insert rule ...", str(SERVER), 8080)
    assert fix is not None and fix.commands[0] == "firewall-cmd --policy=allow-host --add-port=8080/tcp"


def test_a_firewalld_deny_rule_gets_a_priority_minus_one_exemption_for_the_client() -> None:
    deny = Rule("inet", "firewalld", "filter_IN_policy_allow-host_deny", 1, 7, "tcp dport 8080 reject")
    spec = PacketSpec(Proto.TCP, CLIENT, SERVER, 40000, 8080, "S", 1)
    ev = TraceEvent(1, EventKind.RULE, "inet", "firewalld", deny.chain, verdict="drop", iif="eth0")
    r = PacketResult(spec, Verdict.REJECT, RuleRef("inet", "firewalld", deny.chain, deny), Reply("none"), (Step(ev, deny),),
                     ("prerouting", "input"))
    ruleset = Ruleset((Table("inet", "firewalld", (Chain("inet", "firewalld", deny.chain, rules=(deny,)),)),))
    [f] = [f for f in diagnose.diagnose(r, diagnose.Context(ruleset, (), local=False, mode="ingress", via="eth0"))
           if f.code == "blocked-by-rule"]
    assert (f.intent, f.scope) == ("restricted", "client") and "deliberately" in f.message
    assert f.commands[0] == ("firewall-cmd --policy=allow-host --add-rich-rule='rule priority=\"-1\" family=\"ipv4\" "
                             f"source address=\"{CLIENT}\" port port=\"8080\" protocol=\"tcp\" accept'")
    assert f.commands[2] == f"nft insert rule inet firewalld {deny.chain} position 7 ip saddr {CLIENT} tcp dport 8080 accept"
