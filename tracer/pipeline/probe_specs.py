"""The probe packets of a request and the address to probe from an `ip -j addr` listing (moved
whole from tracer/pipeline/probe.py). Pure: no I/O."""
from __future__ import annotations

import ipaddress
import json
import random
from typing import Optional

from tracer.model import IPAddress, PacketSpec, ProbeRequest, Proto


def build_specs(req: ProbeRequest, src: IPAddress, dst: IPAddress, rng: random.Random) -> list[PacketSpec]:
    specs = []
    base = req.sport if req.sport is not None else rng.randrange(33000, 60000)
    for proto in req.protos:  # --proto both: the TCP probes, then the UDP ones
        for i in range(req.count):
            sport = base if req.sport is not None else base + i
            ident = rng.randrange(1, 0xFFFF if dst.version == 4 else 0xFFFFF)
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
