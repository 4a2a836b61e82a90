"""More firewall managers (issue 22): who owns a chain, and the fix in the owner's own terms. No I/O.

Each layout is taken from the owner's source (tests/kernel/test_owners_more.py loads them):

  tailscale  util/linuxfw/iptables_runner.go: filter chains ts-input and ts-forward (nat
             ts-postrouting), jumped from the top of INPUT/FORWARD; ts-input drops 100.64.0.0/10
             (its CGNAT range) arriving on any interface but tailscale0. tailscaled clears the
             chains and re-inserts its jumps at position 1 when it starts.
  Podman     netavark src/firewall/nft.rs: table inet netavark (NETAVARK-ISOLATION-1..3,
             NETAVARK-HOSTPORT-DNAT, ...); its iptables driver: NETAVARK_FORWARD, NETAVARK_ISOLATION_*
  Incus/LXD  internal/server/firewall/drivers/drivers_nftables_templates.go: table inet incus
             (inet lxd), chains in.<net>, fwd.<net>, aclin.<net>, ...
  Proxmox VE src/PVE/Firewall.pm: PVEFW-INPUT, PVEFW-HOST-IN, PVEFW-FORWARD, PVEFW-Drop, ...;
             guests' chains tap<vmid>i<n>-IN / veth<vmid>i<n>-IN; written from /etc/pve/firewall/
             cluster.fw, <vmid>.fw and the node's host.fw
  CSF        csf.pl: LOCALINPUT (jumps ALLOWIN, then DENYIN), LOGDROPIN at the end of INPUT, ...;
             written from /etc/csf/csf.conf (TCP_IN, UDP_IN), csf.allow and csf.deny
  wg-quick   src/wg-quick/linux.bash: table ip wg-quick-<if> (nft); iptables raw/mangle rules
             commented "wg-quick(8) rule for <if>"
  k3s        flannel's FLANNEL-FWD / FLANNEL-POSTRTG; k3s's embedded kube-router network policy:
             KUBE-ROUTER-INPUT/FORWARD/OUTPUT, KUBE-NWPLCY-*, KUBE-POD-FW-*

And the client-only fixes of the ban tools not handled in tracer/diagnose/safe.py: sshguard
(src/fw/sshg-fw-nft-sets.sh: table ip/ip6 sshguard, chain blacklist, interval set attackers;
sshg-fw-iptables: chain sshguard, `-s ADDR -j DROP`) and CSF's deny list.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from tracer.findings import Fix
from tracer.model import Proto

NAMES = {"tailscale": "tailscale", "podman": "Podman (netavark)", "incus": "Incus", "lxd": "LXD",
         "pve": "Proxmox VE firewall", "csf": "CSF", "wg-quick": "wg-quick", "k3s": "k3s (kube-router/flannel)"}

RELOAD = {
    "tailscale": "tailscaled clears ts-input/ts-forward and puts its jumps back at the top of INPUT and FORWARD "
                 "whenever it starts",
    "podman": "netavark writes table inet netavark (its iptables chains) whenever a container network is set up",
    "incus": "Incus rewrites table inet incus from the network's configuration and ACLs when the network starts",
    "lxd": "LXD rewrites table inet lxd from the network's configuration and ACLs when the network starts",
    "pve": "pve-firewall recompiles its PVEFW-* chains from /etc/pve/firewall/*.fw and host.fw every 10 s",
    "csf": "csf rebuilds its chains from /etc/csf/csf.conf, csf.allow and csf.deny at every `csf -r`",
    "wg-quick": "wg-quick writes these rules at `wg-quick up` and deletes them at `wg-quick down`",
    "k3s": "k3s's kube-router and flannel rewrite their chains from the cluster's NetworkPolicies and Pods",
}

CSF_CHAINS = frozenset(("LOCALINPUT", "LOCALOUTPUT", "ALLOWIN", "ALLOWOUT", "DENYIN", "DENYOUT", "LOGDROPIN",
                        "LOGDROPOUT", "GALLOWIN", "GDENYIN", "CC_ALLOW", "CC_DENY", "CC_ALLOWP", "SYNFLOOD",
                        "PORTFLOOD", "UDPFLOOD", "INVDROP"))
_PVE_GUEST = re.compile(r"^(?:tap|veth)(\d+)i\d+-(?:IN|OUT)$")
_INCUS_NET = re.compile(r"^(?:in|out|fwd|acl|aclin|aclout|aclfwd|prert|pstrt|egress|ingress)\.(.+)$")
_KR_POD = re.compile(r"POD name:(\S+?) namespace: ?([\w.-]+)")
_WG = re.compile(r"wg-quick\(8\) rule for ([\w.-]+)|^wg-quick-(\S+)$")


def detect(table: str, chain: str, text: str = "") -> Optional[tuple[str, str]]:
    """(owner key, detail) from the table and chain names and the rule's text; None: not one of these."""
    if chain.startswith("ts-"):
        return "tailscale", ""
    if chain.startswith("NETAVARK") or table == "netavark":
        return "podman", ""
    if table in ("incus", "lxd"):
        m = _INCUS_NET.match(chain)
        return table, f"network {m.group(1)}" if m else ""
    if chain.startswith("PVEFW-"):
        return "pve", ""
    g = _PVE_GUEST.match(chain)
    if g:
        return "pve", f"guest {g.group(1)}"
    if chain in CSF_CHAINS:
        return "csf", ""
    w = _WG.search(text) or _WG.match(table)
    if w:
        return "wg-quick", f"interface {w.group(1) or w.group(2)}"
    if chain.startswith(("FLANNEL-", "KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")):
        pod = _KR_POD.search(text)  # kube-router's comments name the Pod a chain guards
        return "k3s", f"Pod {pod.group(2)}/{pod.group(1)}" if pod else ""
    return None


def _detail(owner: Any) -> str:
    return owner.detail.split(" ", 1)[1] if " " in owner.detail else ""


def _pve_file(owner: Any) -> str:
    guest = _detail(owner) if owner.detail.startswith("guest") else ""
    return (f"/etc/pve/firewall/{guest}.fw" if guest else
            "the node's host.fw (/etc/pve/nodes/NODE/host.fw, on the node itself /etc/pve/local/host.fw)")


def _acl(owner: Any, proto: str, dport: int, src: str = "") -> str:
    tool = "incus" if owner.key == "incus" else "lxc"
    net = _detail(owner) or "NET"
    source = f" source={src}" if src else ""
    return (f"`{tool} network acl rule add ACL ingress action=allow protocol={proto}{source} destination_port={dport}` "
            f"on an ACL attached to the network (`{tool} network set {net} security.acls=ACL`)")


def general(owner: Any, result: Any, proto: str, dport: int, dst: str) -> tuple[str, ...]:
    """The fix of a catch-all or policy of one of these owners: where to open the service."""
    icmp = result.spec.proto is Proto.ICMP
    key = owner.key
    if key == "csf":
        if icmp:
            return ("ping is ICMP_IN in /etc/csf/csf.conf (ICMP_IN = \"1\"), then `csf -r`",)
        opt = "UDP_IN" if proto == "udp" else "TCP_IN"
        return (f"add {dport} to {opt} in /etc/csf/csf.conf, then `csf -r`",)
    if key == "pve":
        what = "-p icmp" if icmp else f"-p {proto} -dport {dport}"
        return (f"add `IN ACCEPT {what}` to the [RULES] section of {_pve_file(owner)}; pve-firewall applies it "
                "within 10 s",)
    if key in ("incus", "lxd"):
        return (f"{NAMES[key]} filters the network itself: allow the service with {_acl(owner, proto, dport)}",)
    if key == "podman":
        return ("netavark isolates networks created with `--opt isolate=true` (or strict) on purpose: add the raw "
                "rule below to let this service through; netavark keeps rules it did not write until it rebuilds its "
                "table (a reboot, a firewall flush), so re-add it from a systemd unit after podman's. "
                "`podman network connect NET CONTAINER` would instead join the container to the client's whole "
                "network",)
    if key == "tailscale":
        return ("tailscale's own rules decide (ts-input/ts-forward): run tailscale with `--netfilter-mode=nodivert` "
                "and call ts-input yourself after your rule, or reach the service over tailscale0",)
    if key == "wg-quick":
        iface = _detail(owner) or "wg0"
        return (f"wg-quick's rule for {iface} drops packets for {iface}'s address that do not come through the tunnel "
                f"(against spoofed tunnel traffic): reach {dst} over {iface}, or change /etc/wireguard/{iface}.conf "
                "and `wg-quick down/up`",)
    pod = _detail(owner)
    ns = f"-n {pod.split('/')[0]}" if pod else "-A"
    return (f"a Kubernetes NetworkPolicy enforced by k3s's kube-router selects {('the Pod ' + pod) if pod else 'the Pod'} "
            f"and lets nothing in to {proto}/{dport}: `kubectl get networkpolicy {ns}` shows it; add an ingress rule for "
            f"port {dport} there (`from:` an ipBlock narrows it to some clients)",)


def client_fixes(p: Any, owner: Any, blk: Any, raw: str, why: str) -> list[Fix]:
    """A targeted block's first fixes in the owner's terms, letting in only the probed client
    (tracer/diagnose/safe.client_fixes puts them first); [] where the owner has none."""
    spec, src, port = p.result.spec, str(p.seen.src), p.seen.dport
    ref = p.result.decided_by
    if ref is None or spec.proto is Proto.ICMP:
        return []
    proto = spec.proto.value
    key = owner.key
    service = f"{proto}/{port}"
    only = f"lets in only {src} to {service}"
    rule_text = (ref.rule.ipt or ref.rule.text) if ref.rule is not None else ""
    if key == "tailscale" and ref.rule is not None and ref.rule.ipt is not None:
        cmd = ("ip6tables" if spec.family == 6 else "iptables") + f" -I INPUT 1 -s {src}/{32 if spec.family == 4 else 128} " \
            f"-p {proto} --dport {port} -j ACCEPT"
        return [Fix("client", only,
                    f"as tailscale wants it: {cmd}; it goes before the jump to ts-input, whose `{ref.rule.display}` "
                    "drops tailscale's own range 100.64.0.0/10 arriving outside tailscale0 (this client has such an "
                    "address). tailscaled puts its jump back on top when it starts: to keep the rule, run tailscale "
                    "with `--netfilter-mode=nodivert` and jump to ts-input yourself after it", (cmd,),
                    owner="tailscale", why=why)]
    if key == "sshguard":
        return [_sshguard(p, ref, rule_text, raw, src, why)]
    if key == "csf":
        line = f"{proto}|in|d={port}|s={src}"
        cmds = [f"echo '{line}' >> /etc/csf/csf.allow && csf -r"]
        text = (f"as CSF wants it: {cmds[0]}; ALLOWIN comes before DENYIN, and the line lets {src} in to {service} "
                "only")
        if ref.chain in ("DENYIN", "GDENYIN"):
            cmds.insert(0, f"csf -dr {src}")
            text = (f"as CSF wants it: csf -dr {src}; it removes only {src} from /etc/csf/csf.deny and its DENYIN "
                    f"rule. To let it in to {service} whatever csf.deny says: add `{line}` to /etc/csf/csf.allow, then "
                    "`csf -r`; ALLOWIN comes before DENYIN")
        return [Fix("client", only if len(cmds) == 1 else f"lifts CSF's deny of {src} only; {only}", text, tuple(cmds),
                    owner="csf", why=why)]
    if key == "pve" and "-blacklist-v" in rule_text:
        # ruleset_chain_add_input_filters: the cluster's ipset blacklist drops before any host rule
        return [Fix("client", f"lifts the Proxmox VE blacklist's entry for {src} only",
                    f"as the Proxmox VE firewall wants it: delete the line `{src}` of [IPSET blacklist] in "
                    "/etc/pve/firewall/cluster.fw (or `pvesh delete /cluster/firewall/ipset/blacklist/"
                    f"{src}`); pve-firewall applies it within 10 s", (f"pvesh delete /cluster/firewall/ipset/blacklist/{src}",),
                    owner="pve", why=why)]
    if key == "pve":
        line = f"IN ACCEPT -source {src} -p {proto} -dport {port}"
        return [Fix("client", only, f"as the Proxmox VE firewall wants it: add `{line}` to the [RULES] section of "
                    f"{_pve_file(owner)}; pve-firewall applies it within 10 s", (line,), owner="pve", why=why)]
    if key in ("incus", "lxd"):
        text = _acl(owner, proto, port, src)
        return [Fix("client", only, f"as {NAMES[key]} wants it: {text}", (text.split("`")[1],), owner=key, why=why)]
    return []


def _sshguard(p: Any, ref: Any, rule_text: str, raw: str, src: str, why: str) -> Fix:
    """Whitelist the client (sshguard never blocks the addresses of WHITELIST_FILE), and lift the
    block now for it alone: its own entry, or an accept before the drop when the entry is a
    whole subnet (IPV4_SUBNET). Never the set's flush or a restart: both free every attacker."""
    fam = "ip6" if p.result.spec.family == 6 else "ip"
    held = [e for e in (p.ctx.full_sets or {}).get((ref.family, ref.table, "attackers"), ()) if e.split("/")[0] == src
            and (e.count("/") == 0 or e.endswith(("/32", "/128")))]
    whitelist = f"echo {src} >> /etc/sshguard/whitelist"
    if held and ref.rule is not None and ref.rule.ipt is None:
        now = f"nft delete element {fam} {ref.table} attackers {{ {held[0]} }}"
        how = f"remove its own entry, as sshguard does when the block ends: {now}"
    elif ref.rule is not None and ref.rule.ipt is not None and re.search(rf"-s {re.escape(src)}(?:/32|/128)? ", rule_text + " "):
        now = f"{'ip6tables' if fam == 'ip6' else 'iptables'} -D {ref.chain} {ref.rule.ipt.split(' ', 2)[2]}"
        how = f"delete its own rule, as sshguard does when the block ends: {now}"
    else:
        now = raw
        how = f"its block is a wider entry: let it in before the drop ({now}; gone when sshguard restarts, the whitelist then holds)"
    return Fix("client", f"lets in only {src} (to every port sshguard blocks)",
               f"as sshguard wants it: {whitelist}; that is the file WHITELIST_FILE names in "
               f"/etc/sshguard/sshguard.conf (Debian's), read when sshguard starts: it never blocks {src} again. For "
               f"now, {how}. Do not flush the set or restart sshguard: both free every address it blocks",
               (whitelist, now), owner="sshguard", why=why)
