"""Owner detection from table, chain and comment names (tracer/diagnose/owners_more.py), pure."""
from __future__ import annotations

import pytest

from tracer.diagnose.owners import owner_of

CASES = [
    ("filter", "ts-input", "", "tailscale", ""),
    ("filter", "ts-forward", "", "tailscale", ""),
    ("netavark", "NETAVARK-ISOLATION-3", "", "podman", ""),
    ("filter", "NETAVARK_FORWARD", "", "podman", ""),
    ("incus", "acl.incusbr0", "", "incus", "network incusbr0"),
    ("lxd", "fwd.lxdbr0", "", "lxd", "network lxdbr0"),
    ("filter", "PVEFW-HOST-IN", "", "pve", ""),
    ("filter", "tap100i0-IN", "", "pve", "guest 100"),
    ("filter", "DENYIN", "", "csf", ""),
    ("filter", "LOGDROPIN", "", "csf", ""),
    ("wg-quick-wg0", "preraw", "", "wg-quick", "interface wg0"),
    ("raw", "PREROUTING", '-A PREROUTING -d 10.66.0.1/32 ! -i wg0 -m comment --comment "wg-quick(8) rule for wg0" -j DROP',
     "wg-quick", "interface wg0"),
    ("filter", "KUBE-POD-FW-J5CA", '-m comment --comment "rule to REJECT traffic destined for POD name:web-0 namespace: default"',
     "k3s", "Pod default/web-0"),
    ("filter", "FLANNEL-FWD", "", "k3s", ""),
    ("filter", "KUBE-SERVICES", "", "kube-proxy", ""),  # kube-proxy's own chains stay kube-proxy's
    ("calico", "filter-FORWARD", "", "calico", ""),
    ("sshguard", "blacklist", "", "sshguard", ""),
    ("libvirt_network", "guest_input", "", "libvirt", ""),
]


@pytest.mark.parametrize("table,chain,text,key,detail", CASES)
def test_owner_of(table: str, chain: str, text: str, key: str, detail: str) -> None:
    o = owner_of(table, chain, text)
    assert o is not None and (o.key, o.detail) == (key, detail)


def test_no_owner_for_plain_chains() -> None:
    assert owner_of("filter", "INPUT") is None and owner_of("filter", "INVALID") is None


def test_the_schema_knows_every_owner() -> None:
    """A report naming an owner the schema does not list fails validation (sshguard and the owners
    added with owners_more once did)."""
    import json
    from pathlib import Path

    from tracer.diagnose import owners

    schema = json.loads((Path(__file__).parents[2] / "schema" / "report.schema.json").read_text())
    enum = schema["$defs"]["owner"]["properties"]["owner"]["enum"] if "$defs" in schema else None
    assert enum is not None and set(enum) == set(owners.NAMES)
