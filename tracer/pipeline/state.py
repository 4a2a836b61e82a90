"""What the probe's steps hand each other (tracer/pipeline/probe.py to analysis.py): the target, the
probes as sent, the instrumentation in place, one exchange per probe. Pure data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from tracer.model import IPAddress, Mode, PacketSpec, TraceEvent
from tracer.plan import plan, verify
from tracer.plan.commands import Captured

if TYPE_CHECKING:
    from tracer.inject.ingress import Route
    from tracer.plan.kernplan import KernPlan


@dataclass(frozen=True)
class Target:
    """Who talks to whom: the probe's addresses and, for simulated ingress, where it arrives."""

    src: IPAddress
    dst: IPAddress
    via: Optional[str] = None  # simulated ingress: the interface it arrives on
    back: Optional["Route"] = None  # the route from the target back to src
    # Simulated ingress: the next hop of the route back (src on-link, or the gateway) that no host
    # answers ARP / neighbour solicitation for: its reply would wait for resolution in the
    # neighbour table and never reach the catcher, so it gets a temporary journaled entry.
    silent_hop: Optional[IPAddress] = None


@dataclass(frozen=True)
class Sending:
    """The probes as they will be sent, and how."""

    mode: Mode
    target: Target
    specs: tuple[PacketSpec, ...]
    datas: tuple[bytes, ...]
    tplan: plan.TracePlan
    caveats: tuple[str, ...] = ()
    fallback: Optional[str] = None  # "eth0: why simulated ingress was not possible"
    app_specs: tuple[PacketSpec, ...] = ()  # --app ftp: the data probes, their ports learnt on the control session

    @property
    def via(self) -> Optional[str]:
        return self.target.via if self.mode is Mode.INGRESS else None


@dataclass(frozen=True)
class Armed:
    """The instrumentation in place: what the analysis needs to know about it."""

    kplan: Optional["KernPlan"]
    generations: tuple[int, ...]  # before and after fwtrace's table was added
    own: frozenset[tuple[str, str, int]]  # (family, table, handle) of fwtrace's LOG/NFLOG rules in nf_tables
    tcp_loose: Optional[str]
    notes: tuple[str, ...] = ()
    own_commits: int = 0  # nft transactions of iptables-nft's --log rules, in and out
    proof: Optional[verify.Start] = None  # the cleanup proof's listing before the first nft change


@dataclass(frozen=True)
class Exchange:
    """One probe sent, what the trace saw of it, and its reply."""

    spec: PacketSpec
    events: tuple[TraceEvent, ...]
    reply: Optional[Captured]
    conntrack: Optional[str] = None
    counters: Optional[dict[str, int]] = None  # watched SNMP counters that moved (diagnose/kernverdict.py); None: not read
    client: Optional[tuple[str, str]] = None  # --from ssh://: what the client's socket saw (kind, text)
