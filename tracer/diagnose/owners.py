"""Who owns a chain, and the fix in the owner's own terms. No I/O.

Firewall managers rewrite their chains on every reload: a raw `iptables -I` in a ufw, firewalld,
Docker or kube-proxy chain is gone at the next `ufw reload`, `firewall-cmd --reload`, container
start or Service sync. So the fix is written the way the owner takes it, and the raw command
stays as a second line. Owners are recognised by the names the tools give their tables, chains
and comments (taken from the tools' sources):

  Docker      filter chains DOCKER, DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2, DOCKER-FORWARD,
              DOCKER-CT, DOCKER-BRIDGE; nat DOCKER; nftables backend: table ip docker-bridges
  ufw         ufw-before-input, ufw-user-input, ufw-after-input, ufw-reject-input, ... (ufw6-*)
  firewalld   table inet firewalld (filter_IN_<zone>, filter_IN_<zone>_allow, ...); iptables
              backend: INPUT_ZONES, IN_<zone>, IN_<zone>_allow, ...
  fail2ban    iptables actions: chain f2b-<jail> (old: fail2ban-<jail>); nftables action:
              table inet f2b-table, set addr-set-<jail>
  kube-proxy  KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-SVC-*, ...; a Service without
              endpoints is a REJECT commented "<ns>/<name>:<port> has no endpoints";
              nftables mode: table ip kube-proxy / ip6 kube-proxy
  CrowdSec    firewall bouncer: CROWDSEC_CHAIN, table ip crowdsec / ip6 crowdsec6
  sshguard    nft backend: table ip sshguard / ip6 sshguard6 (set attackers); iptables: chain sshguard
  OpenWrt     fw4: table inet fw4 (input_<zone>, reject_from_<zone>, ...)
  libvirt     LIBVIRT_INP, LIBVIRT_FWI, ...; nftables backend: table ip libvirt_network
  Calico      cali-* chains; nftables mode: table ip calico / ip6 calico
  and tailscale, Podman, Incus/LXD, Proxmox VE, CSF, wg-quick, k3s: tracer/diagnose/owners_more.py
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tracer.diagnose import owners_more
from tracer.model import EventKind, PacketResult, Proto, RuleRef, Verdict


@dataclass(frozen=True)
class Owner:
    key: str  # "docker", "ufw", "firewalld", "fail2ban", "kube-proxy", "crowdsec", "fw4", "libvirt", "calico"
    name: str  # as people call it: "Docker", "firewalld", ...
    detail: str = ""  # the zone, jail or Service, when the names say it

    def describe(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name

    def to_json(self) -> dict[str, object]:
        return {"owner": self.key, "name": self.name, "detail": self.detail or None}


@dataclass(frozen=True)
class OwnerFix:
    owner: Owner
    why: str  # why a raw command is the wrong tool here
    commands: tuple[str, ...]  # the fix in the owner's terms (commands, or a sentence)
    raw: Optional[str] = None  # the raw iptables/nft command, second line

    def to_json(self) -> dict[str, object]:
        return {**self.owner.to_json(), "why": self.why, "commands": list(self.commands), "raw": self.raw}


NAMES = {"docker": "Docker", "ufw": "ufw", "firewalld": "firewalld", "fail2ban": "fail2ban",
         "kube-proxy": "kube-proxy", "crowdsec": "CrowdSec", "fw4": "OpenWrt fw4", "libvirt": "libvirt",
         "calico": "Calico", "sshguard": "sshguard", **owners_more.NAMES}

_FIREWALLD_ZONE = re.compile(r"^(?:filter_|nat_|mangle_|raw_)?(?:IN|FWD|FWDI|FWDO|PRE|POST)_(.+?)(?:_(?:pre|log|deny|allow|post|rich))?$")
_FIREWALLD_IPT = re.compile(r"^(?:INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING)_(?:ZONES|direct|POLICIES)")
_F2B_SET = re.compile(r"@addr6?-set-([\w.-]+)")
_KUBE_SVC = re.compile(r'"?([\w.-]+/[\w.-]+)(?::([\w.-]*))? has no endpoints"?')
_FW4_ZONE = re.compile(r"^(?:input|forward|output|reject_from|drop_from|accept_from|reject_to|drop_to|accept_to|dstnat|srcnat|helper)_(\w+?)$")


def owner_of(table: str, chain: str, text: str = "") -> Optional[Owner]:
    """The manager of a chain, from its table and chain names and the rule's text (comments)."""
    def mk(key: str, detail: str = "") -> Owner:
        return Owner(key, NAMES[key], detail)

    more = owners_more.detect(table, chain, text)
    if more is not None:
        return mk(*more)
    if chain.startswith("DOCKER") or table == "docker-bridges":
        return mk("docker")
    if chain.startswith(("ufw-", "ufw6-")):
        return mk("ufw")
    if table == "firewalld" or _FIREWALLD_IPT.match(chain) or (chain.startswith("IN_") and _FIREWALLD_ZONE.match(chain)):
        m = _FIREWALLD_ZONE.match(chain)
        return mk("firewalld", f"zone {m.group(1)}" if m and m.group(1) not in ("ZONES", "POLICIES") else "")
    if chain.startswith(("f2b-", "fail2ban-")) or table == "f2b-table":
        s = _F2B_SET.search(text)
        jail = s.group(1) if s else chain.split("-", 1)[1] if chain.startswith(("f2b-", "fail2ban-")) and chain != "f2b-chain" else ""
        return mk("fail2ban", f"jail {jail}" if jail else "")
    if chain.startswith("KUBE-") or table == "kube-proxy":
        k = _KUBE_SVC.search(text)
        return mk("kube-proxy", f"Service {k.group(1)}" if k else "")
    if table in ("sshguard", "sshguard6") or chain == "sshguard":
        return mk("sshguard")
    if chain.lower().startswith("crowdsec") or table in ("crowdsec", "crowdsec6"):
        return mk("crowdsec")
    if table == "fw4":
        z = _FW4_ZONE.match(chain)
        return mk("fw4", f"zone {z.group(1)}" if z else "")
    if chain.startswith("LIBVIRT_") or table.startswith("libvirt"):
        return mk("libvirt")
    if chain.startswith("cali-") or table == "calico":
        return mk("calico")
    return None


def chain_owners(result: PacketResult) -> list[tuple[str, Owner]]:
    """Each owned chain the probe went through, in order: ("ip filter ufw-user-input", Owner)."""
    out: list[tuple[str, Owner]] = []
    seen: set[str] = set()
    for step in result.steps:
        ev = step.event
        if ev.kind is EventKind.CONNTRACK:
            continue
        chains = [(ev.chain, step.rule.display if step.rule else "")]
        if ev.verdict and ev.verdict.split()[0] in ("jump", "goto"):
            # A chain jumped into whose rules all missed leaves no event of its own.
            chains.append((ev.verdict.split()[1], ""))
        for chain, text in chains:
            where = f"{ev.family} {ev.table} {chain}"
            o = owner_of(ev.table, chain, text)
            if o is not None and where not in seen:
                seen.add(where)
                out.append((where, o))
    return out


def decider_owner(result: PacketResult) -> Optional[Owner]:
    """The owner of the deciding rule; for a base chain's policy, the manager whose chains the
    packet passed in that table (ufw sets INPUT's policy, Docker FORWARD's)."""
    ref = result.decided_by
    if ref is None:
        return None
    own = owner_of(ref.table, ref.chain, ref.rule.display if ref.rule else "")
    if ref.rule is not None and own is None:
        return None
    # The zone/jail detail of the deepest chain met in the same table is the most specific
    # (firewalld rejects in filter_INPUT after the zone's chains returned).
    same = [o for where, o in chain_owners(result) if where.split()[:2] == [ref.family, ref.table]
            and (own is None or o.key == own.key)]
    detailed = [o for o in same if o.detail]
    if own is not None:
        return own if own.detail or not detailed else detailed[-1]
    pool = detailed or same
    return pool[-1] if pool else None


def fix(result: PacketResult, raw: Optional[str], dst: str, dport: int) -> Optional[OwnerFix]:
    """The fix for a blocked probe in its owner's terms, or None when no manager owns the decision.

    `dst`/`dport`: where the deciding chain saw the packet going (after DNAT); `raw`: the raw
    command fwtrace's finding suggests."""
    ref = result.decided_by
    owner = decider_owner(result)
    if owner is None or ref is None or result.verdict not in (Verdict.DROP, Verdict.REJECT):
        return None
    spec = result.spec
    proto = spec.proto.value
    port = f"{dport}/{proto}"
    cmds = _commands(owner, result, ref, proto, port, dst, dport)
    return OwnerFix(owner, reload_note(owner), cmds, raw)


def reload_note(owner: Owner) -> str:
    """Why a raw command is the wrong tool in this owner's chains."""
    reload = {"docker": "Docker rewrites its chains (except DOCKER-USER) when containers and networks change",
              "ufw": "ufw rewrites its chains at `ufw reload` and boot",
              "firewalld": "firewalld rewrites its table at `firewall-cmd --reload` and boot",
              "fail2ban": "fail2ban owns the ban list and flushes its chains when it restarts",
              "kube-proxy": "kube-proxy rewrites its rules from the Services at every sync",
              "crowdsec": "the CrowdSec bouncer refills its set from the decisions",
              "fw4": "fw4 regenerates table inet fw4 from /etc/config/firewall at every reload",
              "libvirt": "libvirt rebuilds its chains when a virtual network starts",
              "calico": "Felix rewrites cali-* chains from the policies within seconds",
              "sshguard": "sshguard owns the block list and flushes its table when it restarts",
              **owners_more.RELOAD}[owner.key]
    return f"the decision belongs to {owner.describe()}: {reload}"


def _commands(owner: Owner, result: PacketResult, ref: RuleRef, proto: str, port: str, dst: str, dport: int) -> tuple[str, ...]:
    src = str(result.spec.src)
    icmp = result.spec.proto is Proto.ICMP
    detail = owner.detail.split(" ", 1)[1] if " " in owner.detail else ""
    if owner.key in owners_more.NAMES:
        return owners_more.general(owner, result, proto, dport, dst)
    if owner.key == "firewalld":
        # A policy's chains (filter_IN_policy_NAME_deny) take --policy=NAME; there is no such zone.
        zone = f"--policy={detail[len('policy_'):]} " if detail.startswith("policy_") else \
            (f"--zone={detail} " if detail else "")
        if icmp:
            return (f"firewall-cmd {zone}--remove-icmp-block=echo-request",
                    f"firewall-cmd --permanent {zone}--remove-icmp-block=echo-request")
        return (f"firewall-cmd {zone}--add-port={port}", f"firewall-cmd --permanent {zone}--add-port={port}")
    if owner.key == "ufw":
        if icmp:
            return ("ufw handles ping in /etc/ufw/before.rules (ufw-before-input); edit it there, then `ufw reload`",)
        # ufw-user-input holds `ufw deny` rules in order: an allow appended after a deny never matches.
        verb = "ufw insert 1 allow" if ref.chain.endswith("user-input") else "ufw allow"
        return (f"{verb} {port}",)
    if owner.key == "docker":
        cmd = "ip6tables" if result.spec.family == 6 else "iptables"
        what = "-p icmp" if icmp else f"-p {proto} --dport {dport}"
        return (f"{cmd} -I DOCKER-USER -d {dst} {what} -j ACCEPT",)
    if owner.key == "fail2ban":
        jail = detail or "JAIL"
        return (f"fail2ban-client set {jail} unbanip {src}",)
    if owner.key == "kube-proxy":
        if detail:
            ns, _, name = detail.partition("/")
            return (f"the Service {detail} has no endpoints: check `kubectl get endpoints -n {ns} {name}` "
                    "(no ready Pod matches its selector)",)
        return ("kube-proxy writes these rules from the Services: check the Service and its endpoints "
                "(`kubectl get svc,endpoints -A`), not the rules",)
    if owner.key == "crowdsec":
        return (f"cscli decisions delete --ip {src}",)
    if owner.key == "sshguard":
        return (f"add {src} to sshguard's whitelist (`-w {src}`, or WHITELIST_FILE in sshguard.conf), then restart it",)
    if owner.key == "fw4":
        zone = detail or "wan"
        return (f"uci add firewall rule && uci set firewall.@rule[-1].src='{zone}' && "
                f"uci set firewall.@rule[-1].proto='{proto}' && uci set firewall.@rule[-1].dest_port='{dport}' && "
                "uci set firewall.@rule[-1].target='ACCEPT' && uci commit firewall && fw4 reload",)
    if owner.key == "libvirt":
        # src/network/network_iptables.c, network_nftables.c: LIBVIRT_FWI / guest_input reject what
        # is routed into a NAT network unless related to a guest's own connection.
        return ("change it in the network's XML (`virsh net-edit NET`: <forward mode='route'/> "
                "or 'open' lets routed traffic in), or add the raw rule from /etc/libvirt/hooks/network (run at each "
                "network start); a direct rule is lost when libvirt starts the network again",)
    return ("a Calico policy decides: `calicoctl get networkpolicy,globalnetworkpolicy -o wide` "
            "(Kubernetes: `kubectl get networkpolicy -A`)",)
