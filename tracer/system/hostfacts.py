"""Facts of the host beyond the ruleset that need sockets: the kernel's route lookups for a probe
and its reply (RTM_GETROUTE through pyroute2), and one real TCP connection to a service."""
from __future__ import annotations

import errno
import socket
from typing import Any, Optional

from tracer import system
from tracer.model import IPAddress, RouteLookup


def route_lookups(src: IPAddress, dst: IPAddress, iif: Optional[str]) -> tuple[Optional[RouteLookup], RouteLookup]:
    """(the probe's input route, arriving on `iif`; the route back to `src`), in the calling
    thread's namespace. RTM_GETROUTE with RTA_IIF runs ip_route_input (reverse-path and forwarding
    checks included), and an error there is the errno the kernel drops the packet with (EXDEV or
    EINVAL: rp_filter or a martian; EHOSTUNREACH: no forwarding; ENETUNREACH: no route)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import rt_type

    family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET

    def lookup(ipr: Any, query: str, **kw: Any) -> RouteLookup:
        try:
            msg = ipr.route("get", family=family, **kw)[0]
        except NetlinkError as e:
            return RouteLookup(query, errno.errorcode.get(e.code, str(e.code)))
        oif = msg.get_attr("RTA_OIF")
        dev = None
        if oif:
            links = ipr.get_links(oif)
            dev = links[0].get_attr("IFLA_IFNAME") if links else None
        return RouteLookup(query, None, dev, str(rt_type.get(msg["type"], msg["type"])))

    with IPRoute() as ipr:
        rin = None
        if iif:
            idx = ipr.link_lookup(ifname=iif)
            if idx:
                rin = lookup(ipr, f"ip route get {dst} from {src} iif {iif}", dst=str(dst), src=str(src), iif=idx[0])
        back = lookup(ipr, f"ip route get {src} from {dst}", dst=str(src), src=str(dst))
        if back.error == "EINVAL":  # `from` a non-local address (DNAT's backend): the plain lookup
            back = lookup(ipr, f"ip route get {src}", dst=str(src))
    return rin, back


def connect_check(netns: Optional[str], dst: IPAddress, dport: int, wait: float) -> str:
    """One real connection from `netns` (None: the calling thread's), then up to `wait` seconds
    for the service: "closed" (FIN before any data), "reset", "data", "open", "failed: why"."""
    fam = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    with system.netns(netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(wait + 0.5)
        try:
            s.connect((str(dst), dport))
        except OSError as e:
            return f"failed: {e.strerror or e}"
        s.settimeout(wait)
        try:
            data = s.recv(1)
        except socket.timeout:
            return "open"
        except ConnectionResetError:
            return "reset"
        except OSError as e:
            return f"failed: {e.strerror or e}"
        return "data" if data else "closed"
    finally:
        s.close()
