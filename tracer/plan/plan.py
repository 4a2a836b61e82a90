"""What fwtrace adds to a firewall for one run, computed as data (no I/O).

The instrumentation is one nft table of fwtrace's own, named after the run id, whose base chains
hook in before everything else (raw is -300, conntrack -200) and only set `meta nftrace set 1`
on the probe packets and their replies. The chains' `accept` policy is not a verdict for anybody
else: in nftables every base chain at a hook runs in turn, and accept in one of them only means
"go on to the next", so the table cannot change the fate of any packet. Nothing else is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from tracer.model import PacketSpec, Proto
from tracer.ruleset.hooks import priority_value

TABLE_PREFIX = "fwtrace_"
TRACE_PRIORITY = -1000
RUN_ID_RE = re.compile(r"^[0-9a-f]{8}$")

# ICMP error types that quote the offending packet (RFC 792 / RFC 4443).
_ICMP4_ERRORS = "{ destination-unreachable, source-quench, redirect, time-exceeded, parameter-problem }"
_ICMP6_ERRORS = "{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }"


def table_name(run_id: str) -> str:
    return TABLE_PREFIX + run_id


@dataclass(frozen=True)
class Entry:
    """One tracing rule: what it matches, and whose probe or reply that is."""

    match: str
    role: str  # "probe" or "reply"
    idents: frozenset[int]  # PacketSpec.ident of the probes it is for


@dataclass(frozen=True)
class TracePlan:
    run_id: str
    table: str
    entries: tuple[Entry, ...]  # in the order they appear in each chain
    batch: str  # one atomic `nft -f -` batch that adds everything
    undo: str  # the batch that removes it again
    unobserved: tuple[str, ...] = ()  # base chains of the ruleset no trace can show (Floors.unobserved)

    @property
    def rules(self) -> list[str]:
        """The matching rules, as they stand in the base chains."""
        return [line.strip() for line in self.batch.splitlines() if " jump " in line]


Roles = dict[tuple[str, str], Entry]  # (our table, chain) -> the entry whose rule it holds

# Hooks where fwtrace sets the trace flag, and the chain-name prefix of its chains there. The
# flag stays on the skb through the later hooks (input, forward, postrouting), so these are
# enough, provided they run before every chain of the ruleset: see `Floors`.
_HOOKS = (("pre", "prerouting"), ("out", "output"), ("ing", "ingress"))
# Empty chains of ours at the end of the later hooks: a traced packet leaves a policy event in
# each, so the path shows every hook it passed, and the last one tells whether it got through
# netfilter to local delivery or out of the box, or vanished in between (routing, rp_filter).
END_CHAINS = {"in_end": "input", "fwd_end": "forward", "post_end": "postrouting"}
DELIVERED = ("in_end", "post_end")
END_PRIORITY = 1000


def chain_names(index: int) -> list[str]:
    return [f"{prefix}{index}" for prefix, _ in _HOOKS]


def hook_of_chain(name: str) -> Optional[str]:
    if name in END_CHAINS:
        return END_CHAINS[name]
    if name.startswith("ingress_"):
        return "ingress"
    for prefix, hook in _HOOKS:
        if name.startswith(prefix) and (name == prefix or name[len(prefix):].isdigit()):
            return hook
    return None


@dataclass(frozen=True)
class Floors:
    """Where the ruleset's base chains sit: the lowest priority in use on each hook (user chains
    may sit below -1000, e.g. -2000), and the devices with ingress chains (netdev, inet) with
    the lowest priority on each. fwtrace's chains go below all of them."""

    hooks: Mapping[str, int] = field(default_factory=dict)
    ingress: Mapping[str, int] = field(default_factory=dict)  # device -> lowest priority
    # Base chains fwtrace does not instrument (bridge and arp families: its flag is set on the IP
    # and ingress hooks), as "family table chain (hook H, priority P)": named when a probe
    # vanishes. (Measured on 6.18: a bridge input chain's events do show up in the trace, and a
    # netdev egress chain's too: the skb keeps its flag from OUTPUT to the device.)
    unobserved: tuple[str, ...] = ()

    def priority(self, hook: str, device: Optional[str] = None) -> int:
        low = self.ingress.get(device) if device is not None else self.hooks.get(hook)
        return TRACE_PRIORITY if low is None else min(TRACE_PRIORITY, low - 1)


_CHAIN_HEAD = re.compile(r"^table (\S+) (\S+) \{|^\s*chain (\S+) \{|^\s*type \S+ hook (\S+)(?: device \"?([^\"\s]+)\"?| devices = \{ ([^}]*) \})? "
                         r"priority ([^;]+);", re.M)


def floors(chains_text: str) -> Floors:
    """The Floors of a ruleset from `nft list chains` (no rules are listed: cheap on any host).

    Sample: `type filter hook ingress device "eth0" priority -500; policy accept;`
    Other fwtrace runs' tables are left out: they must not push each other ever lower.
    """
    hooks: dict[str, int] = {}
    ingress: dict[str, int] = {}
    unobserved: list[str] = []
    family = table = chain = ""
    for m in _CHAIN_HEAD.finditer(chains_text):
        if m.group(1):
            family, table = m.group(1), m.group(2)
            continue
        if m.group(3):
            chain = m.group(3)
            continue
        if table.startswith(TABLE_PREFIX):
            continue
        hook, prio = m.group(4), priority_value(m.group(7).strip())
        if family in ("bridge", "arp"):
            unobserved.append(f"{family} {table} {chain} (hook {hook}, priority {prio})")
            continue
        hooks[hook] = min(hooks.get(hook, prio), prio)
        if hook == "ingress":
            for dev in (m.group(5) or "").split() + [d.strip() for d in (m.group(6) or "").split(",") if d.strip()]:
                ingress[dev] = min(ingress.get(dev, prio), prio)
    return Floors(hooks, ingress, tuple(unobserved))


def roles(plan: TracePlan) -> Roles:
    """Which entry each of our chains is for (pure): a trace event's chain name says it."""
    ingress = "hook ingress" in plan.batch
    return {(plan.table, name): entry for i, entry in enumerate(plan.entries) for name in chain_names(i)
            if ingress or not name.startswith("ing")}


def _l3(spec: PacketSpec, reply: bool) -> str:
    ip = "ip" if spec.family == 4 else "ip6"
    if reply:
        # A reply may come from a DNAT backend, so only the client side is pinned: the client
        # address and our random source port / echo id are what make the flow ours.
        return f"{ip} daddr {spec.src}"
    return f"{ip} saddr {spec.src} {ip} daddr {spec.dst}"


def match_probe(spec: PacketSpec) -> str:
    # The IPv4 id / IPv6 flow label is random per probe: the client's own stack answering our
    # SYN-ACK with a RST uses the same ports but never the same id, so it is not taken for a probe.
    ident = f"ip id {spec.ident}" if spec.family == 4 else f"ip6 flowlabel {spec.ident}"
    if spec.proto is Proto.ICMP:
        kind = "icmp" if spec.family == 4 else "icmpv6"
        return f"{_l3(spec, False)} {ident} {kind} type echo-request {kind} id {spec.sport}"
    p = spec.proto.value
    if spec.ident == 0:
        # ident 0: sent by another host's socket (--from ssh://), whose kernel picks the id; a
        # TCP probe is then its SYN (not the handshake's ACK, nor the RST that ends it)
        syn = " tcp flags & (syn | ack) == syn" if spec.proto is Proto.TCP else ""
        return f"{_l3(spec, False)} {p} sport {spec.sport} {p} dport {spec.dport}{syn}"
    # dport 0: --app ftp's data probe, whose port the server names only during the run
    return f"{_l3(spec, False)} {ident} {p} sport {spec.sport}" + (f" {p} dport {spec.dport}" if spec.dport else "")


def match_replies(spec: PacketSpec) -> list[str]:
    """Rules matching what may come back: the direct reply and ICMP errors quoting the probe."""
    l3 = _l3(spec, True)
    kind = "icmp" if spec.family == 4 else "icmpv6"
    errors = _ICMP4_ERRORS if spec.family == 4 else _ICMP6_ERRORS
    # An ICMP error quotes the probe after its own 8-byte header: the quoted IP header (20 bytes,
    # probes carry no options; 40 for IPv6) and then the quoted source port / echo id.
    quoted = (8 + (20 if spec.family == 4 else 40)) * 8
    if spec.proto is Proto.ICMP:
        direct = f"{l3} {kind} type echo-reply {kind} id {spec.sport}"
        quoted += 32  # echo id sits 4 bytes into the quoted ICMP header
    else:
        p = spec.proto.value
        direct = f"{l3} {p} dport {spec.sport}"
    return [direct, f"{l3} {kind} type {errors} @th,{quoted},16 {spec.sport}"]


def table_comment(run_id: str, pid: int) -> str:
    return f"fwtrace run {run_id} pid {pid}; safe to delete"


COMMENT_RE = re.compile(r'comment "fwtrace run ([0-9a-f]{8}) pid (\d+);')


def table_batch(table: str, run_id: str, pid: int, where: Floors, count: int, rules: Callable[[str], str],
                hooks: tuple[tuple[str, str], ...] = _HOOKS) -> str:
    """The nft batch of a tracing table: per hook a base chain (one per device on ingress, only where
    the ruleset has ingress chains: nothing to observe elsewhere) holding `rules(prefix)`, which jump
    to `count` regular chains `PREFIX0..` that set the trace flag; the end chains; the run's comment."""
    chains = []
    for prefix, hook in hooks:
        body = rules(prefix)
        # Ingress chains (one per device that has ingress chains of the ruleset, Linux 5.10+ for
        # the inet family) only where the ruleset has some: nothing to observe elsewhere.
        bases = [(f"ingress_{n}", f'device "{dev}" ', where.priority(hook, dev)) for n, dev in enumerate(sorted(where.ingress))] \
            if hook == "ingress" else [(prefix, "", where.priority(hook))]
        for name, device, prio in bases:
            chains.append(f"\tchain {name} {{\n\t\ttype filter hook {hook} {device}priority {prio}; policy accept;\n{body}\t}}\n")
        if bases:
            chains.extend(f"\tchain {prefix}{i} {{\n\t\tmeta nftrace set 1\n\t}}\n" for i in range(count))
    for name, hook in END_CHAINS.items():
        chains.append(f"\tchain {name} {{\n\t\ttype filter hook {hook} priority {END_PRIORITY}; policy accept;\n\t}}\n")
    return f"table inet {table} {{\n\tcomment \"{table_comment(run_id, pid)}\"\n{''.join(chains)}}}\n"


def trace_plan(run_id: str, specs: list[PacketSpec], pid: int, where: Floors = Floors()) -> TracePlan:
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"bad run id {run_id!r}")
    table = table_name(run_id)
    entries: dict[str, Entry] = {}
    for spec in specs:
        for role, m in [("probe", match_probe(spec))] + [("reply", r) for r in match_replies(spec)]:
            old = entries.get(m)  # the same flow twice (--count --sport) shares one reply rule
            entries[m] = Entry(m, role, (old.idents if old else frozenset()) | {spec.ident})
    # One base chain per hook tests the matches and jumps to a regular chain per match that sets
    # the flag: the chain named in the first trace event then says which probe (or reply) it is,
    # with no need to learn rule handles (nft --echo --handle costs a full ruleset cache fetch:
    # a second on 50k rules), and other packets pay for one base chain per hook, not one per rule.
    batch = table_batch(table, run_id, pid, where, len(entries), lambda prefix: "".join(
        f"\t\t{m} jump {prefix}{i}\n" for i, m in enumerate(entries)))
    return TracePlan(run_id, table, tuple(entries.values()), batch, f"delete table inet {table}\n", where.unobserved)
