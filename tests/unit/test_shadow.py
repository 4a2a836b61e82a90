"""The shadow's pure parts (tracer/plan/shadow.py) and the bundle checks of `fwtrace replay`."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tracer.cli import main
from tracer.errors import ExitStatus, UsageError
from tracer.pipeline import whatif
from tracer.plan import shadow as plan

DATA = Path(__file__).resolve().parent.parent / "data"
BUNDLES = DATA / "bundles"

NFT = """\
table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy accept;
		ip saddr 198.51.100.0/24 counter packets 0 bytes 0 drop
	}
}
table inet f {
	set banned {
		type ipv4_addr
		flags interval,timeout
		elements = { 10.9.0.1 timeout 10m expires 9m, 100.64.0.0/10 timeout 1h expires 1h }
	}

	flowtable ft {
		hook ingress priority filter
		devices = { eth0 }
	}

	chain input {
		type filter hook input priority filter; policy drop;
		ip saddr @banned drop
		meta l4proto tcp flow add @ft
		ip saddr { 192.0.2.0/24, 2001:db8::/32 } tcp dport 22 accept
	}
}
"""
IPT = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 198.51.100.0/24 -j DROP\n-A INPUT -s 172.16.5.9/32 -j IN_drop\nCOMMIT\n"


def test_native_nft_leaves_iptables_nft_tables_and_flowtables_out() -> None:
    native, notes = plan.native_nft(NFT, {"ip": IPT})
    assert "table ip filter" not in native  # restored through iptables-nft-restore
    assert "table inet f {" in native and "flowtable" not in native and "flow add" not in native
    assert "ip saddr @banned drop" in native and "timeout 10m expires 9m" in native
    assert len(notes) == 1 and "flowtables of inet f" in notes[0]


def test_listeners_from_proc_net() -> None:
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n"
           "   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
           "   2: 0101A8C0:0016 0201A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1\n")
    got = plan.parse_proc_listeners(tcp, "tcp")
    assert got == [plan.Listener("tcp", "127.0.0.1", 631), plan.Listener("tcp", "0.0.0.0", 8080)]  # not the connected one
    tcp6 = ("  sl  local_address                         remote_address                        st\n"
            "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0\n")
    assert plan.parse_proc_listeners(tcp6, "tcp") == [plan.Listener("tcp", "::", 80)]
    ins = plan.stand_ins([plan.Listener("tcp", "0.0.0.0", 80), plan.Listener("tcp", "::", 80),
                          plan.Listener("tcp", "127.0.0.1", 631)])
    assert ins == [plan.Listener("tcp", "::", 80), plan.Listener("tcp", "127.0.0.1", 631)]


@pytest.mark.parametrize("argv", [["ls"], ["bash", "-c", "iptables -F"], ["sysctl", "-w", "kernel.panic=1"],
                                  ["sysctl", "-p"], ["ufw", "allow", "OpenSSH"], ["firewall-cmd", "--add-masquerade"],
                                  ["firewall-offline-cmd", "--add-port=1/tcp"], []])
def test_refused_commands(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        plan.check_command(argv)


def test_accepted_commands_and_their_ports() -> None:
    for argv in (["iptables", "-I", "INPUT", "1", "-j", "ACCEPT"], ["/usr/sbin/nft", "flush", "ruleset"],
                 ["ipset", "add", "x", "192.0.2.9"], ["sysctl", "-w", "net.ipv4.ip_forward=1"],
                 ["ufw", "allow", "22"], ["firewall-cmd", "--add-port=1/tcp"]):  # owners' commands: translated
        assert plan.check_command(argv)
    assert plan.command_ports(["iptables", "-I", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"]) == [8443]
    assert plan.command_ports(["nft", "add", "rule", "inet", "f", "input", "tcp", "dport", "{", "80,", "443", "}", "accept"]) == [80, 443]
    assert plan.command_ports(["iptables", "-A", "INPUT", "-m", "multiport", "--dports", "25,587"]) == [25, 587]


def test_sampled_sources_name_every_range_set_and_zone() -> None:
    native, _ = plan.native_nft(NFT, {"ip": IPT})
    state = plan.State(nft=native, ipt=(("ip", IPT),), ipsets="create allow hash:ip\nadd allow 192.0.2.77\n",
                       recent=(("ssh", ("192.0.2.200",)),))
    got = {s.addr: s.label for s in plan.sample_sources(state, "203.0.113.5", 4, limit=50)}
    assert got["203.0.113.5"] == "client"
    assert got["198.51.100.1"].startswith("-s 198.51.100.0/24 in INPUT")
    assert got["172.16.5.9"] == "-s 172.16.5.9/32 in INPUT -j IN_drop"  # a zone's binding
    assert got["10.9.0.1"] == got["100.64.0.1"] == "set banned"
    assert got["192.0.2.1"].startswith("saddr 192.0.2.0/24")
    assert got["192.0.2.200"] == "xt_recent ssh"
    assert got[str(plan.INTERNET4)].startswith("an internet address")
    assert not any(":" in a for a in got)  # the probe's family only
    assert "2001:db8::1" in {s.addr for s in plan.sample_sources(state, "2001:db8:ffff::5", 6)}
    hosted = plan.State(nft=native, links=(plan.Link("eth0", (("192.0.2.1", 24),)),))
    got = {s.addr: s.label for s in plan.sample_sources(hosted, "203.0.113.5", 4)}
    assert "192.0.2.1" not in got and got["192.0.2.2"].startswith("saddr 192.0.2.0/24")  # not the host's own


def test_changes_and_table() -> None:
    probes = [plan.Probe(plan.Source("203.0.113.5", "client"), 8443, "tcp"),
              plan.Probe(plan.Source("198.51.100.1", "-s 198.51.100.0/24 in INPUT -j DROP"), 8443, "tcp"),
              plan.Probe(plan.Source("203.0.113.5", "client"), 22, "tcp")]
    ch = plan.changes(probes, ("drop", "drop", "open"), ("open", "drop", "reject (icmp)"))
    assert [(c.source, c.port, c.gains) for c in ch] == [("203.0.113.5", 8443, True), ("203.0.113.5", 22, False)]
    w = plan.WhatIf(("iptables", "-D", "INPUT", "3"), tuple(probes), ("drop", "drop", "open"),
                    ("open", "drop", "reject (icmp)"), ("x",), ("timeouts",), ch, (), True)
    text = plan.render(w)
    assert "GAINS  203.0.113.5" in text and "LOSES  203.0.113.5" in text and "198.51.100.1 (-s" in text
    doc = w.to_json()
    assert doc["changes"][1] == {"source": "203.0.113.5", "why_sampled": "client", "port": 22, "proto": "tcp",
                                 "before": "open", "after": "reject (icmp)", "change": "loses"}
    assert doc["cleanup"] == {"shadow_removed": True, "shadow_left": [], "host_unchanged": True}


def test_dependencies_mark_socket_matches_and_owners() -> None:
    nc, dep = plan.dependencies("-A INPUT -m owner --uid-owner 0 -j ACCEPT\n-A f2b-sshd -s 1.2.3.4 -j REJECT\n")
    assert any("owner/cgroup/socket" in n for n in nc) and any("fail2ban" in n for n in nc)
    assert "socket/cgroup/owner matches" in dep


# ---------------------------------------------------------------------------------------------
# replay's bundle checks (no root: they come before the shadow)


@pytest.mark.parametrize("name", sorted(os.listdir(BUNDLES)))
def test_every_kernel_bundle_is_accepted_and_its_state_planned(name: str) -> None:
    files = whatif.read_bundle(str(BUNDLES / name))
    doc = whatif.check_bundle(files, name)
    state, missing = whatif.state_of_bundle(files, doc)
    assert state.links and state.links[0].addrs[0][0] == doc["packets"][0]["probe"]["dst"]
    assert any("sysctls" in m for m in missing)  # these bundles carry no environment/
    owned = {(fam, t) for fam, save in state.ipt for t in plan.save_tables(save)}
    for line in files["ruleset.nft"].decode().splitlines():  # every table goes back one way or the other
        if line.startswith("table "):
            fam, name = line.split()[1:3]
            assert (fam, name) in owned or line in state.nft


def _tar(tmp_path: Path, files: dict[str, bytes]) -> str:
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"fwtrace-abc/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return str(path)


def test_bad_bundles_exit_7(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = whatif.read_bundle(str(BUNDLES / "seed-shadowed"))
    cases = {
        "not-a-tar": None,
        "no-report": {"hello.txt": b"hi"},
        "other-json": {"report.json": b'{"a": 1}', "ruleset.nft": b""},
        "newer": {**seed, "environment.json": json.dumps({"fwtrace version": "99.0.0"}).encode()},
        "newer-schema": {**seed, "report.json": json.dumps({**json.loads(seed["report.json"]), "schema_version": 99}).encode()},
    }
    for label, files in cases.items():
        if files is None:
            path = str(tmp_path / "junk.tar.gz")
            Path(path).write_bytes(b"not gzip")
        else:
            path = _tar(tmp_path, files)
        assert main(["replay", path]) == ExitStatus.BAD_BUNDLE, label
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "hint:" in err[0], (label, err)
        if label == "newer":
            assert "newer fwtrace (99.0.0" in err[0]
    assert "report schema 99; this is" in err[0]


def test_a_tar_bundle_reads_as_its_directory(tmp_path: Path) -> None:
    seed = whatif.read_bundle(str(BUNDLES / "seed-shadowed"))
    assert whatif.read_bundle(_tar(tmp_path, seed)) == seed


def test_whatif_refusals_exit_before_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["what-if", "--dport", "22", "--", "rm", "-rf", "/"]) == ExitStatus.USAGE
    assert main(["what-if", "--dport", "22", "--", "ufw", "allow", "22"]) == ExitStatus.USAGE
    assert main(["what-if", "--dport", "22"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("fwtrace: error:") and "hint:" in line for line in err)


def test_stale_shadows_are_those_of_dead_runs() -> None:
    from tracer.system.shadow import stale

    names = ["fwtrace-shadow12-ab12cd-srv", "fwtrace-shadow12-ab12cd-cli", "fwtrace-shadow13-00ff00-srv",
             "fwtrace-test12-ab12cd-srv", "fwtrace-shadow12-ab12cd-bak", "myshadow"]
    assert stale(names, alive=lambda pid: pid == 13) == names[:2]
