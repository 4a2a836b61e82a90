"""replay's interfaces, addresses and routes from a bundle's environment listings
(tracer/plan/shadow_env.py), on `ip addr show` / `ip route show table all` output captured by
scripts/capture-test-data (tests/data/env-addresses.txt, env-routes.txt)."""
from __future__ import annotations

import ipaddress
from pathlib import Path

from tracer.plan import shadow_env as env
from tracer.plan.shadow import Link, Route

DATA = Path(__file__).resolve().parent.parent / "data"
ADDRS = (DATA / "env-addresses.txt").read_text()
ROUTES = (DATA / "env-routes.txt").read_text()


def test_addresses_without_link_local_ones() -> None:
    assert env.parse_addr_text(ADDRS) == (
        Link("lo", (("127.0.0.1", 8), ("::1", 128))), Link("eth1", (("10.1.0.1", 16),)),
        Link("eth0", (("192.0.2.1", 24), ("192.0.2.100", 24), ("2001:db8::1", 64))))


def test_routes_of_the_main_table_and_policy_routing_named() -> None:
    routes, skipped = env.parse_route_text(ROUTES)
    assert routes == (Route("default", "eth0", "192.0.2.254", 4), Route("198.51.100.0/24", "eth0", "192.0.2.2", 4),
                      Route("default", "eth0", "2001:db8::fe", 6))  # the kernel's own and the IPv6 repeat left out
    assert skipped == ["route 10.9.0.0/16 dev eth1 table 100 scope link", "ip rule 32765: from 10.9.0.0/16 lookup 100"]


def test_links_and_routes_of_a_bundle() -> None:
    missing: list[str] = []
    files = {"environment/addresses.txt": ADDRS, "environment/routes.txt": ROUTES}
    links, routes, notes = env.links_and_routes(files, ipaddress.ip_address("192.0.2.1"), "eth0", missing)
    assert [lk.name for lk in links] == ["lo", "eth1", "eth0"] and len(routes) == 3 and missing == []
    assert notes and "policy routing not copied" in notes[0]
    links, _, notes = env.links_and_routes(files, ipaddress.ip_address("192.0.2.7"), "eth0", missing)
    assert ("192.0.2.7", 24) in links[2].addrs and "on none of the bundle's interfaces" in notes[0]
    links, routes, _ = env.links_and_routes({}, ipaddress.ip_address("192.0.2.1"), "eth3", missing)
    assert links == (Link("eth3", (("192.0.2.1", 24),)),) and routes == ()
    assert missing[0].startswith("interfaces and addresses (no environment/addresses.txt)")
    assert missing[1].startswith("routes (no environment/routes.txt)")


def test_the_replayed_client_s_link() -> None:
    links = env.parse_addr_text(ADDRS)
    assert env.client_link(links, ipaddress.ip_address("10.1.2.3"), "eth0") == ("eth1", 16)
    assert env.client_link(links, ipaddress.ip_address("203.0.113.5"), "eth0") == ("eth0", 24)
    assert env.client_link(links, ipaddress.ip_address("203.0.113.5"), None) == ("eth1", 24)
