"""What `fwtrace watch` adds to a firewall, and the capture filter it watches the wire with (no I/O).

The instrumentation is the probe's (tracer/plan/plan.py): one nft table of fwtrace's own whose base
chains hook in below every chain of the ruleset and only set `meta nftrace set 1`; here they match
the watch's filter instead of a probe, and each match is rate-limited in the kernel: beyond the
budget a packet only bumps a counter (`limit rate over ... counter return`: `return` in a base
chain is its accept policy, i.e. "go on to the next chain", as for every other packet), so a
flood can flood neither the tool nor the trace socket, and the counters say how many packets the
budget left untraced. No terminal verdict; existing rules are never touched.
"""
from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Optional, Union

from tracer.model import Proto
from tracer.plan.plan import RUN_ID_RE, Entry, Floors, TracePlan, table_batch, table_name

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# The kernel-side budget: packets per second traced per direction (burst on top). Beyond it the
# counters count what was not traced.
RATE = 50
BURST = 100
# The longest watch: an hour. Instrumentation that outlives the engineer's attention is a risk.
MAX_DURATION = 3600.0
MAX_PACKETS = 1_000_000


@dataclass(frozen=True)
class WatchFilter:
    """Which packets a watch traces: from `src` (an address or prefix), to `dport`, of `proto`;
    None matches any. `everything`: --all (no criterion at all was given on purpose)."""

    src: Optional[Network] = None
    dport: Optional[int] = None
    proto: Optional[Proto] = None
    everything: bool = False

    @property
    def family(self) -> Optional[int]:
        return self.src.version if self.src is not None else None

    def describe(self) -> str:
        parts = []
        if self.proto is not None:
            parts.append(self.proto.value)
        if self.src is not None:
            parts.append(f"from {self.src}")
        if self.dport is not None:
            parts.append(f"to port {self.dport}")
        return " ".join(parts) or "all traffic"

    def to_json(self) -> dict[str, object]:
        return {"src": str(self.src) if self.src else None, "dport": self.dport,
                "proto": self.proto.value if self.proto else None, "all": self.everything}


def _l4(f: WatchFilter) -> str:
    if f.proto is Proto.ICMP:
        return "meta l4proto { icmp, ipv6-icmp }"
    if f.proto is not None:
        return f"meta l4proto {f.proto.value}"
    return "meta l4proto { tcp, udp }" if f.dport is not None else ""


def match_forward(f: WatchFilter) -> str:
    """The client's packets: from src, to dport."""
    parts = []
    if f.src is not None:
        parts.append(f"{'ip' if f.src.version == 4 else 'ip6'} saddr {f.src}")
    else:
        parts.append("meta nfproto { ipv4, ipv6 }")
    if _l4(f):
        parts.append(_l4(f))
    if f.dport is not None and f.proto is not Proto.ICMP:
        parts.append(f"th dport {f.dport}")
    return " ".join(parts)


def match_reply(f: WatchFilter) -> str:
    """The service's answers: back to src (from any port: behind a port-forward (DNAT) the
    service answers from its own port, and the flows join it by its conntrack entry), or without
    a source from dport (ICMP errors quoting the client's packets are matched by their
    destination only)."""
    parts = []
    if f.src is not None:
        parts.append(f"{'ip' if f.src.version == 4 else 'ip6'} daddr {f.src}")
    else:
        parts.append("meta nfproto { ipv4, ipv6 }")
    if _l4(f):
        parts.append(_l4(f))
    if f.dport is not None and f.proto is not Proto.ICMP and f.src is None:
        parts.append(f"th sport {f.dport}")
    return " ".join(parts)


# Hooks where the flag is set (as in plan.py); the chain of ours for entry i is f"{prefix}{i}".
_HOOKS = (("pre", "prerouting"), ("out", "output"), ("ing", "ingress"))
FORWARD, REPLY = 0, 1


def watch_plan(run_id: str, f: WatchFilter, pid: int, where: Floors = Floors(), rate: int = RATE,
               burst: int = BURST) -> TracePlan:
    """The watch's table: entry 0 traces the client's packets, entry 1 the answers; each base
    chain counts what the budget leaves untraced in a rule of its own, before the tracing one."""
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"bad run id {run_id!r}")
    table = table_name(run_id)
    entries = (Entry(match_forward(f), "probe", frozenset()), Entry(match_reply(f), "reply", frozenset()))
    limit = f"limit rate over {rate}/second burst {burst} packets"
    batch = table_batch(table, run_id, pid, where, len(entries), lambda prefix: "".join(
        f"\t\t{e.match} {limit} counter return\n\t\t{e.match} counter jump {prefix}{i}\n"
        for i, e in enumerate(entries)), _HOOKS)
    return TracePlan(run_id, table, entries, batch, f"delete table inet {table}\n", where.unobserved)


def base_chains(plan: TracePlan) -> tuple[str, ...]:
    """The base chains of the watch's table (whose counters say what was traced and what not)."""
    return tuple(re.findall(r"^\tchain ((?:pre|out|ingress_\d+)) \{\n\t\ttype", plan.batch, re.M))


_COUNTER = re.compile(r"counter packets (\d+) bytes \d+ (return|jump (pre|out|ing)(\d+))")


@dataclass(frozen=True)
class Budget:
    """What the kernel counted in the watch's base chains: packets traced, packets the budget
    left untraced, and `arrived`: the client's packets that reached netfilter's prerouting hook
    (traced or not)."""

    traced: int = 0
    over: int = 0
    arrived: int = 0
    read: bool = False  # the counters could be listed

    @property
    def hit(self) -> bool:
        return self.over > 0


def budget(listing: str) -> Budget:
    """The counters in `nft list chain` of the watch's base chains (pure). In each base chain a
    `... limit rate over ... counter return` rule stands right before the tracing rule of the
    same entry (`... counter jump pre0`). The ingress chains' counters are left out: what they
    count meets prerouting next (what they see dropped by a netdev chain is in its trace)."""
    traced = over = arrived = 0
    pending = 0
    found = False
    for m in _COUNTER.finditer(listing):
        found = True
        n = int(m.group(1))
        if m.group(2) == "return":
            pending = n
            continue
        if m.group(3) == "ing":  # a packet there meets prerouting next: counted there, once
            pending = 0
            continue
        traced += n
        over += pending
        if m.group(3) == "pre" and int(m.group(4)) == FORWARD:
            arrived += n + pending
        pending = 0
    return Budget(traced, over, arrived, found)  # no counter in the listing: unknown, not zero


# --- the capture's classic BPF filter -------------------------------------------------------------
# On an AF_PACKET SOCK_DGRAM socket the filter sees the packet from its network header on (both
# directions); skb->protocol is read through the ancillary offset.
_SKF_AD_PROTOCOL = -0x1000 + 0
_LD_H_ABS, _LD_B_ABS, _LD_W_ABS, _LD_H_IND = 0x28, 0x30, 0x20, 0x48
_LDX_MSH = 0xB1
_JEQ, _JSET, _AND, _RET = 0x15, 0x45, 0x54, 0x06
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
SNAPLEN = 256


def _u32(n: int) -> int:
    return n & 0xFFFFFFFF


def capture_filter(f: WatchFilter) -> bytes:
    """A classic BPF program (struct sock_filter[]) that accepts the packets that match the filter
    in any one of its criteria (so a near miss -- the client's packets to another port, other
    clients to the port -- is seen too and tells a wrong filter from traffic that never came);
    user space sorts exact matches from near ones (`matches`, `near`). IPv6 only by protocol
    and port when the source is IPv6 (or no source is given)."""
    prog: list[tuple[int, int, int, int]] = []  # code, jt, jf, k; jumps to "accept"/"reject" resolved below
    fix: list[tuple[int, str, str]] = []

    def op(code: int, k: int, jt: str = "", jf: str = "") -> None:
        if jt or jf:
            fix.append((len(prog), jt, jf))
        prog.append((code, 0, 0, _u32(k)))

    labels: dict[str, int] = {}
    v4 = f.src is None or f.src.version == 4
    v6 = f.src is None or f.src.version == 6
    op(_LD_H_ABS, _SKF_AD_PROTOCOL)
    if v4:
        op(_JEQ, _ETH_P_IP, jf="v6")
        if f.src is not None:
            op(_LD_W_ABS, 12)
            op(_AND, int(f.src.netmask))
            op(_JEQ, int(f.src.network_address), jt="accept")
        if f.dport is not None:
            op(_LD_B_ABS, 9)
            op(_JEQ, 6, jt="port4")
            op(_JEQ, 17, jf="other4")
            labels["port4"] = len(prog)
            op(_LD_H_ABS, 6)
            op(_JSET, 0x1FFF, jt="reject")  # a later fragment has no ports
            op(_LDX_MSH, 0)
            op(_LD_H_IND, 2)
            op(_JEQ, f.dport, jt="accept")
        labels["other4"] = len(prog)
        if f.src is None and f.dport is None:
            op(_LD_B_ABS, 9)
            op(_JEQ, {Proto.TCP: 6, Proto.UDP: 17, Proto.ICMP: 1, None: 6}[f.proto], jt="accept")
        op(_RET, 0)
    labels["v6"] = len(prog)
    if v6:
        op(_JEQ, _ETH_P_IPV6, jf="reject")
        if f.dport is not None:
            op(_LD_B_ABS, 6)
            op(_JEQ, 6, jt="port6")
            op(_JEQ, 17, jf="other6")
            labels["port6"] = len(prog)
            op(_LD_H_ABS, 42)
            op(_JEQ, f.dport, jt="accept")
        labels["other6"] = len(prog)
        if f.src is not None:  # an IPv6 source prefix: its first 32 bits here, the rest in user space
            plen = min(f.src.prefixlen, 32)
            mask = _u32(0xFFFFFFFF << (32 - plen)) if plen else 0
            op(_LD_W_ABS, 8)
            op(_AND, mask)
            op(_JEQ, (int(f.src.network_address) >> 96) & mask, jt="accept")
        elif f.dport is None:
            op(_LD_B_ABS, 6)
            op(_JEQ, {Proto.TCP: 6, Proto.UDP: 17, Proto.ICMP: 58, None: 6}[f.proto], jt="accept")
    labels["reject"] = len(prog)
    op(_RET, 0)
    labels["accept"] = len(prog)
    op(_RET, SNAPLEN)
    if f.everything and f.src is None and f.dport is None and f.proto is None:
        prog = [(_RET, 0, 0, SNAPLEN)]
        fix = []
    for at, jt, jf in fix:
        code, _, _, k = prog[at]
        t = labels[jt] - at - 1 if jt else 0
        e = labels[jf] - at - 1 if jf else 0
        assert 0 <= t < 256 and 0 <= e < 256
        prog[at] = (code, t, e, k)
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def capture_filter_size(code: bytes) -> int:
    return len(code) // 8
