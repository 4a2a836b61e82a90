"""The shadow's plan (pure): what a throwaway copy of a host's firewall is made of, which of the
admin's commands may run in it, which sources a what-if samples, and who gains or loses.

`State` is the target's firewall state as listed (tracer/system/shadow.py lists a live namespace,
tracer/pipeline/whatif.py reads an evidence bundle); `tracer.system.shadow.build` carries it out
in namespaces of its own. Nothing here runs a command.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from tracer.errors import UsageError

IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# The sysctls that decide packets, copied per namespace (net.* under /proc/sys is the opener's).
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter",
           "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.all.accept_local", "net.ipv4.ip_nonlocal_bind",
           "net.ipv6.bindv6only", "net.netfilter.nf_conntrack_tcp_loose", "net.netfilter.nf_conntrack_tcp_be_liberal",
           "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_checksum",
           "net.netfilter.nf_conntrack_acct", "net.ipv4.icmp_echo_ignore_all", "net.ipv4.tcp_syncookies")
PER_LINK_SYSCTLS = ("rp_filter",)  # net.ipv4.conf.<link>.KEY

INTERNET4, INTERNET6 = ipaddress.ip_address("203.0.113.200"), ipaddress.ip_address("2001:db8:ffff::200")


@dataclass(frozen=True)
class Link:
    name: str
    addrs: tuple[tuple[str, int], ...]  # (address, prefix length)
    up: bool = True


@dataclass(frozen=True)
class Route:
    dst: str  # "default" or a prefix
    dev: Optional[str]
    gateway: Optional[str] = None
    family: int = 4


@dataclass(frozen=True)
class Listener:
    proto: str  # "tcp" / "udp"
    addr: str
    port: int


@dataclass(frozen=True)
class State:
    """A host's firewall state, as text the restore tools take back."""

    nft: str = ""  # native nft tables only (iptables-nft's own are in `ipt`), flowtables left out
    ipt: tuple[tuple[str, str], ...] = ()  # (family "ip"/"ip6", iptables-nft-save text)
    legacy: tuple[tuple[str, str], ...] = ()  # (family, iptables-legacy-save text)
    ipsets: str = ""  # `ipset save`
    recent: tuple[tuple[str, tuple[str, ...]], ...] = ()  # xt_recent list -> addresses
    links: tuple[Link, ...] = ()
    routes: tuple[Route, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    listeners: tuple[Listener, ...] = ()
    not_copied: tuple[str, ...] = ()  # what the shadow could not copy, in words
    depends: tuple[str, ...] = ()  # uncopied facts the verdicts may depend on (marks the results)

    def rules_text(self) -> str:
        return "\n".join([self.nft, *(t for _, t in self.ipt), *(t for _, t in self.legacy), self.ipsets])


# ---------------------------------------------------------------------------------------------
# nft ruleset: split off iptables-nft's tables, leave flowtables out


def top_blocks(text: str) -> list[str]:
    """`nft list ruleset` output cut into its top-level blocks ("table ip filter {" ... "}")."""
    blocks: list[str] = []
    cur: list[str] = []
    for line in text.splitlines():
        if not cur and not line.strip():
            continue
        cur.append(line)
        if line.startswith("}"):
            blocks.append("\n".join(cur) + "\n")
            cur = []
    if cur:
        blocks.append("\n".join(cur) + "\n")
    return blocks


def save_tables(save: str) -> set[str]:
    """Table names of an iptables-save text ("*filter" lines)."""
    return {line[1:].strip() for line in save.splitlines() if line.startswith("*")}


FLOWTABLE = re.compile(r"^\s*flowtable \S+ \{.*?^\s*\}\n", re.S | re.M)
FLOW_STMT = re.compile(r"\s*\bflow (?:add|offload) @\S+")


def native_nft(ruleset: str, ipt: dict[str, str]) -> tuple[str, list[str]]:
    """(the tables iptables-nft does not own, notes): `nft list ruleset` minus the tables that
    iptables-nft-save lists (those are restored through iptables-restore, as their rules carry
    xt matches nft cannot print back), flowtables and `flow add` statements left out."""
    owned = {(fam, t) for fam, save in ipt.items() for t in save_tables(save)}
    out, notes = [], []
    for block in top_blocks(ruleset):
        m = re.match(r"table (\S+) (\S+) \{", block)
        if m and (m.group(1), m.group(2)) in owned:
            continue
        if FLOWTABLE.search(block) or FLOW_STMT.search(block):
            block = FLOW_STMT.sub("", FLOWTABLE.sub("", block))
            notes.append(f"flowtables of {m.group(1)} {m.group(2) if m else '?'} left out (fast path only: "
                         "the first packets of a flow, which the probes are, take the rules)")
        out.append(block)
    return "".join(out), notes


# ---------------------------------------------------------------------------------------------
# /proc/net/{tcp,udp}{,6}: the listening sockets


def _hex_addr(h: str) -> str:
    raw = bytes.fromhex(h)
    # 32-bit words in host (little-endian) order: "0100007F" is 127.0.0.1
    word = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(word))


def parse_proc_listeners(text: str, proto: str) -> list[Listener]:
    """Listening TCP sockets (state 0A) or bound unconnected UDP sockets (07, remote port 0) of
    /proc/net/tcp-style text, e.g.
      0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 ...
    """
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or ":" not in f[1]:
            continue
        addr, port = f[1].split(":")
        state = f[3]
        if (proto == "tcp" and state == "0A") or (proto == "udp" and state == "07" and f[2].endswith(":0000")):
            out.append(Listener(proto, _hex_addr(addr), int(port, 16)))
    return sorted(set(out), key=lambda x: (x.proto, x.port, x.addr))


def stand_ins(listeners: Iterable[Listener]) -> list[Listener]:
    """One stand-in per (proto, port): "::" (both families) where the host listens on a wildcard,
    else each address it listens on."""
    by: dict[tuple[str, int], set[str]] = {}
    for x in listeners:
        by.setdefault((x.proto, x.port), set()).add(x.addr)
    out = []
    for (proto, port), addrs in sorted(by.items()):
        if addrs & {"0.0.0.0", "::"}:
            out.append(Listener(proto, "::", port))
        else:
            out += [Listener(proto, a, port) for a in sorted(addrs)]
    return out


def parse_recent(text: str) -> tuple[str, ...]:
    """/proc/net/xt_recent/NAME: "src=192.0.2.9 ttl: 64 last_seen: 4295 oldest_pkt: 1 4295" lines."""
    return tuple(m.group(1) for m in re.finditer(r"src=(\S+)", text))


# ---------------------------------------------------------------------------------------------
# What the copy cannot carry: rules that match sockets, cgroups or users, owner daemons' state

SOCKET_MATCHES = re.compile(r"-m (owner|cgroup|socket)\b|\bmeta (skuid|skgid|cgroup)\b|\bsocket (cgroupv2|transparent|wildcard)\b")
OWNERS = (("f2b-", "fail2ban"), ("fail2ban", "fail2ban"), ("ufw-", "ufw"), ("firewalld", "firewalld"),
          ("crowdsec", "CrowdSec"), ("sshguard", "sshguard"), ("DOCKER", "Docker"), ("KUBE-", "kube-proxy"))


def dependencies(rules: str) -> tuple[list[str], list[str]]:
    """(not copied, what the verdicts may depend on) for a ruleset's text."""
    not_copied, depends = [], []
    if SOCKET_MATCHES.search(rules):
        not_copied.append("the sockets, cgroups and users that owner/cgroup/socket matches test (the stand-in "
                          "listeners are root's, in no cgroup of the host)")
        depends.append("socket/cgroup/owner matches")
    owners = sorted({name for mark, name in OWNERS if mark in rules})
    if owners:
        not_copied.append(f"the dynamic state of {', '.join(owners)} (the daemon is not running in the shadow: "
                          "it will not ban, unban or rewrite rules there)")
        depends.append(f"{', '.join(owners)}'s later changes")
    if "timeout" in rules or "--seconds" in rules or "--rcheck" in rules or "--update" in rules:
        depends.append("timeouts (set elements and xt_recent entries age from the copy on)")
    return not_copied, depends


# ---------------------------------------------------------------------------------------------
# The admin's command

FIREWALL_TOOLS = {"iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy",
                  "iptables-restore", "ip6tables-restore", "iptables-nft-restore", "ip6tables-nft-restore",
                  "iptables-legacy-restore", "ip6tables-legacy-restore", "nft", "ipset", "sysctl"}
OWNER_TOOLS = {"ufw": "ufw", "firewall-cmd": "firewalld", "firewall-offline-cmd": "firewalld"}


def check_command(argv: list[str]) -> str:
    """The tool's name when `argv` is a firewall command the shadow can run; else UsageError."""
    if not argv:
        raise UsageError("what-if needs a command after `--`", "e.g. fwtrace what-if --dport 8443 -- iptables -I INPUT 1 -p tcp --dport 8443 -j ACCEPT")
    tool = os.path.basename(argv[0])
    if tool in OWNER_TOOLS:
        raise UsageError(f"what-if cannot run {tool} yet: it changes {OWNER_TOOLS[tool]}'s configuration and daemon, not only the kernel's rules",
                         f"give the iptables/nft commands {tool} would produce (after running it on a test host: `nft list ruleset`)")
    if tool not in FIREWALL_TOOLS:
        raise UsageError(f"not a firewall command: {tool}", "what-if runs iptables, ip6tables, nft, ipset or sysctl commands")
    if tool == "sysctl":
        keys = [a.split("=", 1)[0] for a in argv[1:] if not a.startswith("-")]
        if any(a in ("-p", "--load", "--system") or a.startswith("-p") for a in argv[1:]) or not keys:
            raise UsageError("what-if runs `sysctl -w net.KEY=VALUE` only", "name the key and value on the command line")
        bad = [k for k in keys if not k.startswith("net.") or "=" not in next(a for a in argv[1:] if a.startswith(k))]
        if bad:
            raise UsageError(f"what-if sets net.* sysctls only (per network namespace): {', '.join(bad)}",
                             "other sysctls are global: they would change the host, not the shadow")
    return tool


def command_ports(argv: list[str]) -> list[int]:
    """Ports the command names (--dport 8443, dport 8443, --dports 80,443, dport { 80, 443 })."""
    text = " ".join(argv)
    ports: list[int] = []
    for m in re.finditer(r"(?:--dports?|--destination-ports?|\bdport)\s+(\{[^}]*\}|\S+)", text):
        for tok in re.split(r"[\s,{}]+", m.group(1)):
            if tok.isdigit() and 0 < int(tok) < 65536 and int(tok) not in ports:
                ports.append(int(tok))
            elif re.fullmatch(r"\d+[:-]\d+", tok):  # a range: its first port
                first = int(re.split(r"[:-]", tok)[0])
                if 0 < first < 65536 and first not in ports:
                    ports.append(first)
    return ports


# ---------------------------------------------------------------------------------------------
# The sources a what-if samples


@dataclass(frozen=True)
class Source:
    addr: str
    label: str  # why it is sampled ("client", "-s 198.51.100.0/24 in INPUT", "set inet f banned", ...)


ADDR_TOKEN = re.compile(r"^[0-9a-fA-F:.]+(/\d+)?$")


def _one_of(token: str) -> Optional[IPAddr]:
    """One address of a token: the address itself, the first host of a prefix, a range's start."""
    token = token.strip().strip(",")
    if "-" in token:
        token = token.split("-", 1)[0]
    if not ADDR_TOKEN.match(token) or token.count(".") not in (0, 3) or (":" not in token and "." not in token):
        return None
    try:
        net = ipaddress.ip_network(token, strict=False)
    except ValueError:
        return None
    if net.prefixlen == 0 or net.is_loopback or net.is_multicast or net.is_unspecified:
        return None
    if net.num_addresses == 1:
        return net.network_address
    return net.network_address + 1


def set_elements(rules: str) -> dict[str, list[str]]:
    """nft set name -> element tokens (`set banned { ... elements = { a, b/24 timeout 1h } }`)."""
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"\bset (\S+) \{(.*?)\n\s*\}", rules, re.S):
        em = re.search(r"elements = \{(.*?)\}", m.group(2), re.S)
        if em:
            out[m.group(1)] = [t.split()[0] for t in em.group(1).replace("\n", " ").split(",") if t.strip()]
    for line in rules.splitlines():  # ipset save
        f = line.split()
        if len(f) >= 3 and f[0] == "add":
            out.setdefault(f[1], []).append(f[2])
    return out


def sample_sources(state: State, client: str, version: int, limit: int = 12) -> list[Source]:
    """The client, one address from every source range, set and zone binding the ruleset names,
    a documentation internet address: each address once, the probe's family only."""
    rules = state.rules_text()
    sets = set_elements(rules)
    found: list[Source] = [Source(client, "client")]

    def add(token: str, label: str) -> None:
        a = _one_of(token)
        if a is not None and a.version == version and all(s.addr != str(a) for s in found):
            found.append(Source(str(a), label))

    chain = ""
    for line in rules.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            chain = s.split()[1]
        if s.startswith("-A "):
            chain = s.split()[1]
        where = f" in {chain}" if chain else ""
        for m in re.finditer(r"(?:^|\s)(?:-s|--source)\s+(\S+)", s):
            add(m.group(1), f"-s {m.group(1)}{where}" + (f" -j {j.group(1)}" if (j := re.search(r"-j (\S+)", s)) else ""))
        for m in re.finditer(r"--src-range\s+(\S+)", s):
            add(m.group(1), f"--src-range {m.group(1)}{where}")
        for m in re.finditer(r"\b(?:ip6?) saddr (?:!= )?(\{[^}]*\}|@\S+|\S+)", s):
            v = m.group(1)
            if v.startswith("@"):
                for tok in sets.get(v[1:], []):
                    add(tok, f"set {v[1:]}")
            else:
                for tok in re.split(r"[\s,{}]+", v):
                    if tok:
                        add(tok, f"saddr {tok}{where}")
        for m in re.finditer(r"--match-set\s+(\S+)\s+src", s):
            for tok in sets.get(m.group(1), []):
                add(tok, f"ipset {m.group(1)}")
    for name, addrs in state.recent:
        for a in addrs:
            add(a, f"xt_recent {name}")
    add(str(INTERNET4 if version == 4 else INTERNET6), "an internet address (documentation range)")
    return found[:limit]


# ---------------------------------------------------------------------------------------------
# Who gains, who loses


@dataclass(frozen=True)
class Probe:
    source: Source
    port: int
    proto: str


@dataclass(frozen=True)
class Change:
    source: str
    label: str
    port: int
    proto: str
    before: str
    after: str

    @property
    def gains(self) -> bool:
        return self.after == "open" and self.before != "open"

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "why_sampled": self.label, "port": self.port, "proto": self.proto,
                "before": self.before, "after": self.after, "change": "gains" if self.gains else
                ("loses" if self.before == "open" else "differs")}


@dataclass(frozen=True)
class WhatIf:
    command: tuple[str, ...]
    probes: tuple[Probe, ...]
    before: tuple[str, ...]
    after: tuple[str, ...]
    not_copied: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    changes: tuple[Change, ...] = field(default=())
    shadow_left: tuple[str, ...] = ()  # shadow namespaces still there after its removal (none expected)
    host_unchanged: Optional[bool] = None  # the target listed the same before and after

    def to_json(self) -> dict[str, object]:
        return {"command": list(self.command), "changes": [c.to_json() for c in self.changes],
                "cleanup": {"shadow_removed": not self.shadow_left, "shadow_left": list(self.shadow_left),
                            "host_unchanged": self.host_unchanged},
                "probed": [{"source": p.source.addr, "why_sampled": p.source.label, "port": p.port, "proto": p.proto,
                            "before": b, "after": a} for p, b, a in zip(self.probes, self.before, self.after)],
                "not_copied": list(self.not_copied), "results_depend_on": list(self.depends)}


def changes(probes: Iterable[Probe], before: Iterable[str], after: Iterable[str]) -> tuple[Change, ...]:
    return tuple(Change(p.source.addr, p.source.label, p.port, p.proto, b, a)
                 for p, b, a in zip(probes, before, after) if b != a)


def render(w: WhatIf) -> str:
    """The who-gains/who-loses table, and what the copy could not carry."""
    lines = [f"what-if: {' '.join(w.command)}   (run in a shadow copy; the host was not changed)", ""]
    if not w.changes:
        lines.append(f"No change for the {len(w.probes)} probe(s) sampled (sources x ports below).")
    else:
        lines.append(f"{'':6} {'source':<28} {'port':<9} {'before':<16} {'after':<16} why sampled")
        for c in sorted(w.changes, key=lambda c: (not c.gains, c.port, c.source)):
            tag = "GAINS" if c.gains else ("LOSES" if c.before == "open" else "CHANGES")
            lines.append(f"{tag:<6} {c.source:<28} {c.proto + '/' + str(c.port):<9} {c.before:<16} {c.after:<16} {c.label}")
    lines.append("")
    lines.append("sampled: " + ", ".join(sorted({f"{p.source.addr} ({p.source.label})" for p in w.probes})))
    for n in w.not_copied:
        lines.append(f"not copied: {n}")
    if w.depends:
        lines.append("results may differ on the host where they depend on: " + "; ".join(w.depends))
    if w.shadow_left:
        lines.append("error: shadow namespaces left: " + ", ".join(w.shadow_left) + " (hint: `ip netns del NAME`)")
    if w.host_unchanged is not None:
        lines.append("host: " + ("unchanged (its rulesets, ipsets and sysctls list as before)" if w.host_unchanged
                                 else "CHANGED while what-if ran (by someone else: the shadow only read it)"))
    return "\n".join(lines) + "\n"
