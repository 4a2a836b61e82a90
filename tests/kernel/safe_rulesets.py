"""Rulesets of tools that ban, limit or restrict sources, laid out as the tools write them
(condensed from their sources), for tests/kernel/test_safe_fixes.py.

The client namespace is 192.0.2.2 (CLIENT4); OTHER4 is a second source on the same link that
every case must keep blocked unless a fix says it lets it in.
"""
from __future__ import annotations

import ipaddress

from tracer.cli.lab import BACKEND4, CLIENT4

OTHER4 = ipaddress.ip_address("192.0.2.3")

# ufw's /etc/ufw/before.rules + user.rules as iptables-restore loads them (ufw 0.36,
# src/backend_iptables.py): INPUT policy DROP, the before/user/after chains.
_UFW_HEAD = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ufw-after-input - [0:0]
:ufw-before-input - [0:0]
:ufw-not-local - [0:0]
:ufw-reject-input - [0:0]
:ufw-user-input - [0:0]
:ufw-user-limit - [0:0]
:ufw-user-limit-accept - [0:0]
-A INPUT -j ufw-before-input
-A INPUT -j ufw-after-input
-A INPUT -j ufw-reject-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-input -j ufw-not-local
-A ufw-before-input -j ufw-user-input
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -j DROP
-A ufw-user-limit -m limit --limit 3/min -j LOG --log-prefix "[UFW LIMIT BLOCK] "
-A ufw-user-limit -j REJECT --reject-with icmp-port-unreachable
-A ufw-user-limit-accept -j ACCEPT
"""

# `ufw limit 22/tcp` (user.rules: the --set rule, the --update jump into ufw-user-limit, the accept).
UFW_LIMIT = _UFW_HEAD + """-A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --set
-A ufw-user-input -p tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 -j ufw-user-limit
-A ufw-user-input -p tcp --dport 22 -j ufw-user-limit-accept
COMMIT
"""

# `ufw deny from 192.0.2.0/24` then `ufw allow 443/tcp`.
UFW_DENY = _UFW_HEAD + """-A ufw-user-input -s 192.0.2.0/24 -j DROP
-A ufw-user-input -p tcp --dport 443 -j ACCEPT
COMMIT
"""

# firewalld 1.x, nftables backend (src/firewall/core/nftables.py): zone public with target DROP
# (a final `drop` in filter_IN_public) and a rich rule accepting 8443 from 203.0.113.0/24 only.
FIREWALLD_DROP = """table inet firewalld {
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
		drop
	}
	chain filter_IN_public_pre {
	}
	chain filter_IN_public_log {
	}
	chain filter_IN_public_deny {
	}
	chain filter_IN_public_allow {
		tcp dport 22 accept
		ip saddr 203.0.113.0/24 tcp dport 8443 ct state { new, untracked } accept
	}
	chain filter_IN_public_post {
	}
}
"""

# The nftables wiki's ssh meter (Meters page), in the set form nft 1.0 writes it.
NFT_METER = """table inet filter {
	set ratelimit {
		type ipv4_addr
		size 65535
		flags dynamic,timeout
		timeout 1m
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		ct state new tcp dport 22 update @ratelimit { ip saddr limit rate 3/minute burst 2 packets } accept
	}
}
"""

# A global flood limit: `limit rate over` drops what exceeds it, for all clients together.
NFT_LIMIT_OVER = """table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		tcp dport 80 ct state new limit rate over 1/minute burst 1 packets drop
		tcp dport 80 accept
	}
}
"""

# A port-scan trap's dynamic ban set with a timeout (the client was added by the trap).
NFT_DYNSET = """table inet filter {
	set banned {
		type ipv4_addr
		flags dynamic,timeout
		timeout 10m
	}
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ip saddr @banned drop
		tcp dport 23 add @banned { ip saddr } drop
		tcp dport 22 accept
	}
}
"""

# The classic xt_recent ssh lockout (iptables-extensions(8), `recent`).
XT_RECENT = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -m recent --set --name SSH --mask 255.255.255.255 --rsource
-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -m recent --update --seconds 60 --hitcount 4 --name SSH --mask 255.255.255.255 --rsource -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""

# fail2ban's iptables-multiport action (action.d/iptables-multiport.conf, iptables.conf):
# chain f2b-sshd, jumped from INPUT for the jail's ports, one REJECT per banned address.
FAIL2BAN = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:f2b-sshd - [0:0]
-A INPUT -p tcp -m multiport --dports 22 -j f2b-sshd
-A f2b-sshd -s {CLIENT4}/32 -j REJECT --reject-with icmp-port-unreachable
-A f2b-sshd -j RETURN
COMMIT
"""

# The CrowdSec firewall bouncer, nftables mode (pkg/nftables: table ip crowdsec, set
# crowdsec-blacklists with timeouts, a chain on the input hook).
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

# sshguard's nft backend (src/fw/sshg-fw-nft-sets.in): table ip sshguard, set attackers (an
# interval set: it blocks whole subnets, IPV4_SUBNET), chain blacklist on the input hook.
SSHGUARD = """table ip sshguard {
	set attackers {
		type ipv4_addr
		flags interval
		elements = { 192.0.2.0/24 }
	}
	chain blacklist {
		type filter hook input priority filter - 10; policy accept;
		ip saddr @attackers drop
	}
}
"""

# A country block with ipset (hash:net), then the service's accept.
IPSET_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m set --match-set country-block src -j DROP
-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""

# Docker 28 with the published port 8080 -> 198.51.100.2:80 accepted in DOCKER, and the
# allowlist Docker's documentation shows for DOCKER-USER (`! -s RANGE -j DROP`).
DOCKER_ALLOW = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
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
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER -d {BACKEND4}/32 ! -i eth1 -o eth1 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER ! -i eth1 -o eth1 -j DROP
-A DOCKER-BRIDGE -o eth1 -j DOCKER
-A DOCKER-CT -o eth1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i eth1 -j ACCEPT
-A DOCKER-USER -i eth0 ! -s 192.0.2.128/25 -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"""
