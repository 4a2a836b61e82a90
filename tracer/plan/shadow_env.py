"""An evidence bundle's interfaces, addresses and routes for the shadow (pure): the text of
`environment/addresses.txt` (`ip addr show`) and `environment/routes.txt` (`ip route show table
all`, a blank line, `ip -6 route show table all`, a blank line, `ip rule show`), as
tracer/system/bundle_io.environment_in writes them; tests/data/env-*.txt are captured ones.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping, Optional

from tracer.plan.shadow import Link, Route

ROUTE_TYPES = ("local", "broadcast", "multicast", "anycast", "unreachable", "blackhole", "prohibit", "throw", "nat")


def parse_addr_text(text: str) -> tuple[Link, ...]:
    """`ip addr show` -> links with their global and host addresses, e.g.
    3: eth0@eth1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP ...
        inet 192.0.2.1/24 scope global eth0
    (link-local addresses are the kernel's own and come back by themselves)."""
    links: list[Link] = []
    name, up, addrs = "", False, []  # type: ignore[var-annotated]

    def flush() -> None:
        if name:
            links.append(Link(name, tuple(addrs), up))

    for line in text.splitlines():
        m = re.match(r"^\d+: ([^:@\s]+)(?:@\S+)?: <([^>]*)>", line)
        if m:
            flush()
            name, up, addrs = m.group(1), "UP" in m.group(2).split(","), []
            continue
        m = re.match(r"^\s+inet6? (\S+)/(\d+)\b", line)
        if m and name and not m.group(1).startswith("fe80:"):
            addrs.append((m.group(1), int(m.group(2))))
    flush()
    return tuple(links)


def parse_route_text(text: str) -> tuple[tuple[Route, ...], list[str]]:
    """(the main table's own routes, what is not copied) from routes.txt. The kernel's routes
    (`proto kernel`, local/broadcast/multicast ones) come back with the addresses; other tables'
    routes and `ip rule` lines (policy routing) are named, not copied."""
    routes: list[Route] = []
    skipped: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("("):  # "(not listed: ...)": the bundle says why
            continue
        if re.match(r"^\d+:\s", s):
            if not re.fullmatch(r"\d+:\s+from all lookup (local|main|default)", s):
                skipped.append("ip rule " + " ".join(s.split()))
            continue
        f = s.split()
        if f[0] in ROUTE_TYPES or "proto kernel" in s:
            continue
        table = f[f.index("table") + 1] if "table" in f else "main"
        if table != "main":
            skipped.append("route " + " ".join(s.split()))
            continue
        via = f[f.index("via") + 1] if "via" in f else None
        dev = f[f.index("dev") + 1] if "dev" in f else None
        six = ":" in f[0] or (via is not None and ":" in via) or " pref " in f" {s} "
        r = Route(f[0], dev, via, 6 if six else 4)
        if r not in routes:  # `ip route show table all` lists the IPv6 routes too
            routes.append(r)
    return tuple(routes), list(dict.fromkeys(skipped))


def links_and_routes(files: Mapping[str, str], dst: Any, via: Optional[str],
                     missing: list[str]) -> tuple[tuple[Link, ...], tuple[Route, ...], list[str]]:
    """The shadow's links and routes from a bundle's text files (name -> text): its own where it
    has environment/addresses.txt and routes.txt (the probe's destination added where no link
    has it), else one stand-in link with the destination; `missing` gets what the bundle lacks."""
    notes: list[str] = []
    plen = 24 if dst.version == 4 else 64
    links = parse_addr_text(files.get("environment/addresses.txt", ""))
    if not any(a for lk in links for a in lk.addrs if a[0] not in ("127.0.0.1", "::1")):
        dev = via or "eth0"
        missing.append(f"interfaces and addresses (no environment/addresses.txt): one stand-in link {dev} with "
                       f"{dst}/{plen} (the probe's destination)")
        links = (Link(dev, ((str(dst), plen),)),)
    elif not any(a == str(dst) for lk in links for a, _ in lk.addrs):
        own = [lk for lk in links if lk.name != "lo"]
        at = next((lk for lk in own if lk.name == via), own[0] if own else None)
        if at is not None:
            links = tuple(Link(lk.name, lk.addrs + ((str(dst), plen),), lk.up) if lk is at else lk for lk in links)
            notes.append(f"the probe's destination {dst} is on none of the bundle's interfaces: added to {at.name}")
    routes: tuple[Route, ...] = ()
    if "environment/routes.txt" in files and not files["environment/routes.txt"].startswith("(not listed"):
        routes, skipped = parse_route_text(files["environment/routes.txt"])
        names = {lk.name for lk in links}
        kept = tuple(r for r in routes if r.dev is None or r.dev in names)
        skipped += [f"route {r.dst} dev {r.dev}" for r in routes if r not in kept]
        routes = kept
        if skipped:
            notes.append("policy routing not copied (the shadow has the main table only): " + "; ".join(skipped))
    else:
        missing.append("routes (no environment/routes.txt): the shadow routes other sources out of the first "
                       "interface")
    return links, routes, notes


def client_link(links: tuple[Link, ...], src: Any, via: Optional[str]) -> tuple[str, int]:
    """The link a replayed --from-netns client sits on, and its prefix length: the one whose
    subnet holds it, else the bundle's `via`, else the first that is not lo."""
    for lk in links:
        for a, p in lk.addrs:
            if lk.name != "lo" and src in ipaddress.ip_interface(f"{a}/{p}").network and p < src.max_prefixlen:
                return lk.name, p
    own = [lk.name for lk in links if lk.name != "lo"] or ["eth0"]
    return (via if via in own else own[0]), (24 if src.version == 4 else 64)
