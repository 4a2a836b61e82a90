"""`ip -j addr show` read in-process (tracer/system/rtnl.py, issue 25) gives the fields fwtrace
reads of the command's JSON, in its order: links up and down, IPv4 and IPv6, scopes, a veth
without carrier, a secondary address."""
from __future__ import annotations

import json
import subprocess
from typing import Any

from tracer import system
from tracer.cli.lab import Lab
from tracer.system import rtnl


def fields(text: str) -> list[dict[str, Any]]:
    return [{"ifindex": link["ifindex"], "ifname": link["ifname"], "flags": link["flags"],
             "addr_info": [{k: a[k] for k in ("family", "local", "prefixlen", "scope")} for a in link.get("addr_info", [])]}
            for link in json.loads(text)]


def test_addresses_are_ip_j_addr_show(lab: Lab) -> None:
    lab.ip(lab.server, "addr", "add", "192.0.2.77/24", "dev", "eth0")  # a secondary
    lab.ip(lab.server, "addr", "add", "2001:db8:9::1/64", "dev", "eth0", "nodad")
    lab.ip(lab.server, "link", "add", "v1", "type", "veth", "peer", "name", "v2")  # down, both ends here
    lab.ip(lab.server, "link", "set", "v1", "up")  # up, but its peer is down: NO-CARRIER
    lab.ip(lab.server, "addr", "add", "10.9.9.1/30", "dev", "v1")
    for ns in lab.namespaces:
        with system.netns(ns):
            ours = fields(rtnl.addresses_json())
            theirs = fields(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout)
        assert ours == theirs, ns
    with system.netns(lab.server):
        got = {link["ifname"]: link for link in fields(rtnl.addresses_json())}
    assert "NO-CARRIER" in got["v1"]["flags"] and "UP" not in got["v2"]["flags"]
    assert [a["local"] for a in got["eth0"]["addr_info"] if a["scope"] == "global"][:2] == ["192.0.2.1", "192.0.2.77"]
