"""Kernel verdicts: when the kernel, not a rule, dropped the probe, which of its checks did and
the setting behind it. Pure: counters, sysctls and route lookups in, a `KernelDrop` out.

The evidence, strongest first:
* the kernel's own drop reason for the probe (eBPF, `skb:kfree_skb`), when the run had it;
* the target namespace's SNMP counters that moved while the probe was out (/proc/net/snmp,
  /proc/net/netstat, /proc/net/snmp6, /proc/net/stat/nf_conntrack). They count the namespace's
  other traffic too, so a delta is reported as what it is, the counter that moved;
* the route lookups the kernel makes for the probe (`ip route get DST from SRC iif DEV`, which
  runs the reverse-path and forwarding checks) and for its reply (back to SRC);
* the sysctls that switch those checks (they name the setting, they prove nothing alone).

Sample counter lines (/proc/net/snmp pairs a header line with a value line per group):
    Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ...
    Ip: 2 64 17 0 1 ...
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from tracer.model import (  # noqa: F401  (RouteLookup: re-exported, the system layer builds it)
    EventKind,
    IPAddress,
    KernelDrop,
    Listener,
    PacketResult,
    Proto,
    RouteLookup,
    TraceEvent,
    Verdict,
)
from tracer.collect.sockets import serves

COUNTER_FILES = ("snmp", "netstat", "snmp6", "stat/nf_conntrack")

# The counters a kernel drop of the probe (or of its reply) moves, in the names nstat uses.
WATCHED = (
    "TcpExtIPReversePathFilter", "IpInAddrErrors", "IpExtInNoRoutes", "IpOutNoRoutes", "TcpExtListenOverflows",
    "TcpExtListenDrops", "Ip6InAddrErrors", "Ip6InNoRoutes", "Ip6OutNoRoutes", "ConntrackDrop",
    "ConntrackEarlyDrop", "ConntrackInsertFailed",
)

# causes, in the words of the summary line
RP_FILTER = "reverse-path filter"
FORWARDING = "forwarding disabled"
NO_ROUTE = "no route to the destination"
NO_ROUTE_BACK = "no route back for the reply"
OVERFLOW = "listen queue overflow"
CONNTRACK_FULL = "conntrack table full"
MARTIAN = "martian source"

# the finding each cause is explained by (tracer/diagnose/__init__.py)
CODES = {RP_FILTER: "rp-filter", FORWARDING: "forwarding-off", NO_ROUTE: "no-route", NO_ROUTE_BACK: "no-route-back",
         OVERFLOW: "accept-queue-full", CONNTRACK_FULL: "conntrack-full", MARTIAN: "martian-source"}

ACCEPT_QUEUE = ("TCP_LISTEN_OVERFLOW", "SOCKET_BACKLOG")
MARTIAN_REASONS = ("IP_INVALID_SOURCE", "IP_LOCAL_SOURCE", "IP_INVALID_DEST", "IP_INVALID_SOURCE_MARTIAN")


# --- counters ----------------------------------------------------------------------------------
def parse_counters(files: Mapping[str, str]) -> dict[str, int]:
    """name -> value from the counter files of one namespace (keys of COUNTER_FILES)."""
    out: dict[str, int] = {}
    for name, text in files.items():
        if name == "snmp6":  # `Ip6InReceives                   	12`
            for line in text.splitlines():
                f = line.split()
                if len(f) == 2 and f[1].isdigit():
                    out[f[0]] = int(f[1])
        elif name == "stat/nf_conntrack":
            out.update(_conntrack_stat(text))
        else:
            out.update(_paired(text))
    return out


def _paired(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        hname, _, hfields = head.partition(":")
        vname, _, vfields = values.partition(":")
        if hname != vname:
            continue
        for k, v in zip(hfields.split(), vfields.split()):
            if v.lstrip("-").isdigit():
                out[hname + k] = int(v)
    return out


def _conntrack_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header, then one line of hex numbers per CPU, summed
    (`entries` is the same table's size on every line)."""
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        return {}
    names = lines[0].split()
    sums = [0] * len(names)
    for line in lines[1:]:
        f = line.split()
        if len(f) != len(names):
            continue
        try:
            vals = [int(x, 16) for x in f]
        except ValueError:
            continue
        sums = [max(s, v) if n == "entries" else s + v for s, v, n in zip(sums, vals, names)]
    return {"Conntrack" + "".join(w.capitalize() for w in n.split("_")): s for n, s in zip(names, sums)}


def deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The watched counters that moved between the two readings."""
    return {k: after[k] - before[k] for k in WATCHED if k in after and k in before and after[k] != before[k]}


# --- what the system layer is asked, and answers ---------------------------------------------------
def sysctls_wanted(family: int, iif: Optional[str]) -> tuple[str, ...]:
    """The settings behind the kernel's checks of a probe arriving on `iif`."""
    keys = ["net.core.somaxconn", "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_count"]
    if family == 4:
        keys += ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.all.forwarding"]
        if iif:
            keys += [f"net.ipv4.conf.{iif}.rp_filter", f"net.ipv4.conf.{iif}.forwarding"]
    else:
        keys += ["net.ipv6.conf.all.forwarding"] + ([f"net.ipv6.conf.{iif}.forwarding"] if iif else [])
    return tuple(keys)


@dataclass(frozen=True)
class Facts:
    """What the run observed of one probe beyond the firewall's trace."""

    deltas: Mapping[str, int] = field(default_factory=dict)  # watched counters that moved during the probe
    counters: bool = False  # the counters were read (before and after)
    sysctls: Mapping[str, Optional[str]] = field(default_factory=dict)
    route_in: Optional[RouteLookup] = None  # the probe's own input route (with its iif)
    route_back: Optional[RouteLookup] = None  # the reply's route back to the source
    iif: Optional[str] = None
    ebpf: bool = False  # the eBPF programs watched the probe
    listeners: tuple[Listener, ...] = ()


# Reverse-path checks written as rules: xt_rpfilter inverted (drop what fails), nft's fib
# expression asking for the output interface of the source (`. iif`: strict, via the arrival one)
_RPFILTER_RULE = re.compile(r"-m rpfilter\b.*--invert|\bfib saddr\b[^;]*?\boif (?:missing|0)\b")


def rpfilter_rule(text: str) -> bool:
    return bool(_RPFILTER_RULE.search(text))


def rpfilter_loose(text: str) -> bool:
    """--loose / nft without `. iif`: any route back will do, not only by the arrival interface."""
    return "--loose" in text or ("fib saddr" in text and ". iif" not in text)


def needs_check(r: PacketResult) -> bool:
    """Could the kernel have dropped this probe? No rule dropped it and no answer came back."""
    if r.verdict in (Verdict.DROP, Verdict.REJECT) or r.reply_dropped:
        return False
    return r.reply.none or r.verdict is Verdict.UNKNOWN


# --- the decision --------------------------------------------------------------------------------
def decide(r: PacketResult, facts: Facts, dst: IPAddress, dport: int) -> tuple[Optional[KernelDrop], tuple[str, ...]]:
    """(the kernel's drop of the probe, what was checked). `dst`, `dport`: as the service sees
    them (after DNAT)."""
    checked = _checked(r, facts)
    if not needs_check(r):
        return None, checked
    drop = _probe_drop(r)
    if drop is not None and drop.reason == "NO_SOCKET":
        return None, checked  # no listener: the RST says so, tracer/diagnose/checks.no_listener
    found: Optional[KernelDrop] = None
    if drop is not None and drop.reason:
        found = _by_reason(r, drop, facts, dst, dport)
    if found is None:
        found = _by_counters(r, facts, dst, dport)
    if found is None:
        found = _by_routes(r, facts, dst)
    if found is None and drop is not None and drop.reason and drop.reason != "NETFILTER_DROP":
        found = KernelDrop(drop.reason, f"kernel drop ({drop.reason})", drop.location, None,
                           (f"eBPF: drop reason {drop.reason} at {drop.location}",))
    if found is None:
        return None, checked
    return _corroborated(r, found, facts), checked


def _probe_drop(r: PacketResult) -> Optional[TraceEvent]:
    drops = [s.event for s in r.steps if s.event.source == "ebpf" and s.event.kind is EventKind.DROP]
    return drops[-1] if drops else None


def _sysctl(facts: Facts, key: str) -> Optional[int]:
    v = facts.sysctls.get(key)
    return int(v) if v is not None and v.strip().lstrip("-").isdigit() else None


def _counter(facts: Facts, *names: str) -> list[str]:
    return [f"counter {n} +{facts.deltas[n]}" for n in names if facts.deltas.get(n, 0) > 0]


def _iif(r: PacketResult, facts: Facts, drop: Optional[TraceEvent] = None) -> Optional[str]:
    return (drop.iif if drop is not None and drop.iif else None) or facts.iif


def _rp_setting(facts: Facts, iif: Optional[str]) -> Optional[str]:
    """The rp_filter key in effect: max(conf.all, conf.IIF) (Documentation/networking/ip-sysctl.rst)."""
    a = _sysctl(facts, "net.ipv4.conf.all.rp_filter")
    d = _sysctl(facts, f"net.ipv4.conf.{iif}.rp_filter") if iif else None
    if d is not None and d >= (a or 0) and d > 0:
        return f"net.ipv4.conf.{iif}.rp_filter={d}"
    if a:
        return f"net.ipv4.conf.all.rp_filter={a}"
    return None


def _forwarding_off(r: PacketResult, facts: Facts, iif: Optional[str]) -> Optional[str]:
    """The forwarding switch that is off for packets arriving on `iif`, if one is: IPv4 checks
    the input device's conf.IIF.forwarding (IN_DEV_FORWARD in ip_route_input_slow), which
    net.ipv4.ip_forward sets for all; IPv6 checks conf.all.forwarding."""
    if r.spec.family == 6:
        v = _sysctl(facts, "net.ipv6.conf.all.forwarding")
        return "net.ipv6.conf.all.forwarding=0" if v == 0 else None
    dev = _sysctl(facts, f"net.ipv4.conf.{iif}.forwarding") if iif else None
    if dev == 0:
        return "net.ipv4.ip_forward=0" if _sysctl(facts, "net.ipv4.ip_forward") == 0 else f"net.ipv4.conf.{iif}.forwarding=0"
    if dev is None and _sysctl(facts, "net.ipv4.ip_forward") == 0:
        return "net.ipv4.ip_forward=0"
    return None


def _by_reason(r: PacketResult, drop: TraceEvent, facts: Facts, dst: IPAddress, dport: int) -> Optional[KernelDrop]:
    reason, at = drop.reason or "", drop.location
    said = (f"eBPF: drop reason {reason} at {at}",)
    iif = _iif(r, facts, drop)
    if reason == "IP_RPFILTER":
        return KernelDrop(reason, RP_FILTER, at, _rp_setting(facts, iif), said)
    if reason in ("IP_INADDRERRORS", "IP_INNOROUTES"):
        off = _forwarding_off(r, facts, iif)
        if off is not None and not _is_local(facts, dst):
            return KernelDrop(reason, FORWARDING, at, off, said)
        return KernelDrop(reason, NO_ROUTE, at, f"no route to {dst}", said)
    if reason in ACCEPT_QUEUE:
        return KernelDrop(reason, OVERFLOW, at, _backlog(facts, dst, dport), said)
    if reason in MARTIAN_REASONS:
        return KernelDrop(reason, MARTIAN, at, f"source {r.spec.src} is not valid on {iif or 'its interface'}", said)
    if reason == "NETFILTER_DROP" and _counter(facts, "ConntrackDrop", "ConntrackEarlyDrop", "ConntrackInsertFailed"):
        return KernelDrop("NETFILTER_DROP", CONNTRACK_FULL, at, _ct_setting(facts), said)
    return None


def _is_local(facts: Facts, dst: IPAddress) -> bool:
    return facts.route_in is not None and facts.route_in.kind == "local"


def _backlog(facts: Facts, dst: IPAddress, dport: int) -> str:
    mine = [s for s in facts.listeners if s.proto is Proto.TCP and s.port == dport and serves(s, dst)]
    somax = facts.sysctls.get("net.core.somaxconn")
    sock = f"{mine[0].addr}:{dport}" if mine else f"port {dport}"
    return f"listen backlog of {sock}" + (f" (capped by net.core.somaxconn={somax})" if somax else "")


def _ct_setting(facts: Facts) -> Optional[str]:
    mx, n = facts.sysctls.get("net.netfilter.nf_conntrack_max"), facts.sysctls.get("net.netfilter.nf_conntrack_count")
    if mx is None:
        return None
    return f"net.netfilter.nf_conntrack_max={mx}" + (f" ({n} entries in use)" if n is not None else "")


def _by_counters(r: PacketResult, facts: Facts, dst: IPAddress, dport: int) -> Optional[KernelDrop]:
    iif = facts.iif
    v6 = r.spec.family == 6
    if not v6 and (c := _counter(facts, "TcpExtIPReversePathFilter")):
        return KernelDrop("IP_RPFILTER", RP_FILTER, "ip_rcv_finish_core", _rp_setting(facts, iif), tuple(c))
    if c := _counter(facts, "Ip6InAddrErrors" if v6 else "IpInAddrErrors"):
        off = _forwarding_off(r, facts, iif)
        if off is not None:
            return KernelDrop("IP_INADDRERRORS", FORWARDING, "ip6_forward" if v6 else "ip_error", off, tuple(c))
    if c := _counter(facts, "Ip6InNoRoutes" if v6 else "IpExtInNoRoutes"):
        return KernelDrop("IP_INNOROUTES", NO_ROUTE, None if v6 else "ip_error", f"no route to {dst}", tuple(c))
    if r.spec.proto is Proto.TCP and (c := _counter(facts, "TcpExtListenOverflows")):
        return KernelDrop("TCP_LISTEN_OVERFLOW", OVERFLOW, "tcp_conn_request", _backlog(facts, dst, dport),
                          tuple(c + _counter(facts, "TcpExtListenDrops")))
    if c := _counter(facts, "Ip6OutNoRoutes" if v6 else "IpOutNoRoutes"):
        back = facts.route_back
        if back is None or back.error:
            fn = "inet_csk_route_req" if r.spec.proto is Proto.TCP and not v6 else None
            return KernelDrop("IP_OUTNOROUTES", NO_ROUTE_BACK, fn, f"no route to {r.spec.src}",
                              tuple(c + _counter(facts, "TcpExtListenDrops")))
    if c := _counter(facts, "ConntrackDrop", "ConntrackEarlyDrop", "ConntrackInsertFailed"):
        return KernelDrop("NETFILTER_DROP", CONNTRACK_FULL, "nf_conntrack_in", _ct_setting(facts), tuple(c))
    return None


def _by_routes(r: PacketResult, facts: Facts, dst: IPAddress) -> Optional[KernelDrop]:
    """The kernel's own route lookups for this packet, when no counter moved (or none was read)."""
    iif, rin = facts.iif, facts.route_in
    if rin is not None and rin.error:
        said = (f"route lookup {rin.said()}",)
        if rin.error == "EXDEV" or (rin.error == "EINVAL" and _rp_setting(facts, iif)):
            return KernelDrop("IP_RPFILTER", RP_FILTER, "fib_validate_source", _rp_setting(facts, iif), said)
        if rin.error == "EHOSTUNREACH" and (off := _forwarding_off(r, facts, iif)):
            return KernelDrop("IP_INADDRERRORS", FORWARDING, "ip_route_input_slow", off, said)
        if rin.error in ("ENETUNREACH", "EHOSTUNREACH"):
            return KernelDrop("IP_INNOROUTES", NO_ROUTE, "ip_route_input_slow", f"no route to {dst}", said)
        if rin.error == "EINVAL":
            return KernelDrop("IP_INVALID_SOURCE", MARTIAN, "ip_route_input_slow",
                              f"source {r.spec.src} is not valid on {iif or 'its interface'}", said)
    back = facts.route_back
    if back is not None and back.error and (rin is None or rin.kind == "local") and r.verdict is Verdict.ACCEPT:
        return KernelDrop("IP_OUTNOROUTES", NO_ROUTE_BACK, None, f"no route to {r.spec.src}",
                          (f"route lookup {back.said()}",))
    return None


def _consumed(r: PacketResult) -> Optional[str]:
    took = [s.event for s in r.steps if s.event.source == "ebpf" and s.event.kind is EventKind.CONSUME]
    return f"no drop reason; the probe was consumed by {took[-1].location} without an answer" if took else None


def _corroborated(r: PacketResult, found: KernelDrop, facts: Facts) -> KernelDrop:
    """`found` with the other evidence that says the same: counters, route lookups, the setting."""
    ev = list(found.evidence)
    if facts.ebpf and not any(e.startswith("eBPF") for e in ev):
        ev.insert(0, f"eBPF: {ebpf_seen}" if (ebpf_seen := _consumed(r)) else "eBPF: no drop reason for the probe")
    more = {RP_FILTER: ("TcpExtIPReversePathFilter",), FORWARDING: ("IpInAddrErrors", "Ip6InAddrErrors"),
            NO_ROUTE: ("IpExtInNoRoutes", "Ip6InNoRoutes"), NO_ROUTE_BACK: ("IpOutNoRoutes", "Ip6OutNoRoutes"),
            OVERFLOW: ("TcpExtListenOverflows", "TcpExtListenDrops"),
            CONNTRACK_FULL: ("ConntrackDrop", "ConntrackEarlyDrop", "ConntrackInsertFailed")}.get(found.cause, ())
    ev += [c for c in _counter(facts, *more) if c not in ev]
    route = facts.route_back if found.cause == NO_ROUTE_BACK else facts.route_in
    if route is not None and route.error and not any(e.startswith("route lookup") for e in ev):
        ev.append(f"route lookup {route.said()}")
    if found.setting and "=" in found.setting.split(" ")[0]:
        ev.append(f"sysctl {found.setting.split(' ')[0]}")
    return KernelDrop(found.reason, found.cause, found.function, found.setting, tuple(ev))


def _checked(r: PacketResult, facts: Facts) -> tuple[str, ...]:
    """What the run looked at, for a report that must say so when nothing explained the drop."""
    out = []
    if facts.ebpf:
        d = _probe_drop(r)
        out.append(f"eBPF drop reasons: {d.reason} at {d.location}" if d is not None else "eBPF drop reasons: none for the probe")
    else:
        out.append("eBPF drop reasons: not watched (--ebpf off)")
    if facts.counters:
        moved = ", ".join(f"{k} +{v}" for k, v in facts.deltas.items())
        out.append(f"counters {', '.join(WATCHED)}: " + (f"moved: {moved}" if moved else "unchanged"))
    else:
        out.append("counters: not read")
    for rl in (facts.route_in, facts.route_back):
        if rl is not None:
            out.append(f"route lookup {rl.said()}")
    shown = [f"{k}={v}" for k, v in facts.sysctls.items() if v is not None]
    if shown:
        out.append("sysctls " + " ".join(shown))
    return tuple(out)


def summary(k: KernelDrop) -> str:
    """`dropped by the kernel: reverse-path filter, net.ipv4.conf.eth0.rp_filter=1`"""
    return f"dropped by the kernel: {k.cause}" + (f", {k.setting}" if k.setting else "")


def evidence_words(k: KernelDrop) -> str:
    return "; ".join(k.evidence) if k.evidence else "no evidence recorded"


def by_iif(steps: Sequence[object]) -> Optional[str]:
    """The interface the probe arrived on, as the trace saw it."""
    for s in steps:
        ev = getattr(s, "event", None)
        if ev is not None and ev.iif and ev.source != "ebpf":
            return str(ev.iif)
    return None
