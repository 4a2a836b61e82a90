"""The probe packets of a request and the address to probe from an `ip -j addr` listing (moved
whole from tracer/pipeline/probe.py). Pure: no I/O."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from typing import TYPE_CHECKING, Optional

from tracer import correlate
from tracer.model import Action, EventKind, IPAddress, Mode, PacketSpec, ProbeRequest, Proto, TraceEvent
from tracer.plan import plan

if TYPE_CHECKING:
    from tracer.pipeline.state import Exchange, Sending


def build_specs(req: ProbeRequest, src: IPAddress, dst: IPAddress, rng: random.Random) -> list[PacketSpec]:
    specs = []
    base = req.sport if req.sport is not None else rng.randrange(33000, 60000)
    for proto in req.protos:  # --proto both: the TCP probes, then the UDP ones
        for i in range(req.count):
            sport = base if req.sport is not None else base + i
            # --from ssh://: 0, the client's kernel picks it (plan.match_probe then matches without it)
            ident = 0 if req.mode is Mode.FROM_SSH else rng.randrange(1, 0xFFFF if dst.version == 4 else 0xFFFFF)
            dport = req.dport if proto is not Proto.ICMP else i + 1  # echo sequence number
            specs.append(PacketSpec(proto, src, dst, sport, dport, req.flags, ident))
    return specs


def pick_address(addr_json: str, version: int, ifname: Optional[str] = None) -> Optional[IPAddress]:
    """The first global address of an up interface (of `ifname` if given) in `ip -j addr` output."""
    try:
        links = json.loads(addr_json)
    except ValueError:
        return None
    for link in links:
        if "UP" not in link.get("flags", []) or link.get("ifname") == "lo":
            continue
        if ifname is not None and link.get("ifname") != ifname:
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            ip = ipaddress.ip_address(a["local"])
            if ip.version == version:
                return ip
    return None


def _seen_as(spec: PacketSpec, events: tuple[TraceEvent, ...], roles: plan.Roles) -> PacketSpec:
    """--from ssh://: the client's kernel chose the probe's IPv4 id / IPv6 flow label, so the
    trace matched it by addresses, ports (and the SYN flag); the first traced copy of it says
    which it is, and the rest of the analysis knows the probe by it as usual."""
    from tracer.packet import parse_headers

    mine = plan.match_probe(spec)
    for e in events:
        entry = roles.get((e.table, e.chain))
        if e.kind is EventKind.RULE and entry is not None and entry.match == mine and e.packet:
            h = parse_headers(e.packet)
            if h is not None:
                return dataclasses.replace(spec, ident=h.ident)
    return spec


def learned(sending: Sending, exchanges: list[Exchange]) -> Sending:
    """The probes as the client's kernel sent them (their ids learnt from the trace)."""
    idents = frozenset(x.spec.ident for x in exchanges)
    tplan = dataclasses.replace(sending.tplan, entries=tuple(
        dataclasses.replace(e, idents=e.idents | idents) for e in sending.tplan.entries))
    return dataclasses.replace(sending, specs=tuple(x.spec for x in exchanges), tplan=tplan)


def answered(events: list[TraceEvent], spec: PacketSpec, roles: plan.Roles) -> bool:
    """The trace of the probe and of its reply have both ended: the probe's last nftrace event a
    drop by the ruleset or one of fwtrace's end-of-hook chains, the reply's the postrouting one
    (it left). The kernel emits a packet's trace while it processes it, in order on one socket,
    so once the reply's end is read nothing more of this exchange can come from the trace."""
    probe_events, reply_events = correlate.split_events(events, spec, roles)
    traced = [e for e in probe_events if e.source == "nftrace"]
    last = traced[-1] if traced else None
    ended = correlate.delivered(traced) or (last is not None and not last.table.startswith(plan.TABLE_PREFIX)
                                            and last.action is not None and last.action.action is Action.DROP)
    replied = [e for e in reply_events if e.source == "nftrace"]
    return ended and bool(replied) and replied[-1].table.startswith(plan.TABLE_PREFIX) and replied[-1].chain == "post_end"


def dropped(events: list[TraceEvent], spec: PacketSpec, roles: plan.Roles) -> bool:
    probe_events, _ = correlate.split_events(events, spec, roles)
    # a rule's drop, or the kernel freeing the probe (eBPF: skb:kfree_skb)
    return any((e.action is not None and e.action.action is Action.DROP) or e.kind is EventKind.DROP
               for e in probe_events if not e.table.startswith(plan.TABLE_PREFIX))
