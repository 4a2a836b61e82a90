"""More owners on the real kernel (issue 22): each manager's tables and chains loaded in the lab's
server namespace as that manager writes them (condensed from its source, named in each comment),
probed, and checked: the owner is named, the deciding rule is the owner's, and the first fix has
the owner's form and the right scope. Fixes runnable here are run, and the probe repeated.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
import structlog

from tracer.cli.lab import BACKEND4, CLIENT4, SERVER4, Lab
from tracer.model import ProbeRequest, Proto, Verdict
from tracer.pipeline import cmdcheck
from tracer.pipeline.driver import Run
from tracer.render import jsondoc, terminal

log = structlog.get_logger("test")

TS_CLIENT = ipaddress.ip_address("100.80.1.2")  # a CGNAT address (a carrier's NAT, another VPN) on eth0
TS_OTHER = ipaddress.ip_address("100.80.9.9")

# tailscale, iptables mode (util/linuxfw/iptables_runner.go: AddChains, AddHooks, addBase4 and
# AddLoopbackRule): the jumps at the top of INPUT/FORWARD, ts-input's CGNAT drop for every
# interface but tailscale0, after the ChromeOS range's RETURN.
TAILSCALE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ts-forward - [0:0]
:ts-input - [0:0]
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-input -s 100.101.102.103/32 -i lo -j ACCEPT
-A ts-input -s 100.115.92.0/23 ! -i tailscale0 -j RETURN
-A ts-input -s 100.64.0.0/10 ! -i tailscale0 -j DROP
-A ts-input -i tailscale0 -j ACCEPT
-A ts-forward -i tailscale0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -s 100.64.0.0/10 -o tailscale0 -j DROP
-A ts-forward -o tailscale0 -j ACCEPT
COMMIT
"""

# sshguard's nft backend (src/fw/sshg-fw-nft-sets.sh: fw_init, fw_block with IPV4_SUBNET=32):
# table ip sshguard, chain blacklist on input at priority -10, interval set attackers.
SSHGUARD_NFT = f"""table ip sshguard {{
	set attackers {{
		type ipv4_addr
		flags interval
		elements = {{ {CLIENT4} }}
	}}
	chain blacklist {{
		type filter hook input priority -10; policy accept;
		ip saddr @attackers drop
	}}
}}
"""

# sshguard's iptables backend (src/fw/sshg-fw-iptables.sh: fw_block inserts `-s ADDR/32 -j DROP`
# into the chain sshguard, which the admin jumps to from INPUT as sshguard-setup(7) says).
SSHGUARD_IPT = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:sshguard - [0:0]
-A INPUT -j sshguard
-A sshguard -s {CLIENT4}/32 -j DROP
COMMIT
"""

# The admin's port-forward to a guest (8080 -> the "guest" 198.51.100.2:80 on eth1, standing for
# virbr0), and libvirt's own chains (src/network/network_iptables.c: iptablesSetupPrivateChains,
# iptablesAddForwardAllowRelatedIn, iptablesAddForwardRejectOut/In, iptablesAddForwardAllowCross):
# LIBVIRT_FWI lets in only what relates to the guests' own connections.
LIBVIRT_IPT = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LIBVIRT_PRT - [0:0]
-A PREROUTING -d {SERVER4}/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {BACKEND4}:80
-A POSTROUTING -j LIBVIRT_PRT
-A LIBVIRT_PRT -s 198.51.100.0/24 ! -d 198.51.100.0/24 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:LIBVIRT_FWI - [0:0]
:LIBVIRT_FWO - [0:0]
:LIBVIRT_FWX - [0:0]
:LIBVIRT_INP - [0:0]
:LIBVIRT_OUT - [0:0]
-A INPUT -j LIBVIRT_INP
-A FORWARD -j LIBVIRT_FWX
-A FORWARD -j LIBVIRT_FWI
-A FORWARD -j LIBVIRT_FWO
-A OUTPUT -j LIBVIRT_OUT
-A LIBVIRT_FWI -d 198.51.100.0/24 -o eth1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A LIBVIRT_FWI -o eth1 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWO -s 198.51.100.0/24 -i eth1 -j ACCEPT
-A LIBVIRT_FWO -i eth1 -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWX -i eth1 -o eth1 -j ACCEPT
-A LIBVIRT_INP -i eth1 -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i eth1 -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o eth1 -p udp -m udp --dport 68 -j ACCEPT
COMMIT
"""

# libvirt >= 10 with the nftables backend (src/network/network_nftables.c: nftablesChains, the
# table's comment, nftablesAddForwardAllowRelatedIn, nftablesAddForwardRejectIn), the same
# port-forward in a table of the admin's.
LIBVIRT_NFT = f"""table ip portfwd {{
	chain pre {{
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr {SERVER4} tcp dport 8080 dnat to {BACKEND4}:80
	}}
}}
table ip libvirt_network {{
	comment "Managed by libvirt for virtual networks: https://libvirt.org/firewall.html#the-virtual-network-driver"
	chain forward {{
		type filter hook forward priority filter; policy accept;
		counter jump guest_cross
		counter jump guest_input
		counter jump guest_output
	}}
	chain guest_output {{
		ip saddr 198.51.100.0/24 iif "eth1" counter accept
		iif "eth1" counter reject
	}}
	chain guest_input {{
		oif "eth1" ip daddr 198.51.100.0/24 ct state established,related counter accept
		oif "eth1" counter reject
	}}
	chain guest_cross {{
		iif "eth1" oif "eth1" counter accept
	}}
	chain guest_nat {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 198.51.100.0/24 ip daddr != 198.51.100.0/24 counter masquerade
	}}
}}
"""


def _csf(deny: str) -> str:
    """CSF (csf.pl: the INPUT chain it builds, condensed; OUTPUT left open): lo, LOCALINPUT
    (ALLOWIN before DENYIN), established, the TCP_IN ports (22, 80), LOGDROPIN at the end; a
    csf.deny entry becomes `-A DENYIN -s ADDR ! -i lo -j DROP`."""
    return f"""*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ALLOWIN - [0:0]
:DENYIN - [0:0]
:LOCALINPUT - [0:0]
:LOGDROPIN - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT ! -i lo -j LOCALINPUT
-A INPUT ! -i lo -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT ! -i lo -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT
-A INPUT ! -i lo -p tcp -m conntrack --ctstate NEW -m tcp --dport 80 -j ACCEPT
-A INPUT ! -i lo -j LOGDROPIN
-A DENYIN -s {deny}/32 ! -i lo -j DROP
-A LOCALINPUT ! -i lo -j ALLOWIN
-A LOCALINPUT ! -i lo -j DENYIN
-A LOGDROPIN -p tcp -m limit --limit 30/min -j LOG --log-prefix "Firewall: *TCP_IN Blocked* "
-A LOGDROPIN -j DROP
COMMIT
"""


def _pve(extra: str) -> str:
    """The Proxmox VE host firewall (src/PVE/Firewall.pm: enable_host_firewall; host.fw's
    `IN ACCEPT` rules become RETURNs, then policy_in DROP through PVEFW-Drop), condensed."""
    return f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:PVEFW-Drop - [0:0]
:PVEFW-DropBroadcast - [0:0]
:PVEFW-HOST-IN - [0:0]
:PVEFW-INPUT - [0:0]
-A INPUT -j PVEFW-INPUT
-A PVEFW-INPUT -j PVEFW-HOST-IN
-A PVEFW-Drop -j PVEFW-DropBroadcast
-A PVEFW-Drop -m comment --comment "PVESIG:4XY8H6yfOpQqK5J7XqBYJmCtYwY"
-A PVEFW-DropBroadcast -m addrtype --dst-type BROADCAST -j DROP
-A PVEFW-HOST-IN -i lo -j ACCEPT
-A PVEFW-HOST-IN -m conntrack --ctstate INVALID -j DROP
-A PVEFW-HOST-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A PVEFW-HOST-IN -p igmp -j RETURN
-A PVEFW-HOST-IN -p tcp -m tcp --dport 22 -j RETURN
-A PVEFW-HOST-IN -p tcp -m tcp --dport 8006 -j RETURN
{extra}-A PVEFW-HOST-IN -j PVEFW-Drop
-A PVEFW-HOST-IN -j DROP
COMMIT
"""


def _pve_blacklist(lab: Lab) -> None:
    """cluster.fw's [IPSET blacklist] holding the client: the ipset PVEFW-0-blacklist-v4 (Firewall.pm:
    compute_ipset_chain_name), dropped in PVEFW-HOST-IN before the host's rules."""
    lab.run(lab.server, ["ipset", "create", "-exist", "PVEFW-0-blacklist-v4", "hash:net"])
    lab.run(lab.server, ["ipset", "add", "-exist", "PVEFW-0-blacklist-v4", str(CLIENT4)])
    lab.iptables_restore(lab.server, _pve("").replace(
        "-A PVEFW-HOST-IN -m conntrack --ctstate INVALID",
        "-A PVEFW-HOST-IN -m set --match-set PVEFW-0-blacklist-v4 src -j DROP\n-A PVEFW-HOST-IN -m conntrack --ctstate INVALID"))


# netavark, nftables driver (src/firewall/nft.rs: setup_network with IsolateOption::Strict, and
# setup_port_forward's DNAT for a container of network B published on 8080): the client's side
# stands for network A's bridge (eth0), the backend for network B's (eth1).
NETAVARK = f"""table inet netavark {{
	chain PREROUTING {{
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump NETAVARK-HOSTPORT-DNAT
	}}
	chain NETAVARK-HOSTPORT-DNAT {{
		tcp dport 8080 jump nv_2f259bab_198_51_100_0_nm24_dnat
	}}
	chain nv_2f259bab_198_51_100_0_nm24_dnat {{
		ip protocol tcp tcp dport 8080 dnat ip to {BACKEND4}:80
	}}
	chain FORWARD {{
		type filter hook forward priority filter; policy accept;
		ct state invalid drop
		jump NETAVARK-ISOLATION-1
	}}
	chain NETAVARK-ISOLATION-1 {{
		iifname "eth0" oifname != "eth0" jump NETAVARK-ISOLATION-3
	}}
	chain NETAVARK-ISOLATION-2 {{
	}}
	chain NETAVARK-ISOLATION-3 {{
		oifname "eth1" drop
		jump NETAVARK-ISOLATION-2
	}}
}}
"""


# Incus, a bridge network with an ACL attached (internal/server/firewall/drivers/
# drivers_nftables_templates.go: nftablesNetACLSetup and nftablesNetACLRules; the ACL's rules and
# its default ingress action, drop, as drivers_nftables.go renders them): eth0 stands for the
# network's bridge, the client for an instance on it, probing a service of the host.
INCUS = """table inet incus {
	chain aclin.eth0 {
		type filter hook input priority filter; policy accept;
		iifname "eth0" tcp dport 53 accept
		iifname "eth0" udp dport 53 accept
		iifname "eth0" udp dport 67 accept
		iifname "eth0" udp dport 547 accept
		iifname "eth0" icmp type { destination-unreachable, time-exceeded, parameter-problem } accept
		iifname "eth0" jump acl.eth0
	}
	chain acl.eth0 {
		ct state established,related accept
		iifname "eth0" meta l4proto tcp th dport 22 accept
		iifname "eth0" drop
	}
}
"""

# The admin's DNAT to a "workload" (a Service's NodePort, condensed to one rule), then Calico's
# felix iptables dataplane (felix/rules/static.go, dispatch.go, endpoints.go: cali-FORWARD,
# cali-to-wl-dispatch, cali-tw-<iface>, the policy chain cali-pi-*, and the drop commented "Drop
# if no policies passed packet"); eth1 stands for the workload's cali interface.
CALICO = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {SERVER4}/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {BACKEND4}:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:cali-FORWARD - [0:0]
:cali-pi-_wdvNQb1FsOfJUzCtj4W - [0:0]
:cali-to-wl-dispatch - [0:0]
:cali-tw-eth1 - [0:0]
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-A cali-FORWARD -m comment --comment "cali:vjrMJCRpqwy5oRoX" -j MARK --set-xmark 0x0/0xe0000
-A cali-FORWARD -o eth1 -m comment --comment "cali:8ZoYfO5HKXWbB3pk" -j cali-to-wl-dispatch
-A cali-to-wl-dispatch -o eth1 -m comment --comment "cali:Ho1fK_vVJjl8gKEW" -g cali-tw-eth1
-A cali-pi-_wdvNQb1FsOfJUzCtj4W -p tcp -m comment --comment "cali:Kw7bEBJYWVaBdYlF" -m multiport --dports 443 -j MARK --set-xmark 0x10000/0x10000
-A cali-pi-_wdvNQb1FsOfJUzCtj4W -m comment --comment "cali:1Im4ZeOtNvyL8Jjm" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-eth1 -m comment --comment "cali:kkzUWEsFRU_9MBf-" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A cali-tw-eth1 -m comment --comment "cali:CSK53GJB3fYAaWPS" -m conntrack --ctstate INVALID -j DROP
-A cali-tw-eth1 -m comment --comment "cali:3OiGlXKBw0f9kkJe" -j MARK --set-xmark 0x0/0x10000
-A cali-tw-eth1 -m comment --comment "cali:8d5mEXpbxPrWwzbx" -m mark --mark 0x0/0x20000 -j cali-pi-_wdvNQb1FsOfJUzCtj4W
-A cali-tw-eth1 -m comment --comment "cali:cPRcsX7zQGHOHPvE" -m mark --mark 0x10000/0x10000 -j RETURN
-A cali-tw-eth1 -m comment --comment "cali:Y_cTNoyW-vTfvyC7" -m comment --comment "Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
COMMIT
"""

# k3s's embedded kube-router network policy controller (pkg/controllers/netpol/
# network_policy_controller.go, pod.go, policy.go: KUBE-ROUTER-FORWARD, a KUBE-POD-FW-<hash> chain
# per Pod whose comments name it, KUBE-NWPLCY-<hash> per policy marking what it lets in, the
# REJECT of what no policy marked), after the admin's DNAT to the Pod (198.51.100.2 on eth1).
K3S = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {SERVER4}/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination {BACKEND4}:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
:KUBE-NWPLCY-LBPSC5KQ2JHTBSVQ - [0:0]
:KUBE-POD-FW-J5CAWR6T6GJCVXMF - [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network policy" -j MARK --set-xmark 0x10000/0x10000
-A KUBE-NWPLCY-LBPSC5KQ2JHTBSVQ -p tcp -m comment --comment "rule to ACCEPT traffic from all sources to dest pods selected by policy name: web-https namespace default" -m tcp --dport 443 -j MARK --set-xmark 0x10000/0x10000
-A KUBE-POD-FW-J5CAWR6T6GJCVXMF -m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-POD-FW-J5CAWR6T6GJCVXMF -d {BACKEND4}/32 -m comment --comment "run through nw policy web-https" -j KUBE-NWPLCY-LBPSC5KQ2JHTBSVQ
-A KUBE-POD-FW-J5CAWR6T6GJCVXMF -m comment --comment "rule to log dropped traffic POD name:web-0 namespace: default" -m mark ! --mark 0x10000/0x10000 -j NFLOG --nflog-group 100
-A KUBE-POD-FW-J5CAWR6T6GJCVXMF -m comment --comment "rule to REJECT traffic destined for POD name:web-0 namespace: default" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable
-A KUBE-ROUTER-FORWARD -d {BACKEND4}/32 -m comment --comment "rule to jump traffic destined to POD name:web-0 namespace: default to chain KUBE-POD-FW-J5CAWR6T6GJCVXMF" -j KUBE-POD-FW-J5CAWR6T6GJCVXMF
COMMIT
"""

# wg-quick with a default route through wg0 (src/wg-quick/linux.bash: add_default, nft branch):
# table ip wg-quick-wg0, whose preraw chain drops packets for wg0's address that do not come in
# through wg0. 10.66.0.1 on lo stands for wg0's address (no wg link in the lab).
WG_QUICK = """table ip wg-quick-wg0 {
	chain preraw {
		type filter hook prerouting priority raw; policy accept;
		iifname != "wg0" ip daddr 10.66.0.1 fib saddr type != local drop
	}
	chain premangle {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto udp meta mark set ct mark
	}
	chain postmangle {
		type filter hook postrouting priority mangle; policy accept;
		meta l4proto udp meta mark 0x0000ca6c ct mark set meta mark
	}
}
"""
WG_ADDR = ipaddress.ip_address("10.66.0.1")


def _wg_quick(lab: Lab) -> None:
    lab.ip(lab.server, "addr", "add", f"{WG_ADDR}/32", "dev", "lo")
    lab.ip(lab.client, "route", "add", f"{WG_ADDR}/32", "via", str(SERVER4))
    lab.nft(lab.server, WG_QUICK)


@dataclass(frozen=True)
class Layout:
    load: Callable[[Lab], None]
    port: int  # the probe's port (8080 on the server: DNATed to the backend's 80 where `backend`)
    owner: str
    chain: str  # the deciding chain
    rule: str  # a piece of the deciding rule's text
    first: tuple[str, ...]  # pieces of the first fix's first command
    scope: str  # client where the block is narrowed (a mark, an address): the raw fix lets in only the client
    src: Optional[Any] = None  # injected on eth0 from this address instead of sent by the client
    backend: bool = False
    after: Optional[int] = None  # run the first fix's command at this index, then probe again: reached
    dst: Any = SERVER4


def _ipt(rules: str) -> Callable[[Lab], None]:
    return lambda lab: lab.iptables_restore(lab.server, rules)


def _tailscale(lab: Lab) -> None:
    lab.ip(lab.server, "route", "add", "100.64.0.0/10", "dev", "eth0")  # the CGNAT clients come in by eth0
    lab.iptables_restore(lab.server, TAILSCALE)


def _nft(rules: str) -> Callable[[Lab], None]:
    return lambda lab: lab.nft(lab.server, rules)


LAYOUTS = {
    "tailscale": Layout(_tailscale, 22, "tailscale", "ts-input", "100.64.0.0/10",
                        (f"iptables -I INPUT 1 -s {TS_CLIENT}/32 -p tcp --dport 22 -j ACCEPT",), "client",
                        src=TS_CLIENT, after=0),
    "sshguard-nft": Layout(_nft(SSHGUARD_NFT), 22, "sshguard", "blacklist", "@attackers",
                           (f"echo {CLIENT4} >> /etc/sshguard/whitelist",), "client", after=1),
    "sshguard-iptables": Layout(_ipt(SSHGUARD_IPT), 22, "sshguard", "sshguard", f"-s {CLIENT4}/32",
                                (f"echo {CLIENT4} >> /etc/sshguard/whitelist",), "client", after=1),
    "libvirt-iptables": Layout(_ipt(LIBVIRT_IPT), 8080, "libvirt", "LIBVIRT_FWI", "-o eth1 -j REJECT",
                               ("virsh net-edit NET", "/etc/libvirt/hooks/network"), "service", backend=True),
    "libvirt-nft": Layout(_nft(LIBVIRT_NFT), 8080, "libvirt", "guest_input", 'oif "eth1"',
                          ("virsh net-edit NET", "/etc/libvirt/hooks/network"), "service", backend=True),
    "csf-deny": Layout(_ipt(_csf(str(CLIENT4))), 22, "csf", "DENYIN", f"-s {CLIENT4}/32",
                       (f"csf -dr {CLIENT4}",), "client"),
    "csf-tcp-in": Layout(_ipt(_csf("203.0.113.9")), 8080, "csf", "LOGDROPIN", "-j DROP",
                         ("add 8080 to TCP_IN in /etc/csf/csf.conf, then `csf -r`",), "service"),
    "pve-host": Layout(_ipt(_pve("")), 8080, "pve", "PVEFW-HOST-IN", "-j DROP",
                       ("add `IN ACCEPT -p tcp -dport 8080` to the [RULES] section", "host.fw"), "service"),
    "pve-blacklist": Layout(_pve_blacklist, 22, "pve", "PVEFW-HOST-IN", "PVEFW-0-blacklist-v4",
                            (f"pvesh delete /cluster/firewall/ipset/blacklist/{CLIENT4}",), "client"),
    "incus-acl": Layout(_nft(INCUS), 8080, "incus", "acl.eth0", 'iifname "eth0" drop',
                        ("incus network acl rule add ACL ingress action=allow protocol=tcp destination_port=8080",
                         "incus network set eth0 security.acls=ACL"), "service"),
    "calico": Layout(_ipt(CALICO), 8080, "calico", "cali-tw-eth1", "Drop if no policies passed packet",
                     ("calicoctl get networkpolicy,globalnetworkpolicy",), "client", backend=True),
    "k3s-kube-router": Layout(_ipt(K3S), 8080, "k3s", "KUBE-POD-FW-J5CAWR6T6GJCVXMF", "-j REJECT",
                              ("the Pod default/web-0", "kubectl get networkpolicy -n default"), "client", backend=True),
    "wg-quick": Layout(_wg_quick, 8080, "wg-quick", "preraw", 'iifname != "wg0"',
                       ("wg-quick's rule for wg0", "/etc/wireguard/wg0.conf"), "client", dst=WG_ADDR),
    "podman-netavark": Layout(_nft(NETAVARK), 8080, "podman", "NETAVARK-ISOLATION-3", 'oifname "eth1" drop',
                              ("isolate=true", "add the raw rule below"), "service", backend=True),
}


def _probe(lab: Lab, case: Layout, src: Optional[Any] = None) -> Any:
    if src is not None:
        req = ProbeRequest(dport=case.port, proto=Proto.TCP, netns=lab.server, src=src, via="eth0", dst=case.dst,
                           timeout=0.5)
    else:
        req = ProbeRequest(dport=case.port, proto=Proto.TCP, netns=lab.server, from_netns=lab.client, dst=case.dst,
                           timeout=0.5)
    report = Run(req, log).execute()
    assert report.cleanup_ok and report.ruleset_unchanged
    return report


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_owner_layout(make_lab: Callable[..., Lab], name: str) -> None:
    case = LAYOUTS[name]
    with make_lab(backend=case.backend) as lab:
        if case.backend:
            assert lab.backend is not None
            lab.listen(lab.backend, Proto.TCP, 80)
        lab.listen(lab.server, Proto.TCP, case.port)
        case.load(lab)
        report = _probe(lab, case, case.src)
        checked = cmdcheck.check(report, lab.server)  # every iptables/nft fix printed, run by its tool on a copy
        assert checked.refused == (), checked.caveats
        text = terminal.text(report)
        [r] = report.results
        assert r.verdict in (Verdict.DROP, Verdict.REJECT), text
        ref = r.decided_by
        assert ref is not None and ref.chain == case.chain, text
        assert ref.rule is not None and case.rule in ref.rule.display, text
        doc = jsondoc.document(report)
        assert doc["packets"][0]["decided_by_owner"]["owner"] == case.owner, text
        first = next(f for f in report.findings if f.fixes).fixes[0]
        assert first.owner == case.owner and first.why and first.why.startswith("the decision belongs to"), text
        assert all(piece in first.commands[0] for piece in case.first), (first.commands, text)
        assert first.scope == case.scope, (first, text)
        client = str(case.src or CLIENT4)
        if case.scope == "client":
            assert client in first.lets_in, first
        own = doc["packets"][0]["owner_fix"]
        assert own is not None and own["owner"] == case.owner and own["commands"][0] == first.commands[0]
        flat = " ".join(text.split())
        assert first.commands[0][:30] in flat and max(len(line) for line in text.splitlines()) <= 80, text
        if case.after is not None:
            cmd = first.commands[case.after]
            lab.run(lab.server, ["nft", cmd[4:]] if cmd.startswith("nft ") else cmd.split())
            again = _probe(lab, case, case.src)
            assert again.reached, terminal.text(again)
            if case.src is not None:  # the rest of the range stays blocked
                other = _probe(lab, case, TS_OTHER)
                assert other.results[0].verdict is Verdict.DROP
