"""Who answers ARP / neighbour solicitation for an address on a link (system layer).

Used before anything is changed: --from-netns must reach the target itself (the MAC that answers
for the next hop is one of the target's), and a simulated client on the target's own subnet
needs a neighbour entry for its reply to reach the catcher (issue 21). The solicitation is sent
from the calling thread's namespace with sockets of our own: one ARP request or one neighbour
solicitation, no packet to any port.
"""
from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import time
from typing import Optional

from tracer import system
from tracer.model import IPAddress

ETH_P_ARP = 0x0806
VALID = {"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"}


def parse_neigh(text: str) -> Optional[str]:
    """The link-layer address of a usable entry in `ip -j neigh show to ADDR dev DEV` output, e.g.
    [{"dst":"192.0.2.2","dev":"eth0","lladdr":"3a:1f:0e:8c:2b:61","state":["REACHABLE"]}]"""
    try:
        entries = json.loads(text or "[]")
    except ValueError:
        return None
    for e in entries if isinstance(entries, list) else []:
        if e.get("lladdr") and VALID & set(e.get("state", [])):
            return str(e["lladdr"]).lower()
    return None


def cached(addr: IPAddress, dev: str) -> Optional[str]:
    done = system.run(["ip", "-j", "neigh", "show", "to", str(addr), "dev", dev], check=False)
    return parse_neigh(done.stdout) if done.returncode == 0 else None


def _mac(dev: str) -> bytes:
    links = json.loads(system.run(["ip", "-j", "link", "show", "dev", dev]).stdout)
    return bytes.fromhex(links[0]["address"].replace(":", ""))


def _ipv4_of(dev: str) -> bytes:
    addrs = json.loads(system.run(["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout)
    for link in addrs:
        for a in link.get("addr_info", []):
            if "local" in a:
                return ipaddress.ip_address(a["local"]).packed
    return bytes(4)  # an ARP probe (RFC 5227): answered all the same


def solicit(addr: IPAddress, dev: str, timeout: float) -> Optional[str]:
    """Ask the link once; the MAC that answered, or None when nobody did within `timeout`."""
    return _arp(addr, dev, timeout) if addr.version == 4 else _nd(addr, dev, timeout)


def _arp(addr: IPAddress, dev: str, timeout: float) -> Optional[str]:
    mac = _mac(dev)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((dev, ETH_P_ARP))
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, _ipv4_of(dev), bytes(6), addr.packed)
        s.send(b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame = s.recv(128)
            if len(frame) < 42:
                continue
            op, sha, spa = struct.unpack("!6xH6s4s", frame[14:32])
            if op == 2 and spa == addr.packed:
                return sha.hex(":")
    return None


def _nd(addr: IPAddress, dev: str, timeout: float) -> Optional[str]:
    packed = addr.packed
    group = ipaddress.ip_address(b"\xff\x02" + bytes(9) + b"\x01\xff" + packed[13:])
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        # type 135, code 0, checksum (the kernel fills it in for ICMPv6 raw sockets), reserved,
        # target, and the source link-layer address option.
        ns = struct.pack("!BBHI16sBB6s", 135, 0, 0, 0, packed, 1, 1, _mac(dev))
        s.sendto(ns, (str(group), 0, 0, socket.if_nametoindex(dev)))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            msg = s.recv(256)
            if len(msg) < 24 or msg[0] != 136 or msg[8:24] != packed:
                continue
            opts = msg[24:]
            while len(opts) >= 8 and opts[1]:
                if opts[0] == 2:
                    return opts[2:8].hex(":")
                opts = opts[opts[1] * 8:]
            return "?"  # answered without its address: somebody is there
    return None


def resolve(addr: IPAddress, dev: str, timeout: float = 0.5) -> Optional[str]:
    """The neighbour entry's address if the kernel has a usable one, else who answers now; "?"
    on a link without neighbour resolution (wireguard, tun: no link-layer address, NOARP) or
    where the question cannot be asked: nothing waits for an answer there."""
    found = cached(addr, dev)
    if found:
        return found
    links = json.loads(system.run(["ip", "-j", "link", "show", "dev", dev], check=False).stdout or "[]")
    if not links or not links[0].get("address") or "NOARP" in links[0].get("flags", []):
        return "?"
    try:
        return solicit(addr, dev, timeout)
    except OSError:
        return "?"
