"""Honest probe modes: which address to probe, and which requests cannot give a true answer.
Pure: works on argparse values and `ip -j addr` output, raises UsageError with a hint.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Optional, Union

from tracer.errors import UsageError
from tracer.model import IPAddress, Proto

Iface = tuple[str, Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]]  # (device, address/prefix)


def interfaces(addr_json: str) -> list[Iface]:
    """The global addresses of the up interfaces (lo aside) in `ip -j addr` output, in order."""
    try:
        links = json.loads(addr_json)
    except ValueError:
        return []
    out: list[Iface] = []
    for link in links:
        if "UP" not in link.get("flags", []) or link.get("ifname") == "lo":
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and "local" in a:
                ip = ipaddress.ip_address(a["local"])
                out.append((link["ifname"], ipaddress.ip_interface(f"{ip}/{a.get('prefixlen', ip.max_prefixlen)}")))
    return out


def reachable_dst(target_json: str, sender_json: str, version: int) -> Optional[IPAddress]:
    """The target's address a sender on a link would use: one on a subnet the sender shares
    (a Docker host's docker0 172.17.0.1 is never it for a client on eth0's network), else None
    (the caller then asks the sender's routes)."""
    sender = [i for _, i in interfaces(sender_json) if i.version == version]
    for _, t in interfaces(target_json):
        if t.version == version and any(t.ip in s.network for s in sender):
            return t.ip
    return None


def own_addresses(addr_json: str) -> set[IPAddress]:
    try:
        links = json.loads(addr_json)
    except ValueError:
        return set()
    return {ipaddress.ip_address(a["local"]) for link in links for a in link.get("addr_info", []) if "local" in a}


def broadcasts(addr_json: str) -> set[IPAddress]:
    return {i.network.broadcast_address for _, i in interfaces(addr_json) if i.version == 4 and i.network.prefixlen < 31}


BOTH = "both"  # --proto both: TCP and UDP to the same port in one run


def check_request(ns: Any) -> None:
    """Requests that would print a claim the run cannot check: refused with a hint."""
    proto = Proto.TCP if ns.proto == BOTH else Proto(ns.proto)
    if proto is Proto.ICMP and ns.dport is not None:
        raise UsageError("--dport does not apply to --proto icmp (an echo request has no port)",
                         "drop --dport, or probe the port with --proto tcp or udp")
    if ns.via == "lo":
        raise UsageError("--via lo: a packet arriving on lo is a local packet, not a remote client's",
                         "name the interface a client's packets arrive on (e.g. --via eth0), or use --local")
    dst = ns.dst
    if dst is not None and (dst.is_multicast or dst == ipaddress.ip_address("255.255.255.255") or dst.is_unspecified):
        raise UsageError(f"--dst {dst} is not a unicast address: fwtrace traces one flow to one service",
                         "give the address of the service's host")


def check_addresses(src: IPAddress, dst: IPAddress, target_json: str, simulated: bool) -> None:
    """Against the target's own addresses: a simulated client cannot be the target itself, and a
    subnet broadcast is not one service."""
    if dst in broadcasts(target_json):
        raise UsageError(f"--dst {dst} is a broadcast address of the target", "give the address of the service's host")
    if simulated and src in own_addresses(target_json):
        raise UsageError(f"--src {src} is an address of the target itself: its packets cannot arrive from outside",
                         "give a remote client's address (default 203.0.113.5), or use --local")


def link_addresses(addr_json: str) -> set[str]:
    """The link-layer addresses of the interfaces in `ip -j addr` output, lower case."""
    try:
        links = json.loads(addr_json)
    except ValueError:
        return set()
    return {str(link["address"]).lower() for link in links if link.get("address")}


def check_source(src: IPAddress, target_json: str, mode: str) -> None:
    """A remote client (simulated, or another namespace) cannot have the target's own address:
    the target would take its replies for its own packets."""
    if src in own_addresses(target_json):
        raise UsageError(f"--src {src} is an address of the target itself: its packets cannot arrive from outside",
                         "give a remote client's address (default 203.0.113.5), or use --local"
                         if mode == "ingress" else "leave --src out (the sender's own address), or use --local")


def check_destination(dst: IPAddress, target_json: str, forwards: Optional[bool]) -> None:
    """A probe from outside must be for the target: one of its addresses, or one it forwards
    (`forwards`: its ip_forward / forwarding sysctl is on; None when not asked: dst is its own)."""
    if dst in own_addresses(target_json) or forwards:
        return
    mine = sorted({str(i.ip) for _, i in interfaces(target_json) if i.version == dst.version})
    raise UsageError(f"--dst {dst} is not an address of the target, and the target does not forward IPv{dst.version}",
                     (f"give one of its addresses ({', '.join(mine)})" if mine else "give one of its addresses")
                     + ", or use --local to probe a connection the target makes")


def check_link(from_netns: str, dst: IPAddress, route_dev: Optional[str], hop: Optional[IPAddress],
               answered: Optional[str], target_json: str) -> None:
    """--from-netns must be a host on a link to the target: its route to dst leaves by a device on
    which the next hop (the gateway, or dst itself) is answered by one of the target's interfaces."""
    hint = f"give a namespace on a link to the target (see `ip -n {from_netns} route get {dst}`)"
    if route_dev is None or hop is None:
        raise UsageError(f"--from-netns {from_netns} has no route to {dst}: it has no link to the target", hint)
    if answered is None:
        how = "ARP" if hop.version == 4 else "neighbour solicitation"
        raise UsageError(f"--from-netns {from_netns} has no link to the target: no host answers {how} for {hop} "
                         f"on its {route_dev}", hint)
    if answered != "?" and answered not in link_addresses(target_json):
        raise UsageError(f"--from-netns {from_netns} has no link to the target: {hop} on its {route_dev} is "
                         f"answered by {answered}, not by an interface of the target", hint)
