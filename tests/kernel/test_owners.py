"""Ownership on the real kernel: rulesets loaded as each manager writes them (the chain, table,
set and comment names of Docker, ufw, firewalld, fail2ban, kube-proxy and CrowdSec, condensed from
their sources), probed, and the fix checked in the owner's own terms with the raw command beside it.
"""
from __future__ import annotations

from typing import Any

import structlog

from tracer.cli.lab import BACKEND4, CLIENT4, SERVER4, Lab
from tracer.model import ProbeRequest, Proto
from tracer.pipeline.driver import Run
from tracer.report.outcome import ProbeReport
from tracer.render import jsondoc, terminal

log = structlog.get_logger("test")

# Docker 28 on bridge eth1 (the "container" is the backend namespace at 198.51.100.2), port 8080
# published to its port 80: nat DOCKER DNATs, filter FORWARD policy DROP, and the DOCKER chain
# has no ACCEPT for it (here: the container was recreated without -p, the DNAT left by a stale
# proxy rule) but Docker's own catch-all DROP for traffic routed into the bridge.
DOCKER = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 198.51.100.0/24 ! -o eth1 -j MASQUERADE
-A DOCKER -i eth1 -j RETURN
-A DOCKER ! -i eth1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {BACKEND4}:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i eth1 -o eth1 -j DROP
-A DOCKER-BRIDGE -o eth1 -j DOCKER
-A DOCKER-CT -o eth1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i eth1 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i eth1 ! -o eth1 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o eth1 -j DROP
COMMIT
"""

# ufw (iptables-restore of /etc/ufw/before.rules + user.rules, condensed): default deny incoming,
# `ufw allow 22/tcp` only.
UFW = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ufw-after-input - [0:0]
:ufw-after-logging-input - [0:0]
:ufw-before-input - [0:0]
:ufw-before-logging-input - [0:0]
:ufw-not-local - [0:0]
:ufw-reject-input - [0:0]
:ufw-skip-to-policy-input - [0:0]
:ufw-track-input - [0:0]
:ufw-user-input - [0:0]
-A INPUT -j ufw-before-logging-input
-A INPUT -j ufw-before-input
-A INPUT -j ufw-after-input
-A INPUT -j ufw-after-logging-input
-A INPUT -j ufw-reject-input
-A INPUT -j ufw-track-input
-A ufw-after-input -p udp -m udp --dport 137 -j ufw-skip-to-policy-input
-A ufw-after-input -p udp -m udp --dport 138 -j ufw-skip-to-policy-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-input -p udp -m udp --sport 67 --dport 68 -j ACCEPT
-A ufw-before-input -j ufw-not-local
-A ufw-before-input -j ufw-user-input
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN
-A ufw-not-local -m addrtype --dst-type BROADCAST -j RETURN
-A ufw-not-local -j DROP
-A ufw-skip-to-policy-input -j DROP
-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""

# firewalld 1.x, nftables backend, zone public on eth0 with ssh and cockpit (condensed).
FIREWALLD = """table inet firewalld {
	chain filter_INPUT {
		type filter hook input priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat accept
		iifname "lo" accept
		ct state invalid drop
		jump filter_INPUT_ZONES
		reject with icmpx admin-prohibited
	}
	chain filter_INPUT_ZONES {
		iifname "eth0" goto filter_IN_public
		goto filter_IN_public
	}
	chain filter_IN_public {
		jump filter_IN_public_pre
		jump filter_IN_public_log
		jump filter_IN_public_deny
		jump filter_IN_public_allow
		jump filter_IN_public_post
		meta l4proto { icmp, ipv6-icmp } accept
	}
	chain filter_IN_public_pre {
	}
	chain filter_IN_public_log {
	}
	chain filter_IN_public_deny {
	}
	chain filter_IN_public_allow {
		tcp dport 22 accept
		ip6 daddr fe80::/64 udp dport 546 accept
		tcp dport 9090 accept
	}
	chain filter_IN_public_post {
	}
}
"""

# fail2ban's nftables action (action.d/nftables.conf): its own table, a set per jail.
FAIL2BAN = f"""table inet f2b-table {{
	set addr-set-sshd {{
		type ipv4_addr
		elements = {{ {CLIENT4} }}
	}}
	chain f2b-chain {{
		type filter hook input priority filter - 1; policy accept;
		tcp dport {{ 22 }} ip saddr @addr-set-sshd reject
	}}
}}
"""

# kube-proxy, iptables mode: a NodePort Service whose Pods are all gone.
KUBE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
"""

# The CrowdSec firewall bouncer, nftables mode.
CROWDSEC = f"""table ip crowdsec {{
	set crowdsec-blacklists {{
		type ipv4_addr
		flags timeout
		elements = {{ {CLIENT4} timeout 4h }}
	}}
	chain crowdsec-chain {{
		type filter hook input priority filter - 10; policy accept;
		ip saddr @crowdsec-blacklists drop
	}}
}}
"""


def probe(lab: Lab, dport: int) -> ProbeReport:
    req = ProbeRequest(dport=dport, proto=Proto.TCP, netns=lab.server, from_netns=lab.client, dst=SERVER4, timeout=0.5)
    report = Run(req, log).execute()
    assert report.cleanup_ok and report.ruleset_unchanged
    return report


def owned(report: ProbeReport) -> Any:
    [r] = report.results
    fix = jsondoc.owner_fix(report, r)
    assert fix is not None, terminal.text(report)
    text = terminal.text(report)
    assert f"as {fix.owner.describe()} wants it: {fix.commands[0][:30]}" in " ".join(text.split())
    assert "raw fix" in text and max(len(line) for line in text.splitlines()) <= 80
    return fix


def test_docker_fix_is_a_docker_user_rule_and_it_works(router_lab: Lab) -> None:
    lab = router_lab
    assert lab.backend is not None
    lab.iptables_restore(lab.server, DOCKER)
    lab.listen(lab.backend, Proto.TCP, 80)
    report = probe(lab, 8080)
    fix = owned(report)
    assert fix.owner.key == "docker"
    assert fix.commands == (f"iptables -I DOCKER-USER -d {BACKEND4} -p tcp --dport 80 -j ACCEPT",)
    assert report.results[0].decided_by.chain == "DOCKER"
    lab.run(lab.server, fix.commands[0].split())
    after = probe(lab, 8080)
    assert after.reached and after.results[0].reply.kind == "syn-ack"


def test_ufw_policy_drop_is_ufws(lab: Lab) -> None:
    lab.iptables_restore(lab.server, UFW)
    report = probe(lab, 8080)
    fix = owned(report)
    assert fix.owner.key == "ufw" and fix.commands == ("ufw allow 8080/tcp",)
    assert report.results[0].decided_by.policy == "drop"
    doc = jsondoc.document(report)
    assert doc["packets"][0]["decided_by_owner"]["owner"] == "ufw"
    assert any(c["chain"] == "ip filter ufw-user-input" for c in doc["packets"][0]["chain_owners"])


def test_firewalld_fix_names_the_zone(lab: Lab) -> None:
    lab.nft(lab.server, FIREWALLD)
    report = probe(lab, 8080)
    fix = owned(report)
    assert (fix.owner.key, fix.owner.detail) == ("firewalld", "zone public")
    assert fix.commands == ("firewall-cmd --zone=public --add-port=8080/tcp",
                            "firewall-cmd --permanent --zone=public --add-port=8080/tcp")
    assert fix.raw and fix.raw.startswith("nft insert rule inet firewalld filter_INPUT")


def test_fail2ban_fix_unbans_the_client(lab: Lab) -> None:
    lab.nft(lab.server, FAIL2BAN)
    lab.listen(lab.server, Proto.TCP, 22)
    fix = owned(probe(lab, 22))
    assert (fix.owner.key, fix.owner.detail) == ("fail2ban", "jail sshd")
    assert fix.commands == (f"fail2ban-client set sshd unbanip {CLIENT4}",)


def test_kube_proxy_service_without_endpoints(lab: Lab) -> None:
    lab.iptables_restore(lab.server, KUBE)
    report = probe(lab, 30080)
    fix = owned(report)
    assert (fix.owner.key, fix.owner.detail) == ("kube-proxy", "Service default/web")
    assert "`kubectl get endpoints -n default web`" in fix.commands[0] and "has no endpoints" in fix.commands[0]
    assert report.results[0].reply.kind == "icmp 3/3 port-unreachable"


def test_crowdsec_fix_deletes_the_decision(lab: Lab) -> None:
    lab.nft(lab.server, CROWDSEC)
    fix = owned(probe(lab, 8080))
    assert fix.owner.key == "crowdsec" and fix.commands == (f"cscli decisions delete --ip {CLIENT4}",)
