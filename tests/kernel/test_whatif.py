"""`fwtrace what-if` and `fwtrace replay` on the real kernel: the shadow copies the lab server's
firewall, the admin's command runs there, and the sampled sources' verdicts before and after are
compared; the lab server itself (the "host") is only read. Replay rebuilds each captured bundle of
tests/data/bundles in a shadow and probes it again.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from tracer import system
from tracer.cli.lab import BACKEND4, CLIENT4, SERVER4, Lab
from tracer.errors import ExitStatus
from tracer.model import ProbeRequest, Proto
from tracer.pipeline import whatif

FWTRACE = [sys.executable, "-m", "tracer"]
BUNDLES = Path(__file__).resolve().parent.parent / "data" / "bundles"
LOG = structlog.wrap_logger(structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

# INPUT drops by policy; a banned range (fail2ban-like) and a firewalld-like DROP zone bound to a
# source range; ssh open to all.
ZONED = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:IN_drop - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -s 198.51.100.0/24 -j DROP
-A INPUT -s 100.64.0.0/10 -j IN_drop
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A IN_drop -j DROP
COMMIT
"""


def shadows() -> set[str]:
    return {n for n in system.netns_list() if n.startswith("fwtrace-shadow")}


def listing(lab: Lab) -> tuple[str, str]:
    save = lab.run(lab.server, ["iptables-save"]).stdout  # without its time stamps (empty with no tables)
    return ("".join(x for x in save.splitlines(True) if not x.startswith("#")),
            lab.run(lab.server, ["nft", "list", "ruleset"]).stdout)


@pytest.fixture
def zoned(lab: Lab) -> Any:
    lab.iptables_restore(lab.server, ZONED)
    lab.listen(lab.server, Proto.TCP, 8443)
    lab.listen(lab.server, Proto.TCP, 22)
    before, names = listing(lab), shadows()
    yield lab
    assert listing(lab) == before, "the host's firewall changed"
    assert not shadows() - names, "a shadow namespace was left behind"


def run_whatif(lab: Lab, dport: int, *cmd: str) -> Any:
    req = ProbeRequest(dport=dport, netns=lab.server, from_netns=lab.client, dst=SERVER4, timeout=0.5)
    w = whatif.what_if(req, list(cmd), LOG)
    assert w.host_unchanged and not w.shadow_left
    return w


def test_opening_a_port_lets_in_the_banned_range_and_the_drop_zone(zoned: Lab) -> None:
    w = run_whatif(zoned, 8443, "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT")
    gains = {c.source: c.label for c in w.changes if c.gains and c.port == 8443}
    assert gains.get("198.51.100.1", "").startswith("-s 198.51.100.0/24"), gains  # the banned range
    assert gains.get("100.64.0.1", "").endswith("-j IN_drop"), gains  # the DROP zone
    assert str(CLIENT4) in gains and "203.0.113.200" in gains
    assert all(c.before == "drop" and c.after == "open" for c in w.changes)
    assert not [c for c in w.changes if c.port == 22]  # ssh was open to the client before and after


def test_a_client_scoped_rule_lets_in_only_the_client(zoned: Lab) -> None:
    w = run_whatif(zoned, 8443, "iptables", "-I", "INPUT", "1", "-s", f"{CLIENT4}/32", "-p", "tcp", "--dport", "8443",
                   "-j", "ACCEPT")
    assert [(c.source, c.port, c.gains) for c in w.changes] == [(str(CLIENT4), 8443, True)]
    assert len({p.source.addr for p in w.probes}) >= 4  # the others were probed, and kept out
    doc = w.to_json()
    assert doc["changes"] == [{"source": str(CLIENT4), "why_sampled": "client", "port": 8443, "proto": "tcp",
                               "before": "drop", "after": "open", "change": "gains"}]


def test_removing_a_rule_shows_who_loses(zoned: Lab) -> None:
    w = run_whatif(zoned, 22, "iptables", "-D", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", "22", "-j", "ACCEPT")
    loses = {c.source for c in w.changes if c.before == "open" and c.after == "drop"}
    assert loses == {str(CLIENT4), "203.0.113.200"}, w.changes  # the banned and the zone never had it
    assert not any(c.gains for c in w.changes)


def test_a_command_failing_in_the_shadow_exits_6_and_leaves_nothing(zoned: Lab) -> None:
    p = subprocess.run([*FWTRACE, "what-if", "--dport", "22", "--netns", zoned.server, "--", "iptables", "-D", "INPUT", "99"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.SHADOW_COMMAND, p.stderr
    err = [line for line in p.stderr.splitlines() if "fwtrace: error:" in line]
    assert len(err) == 1 and "failed in the shadow" in err[0] and "hint:" in err[0]
    assert p.stdout == ""


def test_whatif_json_from_the_command_line(zoned: Lab) -> None:
    p = subprocess.run([*FWTRACE, "what-if", "--dport", "8443", "--netns", zoned.server, "--src", "198.51.100.9",
                        "--json", "--", "nft", "insert", "rule", "ip", "filter", "INPUT", "tcp", "dport", "8443",
                        "accept"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["whatif"]
    assert {"source": "198.51.100.9", "port": 8443, "proto": "tcp", "before": "drop", "after": "open"}.items() <= \
        doc["changes"][0].items() or any(c["source"] == "198.51.100.9" and c["after"] == "open" for c in doc["changes"])
    assert doc["cleanup"] == {"shadow_removed": True, "shadow_left": [], "host_unchanged": True}


# ---------------------------------------------------------------------------------------------
# replay

# What the captured bundles do not carry (they hold no environment/: no sysctls, addresses, routes or
# listening sockets, and each replay says so): the stray ACK needs nf_conntrack_tcp_loose=0, the
# rp_filter drop its sysctl and the route back by eth1, the DNAT the backend and ip_forward.
NEEDS_MORE = {"legacy-stray-ack-invalid": "sysctls", "ebpf-rp-filter": "sysctls", "dnat-forward-drop": "DNAT"}


def test_every_kernel_scenario_bundle_replays(tmp_path: Path) -> None:
    names = shadows()
    # no owner tool is run: stand-ins that would leave a mark sit first on PATH
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("ufw", "firewall-cmd", "fail2ban-client"):
        (fake / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/ran-{tool}\nexit 1\n")
        (fake / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    for bundle in sorted(BUNDLES.iterdir()):
        p = subprocess.run([*FWTRACE, "replay", str(bundle), "--json", "--timeout", "0.5"], capture_output=True,
                           text=True, timeout=120, env=env)
        doc = json.loads(p.stdout)["replay"]
        what = {c["what"]: c for c in doc["compared"]}
        assert set(what) == {"verdict", "deciding rule", "reply"}
        assert not (bundle / "environment").exists()
        assert any(m.startswith("interfaces and addresses (no environment/addresses.txt)") for m in doc["not_in_bundle"])
        assert any(m.startswith("routes (no environment/routes.txt)") for m in doc["not_in_bundle"])
        if bundle.name in NEEDS_MORE:
            assert p.returncode == ExitStatus.BLOCKED and not doc["matches"], bundle.name
            assert any(NEEDS_MORE[bundle.name] in m for m in doc["not_in_bundle"]), doc["not_in_bundle"]
        else:
            assert p.returncode == 0 and doc["matches"], (bundle.name, doc["compared"], p.stderr)
            assert what["verdict"]["replay"] == json.loads((bundle / "report.json").read_text())["packets"][0]["verdict"]
    assert not list(tmp_path.glob("ran-*"))
    assert not shadows() - names


def test_full_bundle_round_trip_carries_the_sysctls(lab: Lab, tmp_path: Path) -> None:
    """A --evidence tar.gz has environment/sysctls.txt: the stray ACK that conntrack finds INVALID
    only with nf_conntrack_tcp_loose=0 replays to the same drop."""
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
                         "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT\nCOMMIT\n", legacy=True)
    with system.netns(lab.server):
        system.sysctl_set("net.netfilter.nf_conntrack_tcp_loose", "0")
    out = tmp_path / "ticket.tar.gz"
    p = subprocess.run([*FWTRACE, "probe", "--dport", "8080", "--flags", "A", "--netns", lab.server, "--from-netns",
                        lab.client, "--timeout", "0.5", "--ebpf", "off", "--evidence", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and out.exists(), p.stderr
    r = subprocess.run([*FWTRACE, "replay", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MATCHES the bundle" in r.stdout and "--ctstate INVALID -j DROP" in r.stdout
    assert "not in the bundle: sysctls" not in r.stdout


def test_full_bundle_round_trip_carries_interfaces_and_routes(router_lab: Lab, tmp_path: Path) -> None:
    """rp_filter=1 and a route back to the customer's range by eth1: the probe arriving on eth0
    is dropped by the kernel. The replay's shadow gets the bundle's eth0 and eth1 with their
    addresses and the route (environment/addresses.txt, routes.txt), so the drop replays; the
    stand-in link and default route alone would let it in."""
    from tracer.system.bundle_io import read_tar

    lab = router_lab
    lab.ip(lab.server, "route", "add", "203.0.113.0/24", "via", str(BACKEND4), "dev", "eth1")
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.conf.all.rp_filter", "1")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    lab.listen(lab.server, Proto.TCP, 22)
    out = tmp_path / "ticket.tar.gz"
    p = subprocess.run([*FWTRACE, "probe", "--dport", "22", "--netns", lab.server, "--via", "eth0", "--src",
                        "203.0.113.5", "--dst", str(SERVER4), "--timeout", "0.5", "--ebpf", "off", "--evidence",
                        str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and out.exists(), p.stdout + p.stderr
    files = read_tar(str(out))
    state, missing = whatif.state_of_bundle(files, whatif.check_bundle(files, str(out)))
    assert {lk.name for lk in state.links} >= {"lo", "eth0", "eth1"}
    assert any(r.dst == "203.0.113.0/24" and r.gateway == str(BACKEND4) and r.dev == "eth1" for r in state.routes)
    assert not any(m.startswith(("interfaces", "routes")) for m in missing), missing
    r = subprocess.run([*FWTRACE, "replay", str(out), "--json"], capture_output=True, text=True, timeout=120)
    doc = json.loads(r.stdout)["replay"]
    assert r.returncode == 0 and doc["matches"], (doc["compared"], r.stderr)
    assert {c["what"]: c for c in doc["compared"]}["verdict"]["bundle"] == "drop"


def test_the_shadow_copies_sets_ipsets_recent_sysctls_and_listeners(lab: Lab) -> None:
    from tracer.system.shadow import Shadow, capture

    lab.run(lab.server, ["ipset", "create", "blocked", "hash:net"])
    lab.run(lab.server, ["ipset", "add", "blocked", "100.64.0.0/10"])
    lab.iptables_restore(lab.server, "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set blocked src -j DROP\n"
                         "-A INPUT -m recent --name bad --rcheck -j DROP\nCOMMIT\n")
    lab.nft(lab.server, "table inet f {\n set banned { type ipv4_addr; flags timeout; elements = { 198.51.100.7 timeout 1h } }\n"
            " chain input { type filter hook input priority 10; ip saddr @banned drop\n }\n}\n")
    with system.netns(lab.server):
        with open("/proc/thread-self/net/xt_recent/bad", "w") as f:
            f.write("+192.0.2.99\n")
        system.sysctl_set("net.netfilter.nf_conntrack_tcp_loose", "0")
        system.sysctl_set("net.ipv4.conf.eth0.rp_filter", "1")
    lab.listen(lab.server, Proto.TCP, 8443)
    try:
        state = capture(lab.server)
        with Shadow(state, LOG) as sh:
            assert "198.51.100.7 timeout 1h" in sh.run(["nft", "list", "set", "inet", "f", "banned"]).stdout
            assert "100.64.0.0/10" in sh.run(["ipset", "list", "blocked"]).stdout
            assert "--match-set blocked src -j DROP" in sh.run(["iptables-save"]).stdout
            with system.netns(sh.netns):
                assert "src=192.0.2.99" in open("/proc/thread-self/net/xt_recent/bad").read()
                assert system.sysctl_get("net.netfilter.nf_conntrack_tcp_loose") == "0"
                assert system.sysctl_get("net.ipv4.conf.eth0.rp_filter") == "1"
                assert ":20FB 00000000000000000000000000000000:0000 0A" in system.proc_net("tcp6")  # 8443 listens
            assert sh.run(["ip", "-j", "addr", "show", "eth0"]).stdout.count(str(SERVER4)) == 1
            srcs = {p.source.addr for p in whatif.plan_probes(ProbeRequest(dport=8443), state, [], "203.0.113.5")}
            assert {"198.51.100.7", "100.64.0.1", "192.0.2.99"} <= srcs
            names = sh.namespaces
        assert not set(names) & set(system.netns_list())
    finally:
        lab.run(lab.server, ["iptables", "-F"])
        lab.run(lab.server, ["ipset", "destroy", "blocked"])


def test_a_shadow_that_cannot_be_built_says_so_and_leaves_nothing() -> None:
    from tracer.plan import shadow as plan
    from tracer.system.shadow import Shadow, ShadowError

    state = plan.State(nft="table inet x {\n\tchain c {\n\t\tno such statement\n\t}\n}\n",
                       links=(plan.Link("eth0", (("192.0.2.1", 24),)),))
    names = shadows()
    with pytest.raises(ShadowError) as e:
        with Shadow(state, LOG):
            pass
    assert e.value.status == ExitStatus.ENVIRONMENT and "cannot load the target's nft ruleset" in e.value.message
    assert e.value.hint
    assert not shadows() - names


def test_cleanup_removes_the_shadow_of_a_killed_run() -> None:
    """A what-if killed with SIGKILL leaves its shadow; `fwtrace cleanup` removes it (its run is dead)."""
    p = subprocess.Popen(["sleep", "0"])
    p.wait()  # a pid that is gone
    names = [f"fwtrace-shadow{p.pid}-abcdef-srv", f"fwtrace-shadow{p.pid}-abcdef-cli"]
    mine = f"fwtrace-shadow{os.getpid()}-abcdef-srv"  # this process lives: kept
    for n in (*names, mine):
        system.run(["ip", "netns", "add", n])
    try:
        r = subprocess.run([*FWTRACE, "cleanup"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert all(f"shadow namespace {n}" in r.stdout for n in names), r.stdout
        left = set(system.netns_list())
        assert not set(names) & left and mine in left
    finally:
        for n in (*names, mine):
            system.run(["ip", "netns", "del", n], check=False)


def test_whatif_on_a_bundle_s_firewall() -> None:
    """The seed's ticket: fixing 8080 by moving its ACCEPT above the REJECT lets everyone in."""
    names = shadows()
    p = subprocess.run([*FWTRACE, "what-if", "--bundle", str(BUNDLES / "seed-shadowed"), "--dport", "8080",
                        "--src", str(CLIENT4), "--json", "--", "iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport",
                        "8080", "-j", "ACCEPT"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["whatif"]
    gains = {c["source"] for c in doc["changes"] if c["change"] == "gains"}
    assert {str(CLIENT4), "117.239.37.150", "203.0.113.200"} <= gains  # fail2ban's banned address too
    assert all(c["before"].startswith("reject") for c in doc["changes"])
    assert any(n.startswith("not in the bundle: sysctls") for n in doc["not_copied"])
    assert doc["cleanup"]["host_unchanged"] is None and doc["cleanup"]["shadow_removed"]
    assert not shadows() - names
