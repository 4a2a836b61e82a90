"""Many hosts (issue 26): the probe's client side on a real host over SSH, and the Ansible
collection over several hosts. Every host is a namespace of its own with its own ruleset and a
real sshd (tests/kernel/sshd.py) listening on a lab address; fwtrace and Ansible use the system's
OpenSSH client to reach them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tracer import system
from tracer.ruleset import compare
from tracer.cli.lab import CLIENT4, SERVER4, Lab
from tracer.model import Proto

from sshd import SshFarm

ROOT = Path(__file__).resolve().parents[2]
FWTRACE = [sys.executable, "-m", "tracer"]
REJECT = ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j REJECT --reject-with icmp-admin-prohibited\n"
          "COMMIT\n")
ACCEPT = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n" \
         "-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n"


@pytest.fixture
def farm() -> Iterator[SshFarm]:
    f = SshFarm()
    try:
        yield f
    finally:
        f.close()


def fwtrace(ns: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *FWTRACE, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=120)


def test_two_host_probe_reject_and_accept(lab: Lab, farm: SshFarm) -> None:
    """The client host's real connect: REJECT seen by the target's trace and by the client's socket."""
    farm.start(lab.client, str(CLIENT4))
    env = {"FWTRACE_SSH_OPTIONS": farm.options}
    lab.iptables_restore(lab.server, REJECT)
    before = lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}", "--json", env=env)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    assert doc["mode"] == "from-ssh" and doc["from_ssh"] == f"ssh://root@{CLIENT4}"
    [pkt] = doc["packets"]
    assert pkt["verdict"] == "reject" and pkt["probe"]["src"] == str(CLIENT4) and pkt["probe"]["dst"] == str(SERVER4)
    assert pkt["probe"]["ident"] != 0  # learnt from the trace: the client kernel picked it
    assert pkt["decided_by"]["rule"].endswith("-j REJECT --reject-with icmp-admin-prohibited")
    [saw] = doc["client_saw"]
    assert saw["saw"] == "icmp" and "prohibited" in saw["text"], saw
    assert doc["cleanup"]["ok"] and doc["cleanup"]["ruleset_unchanged"] is True
    assert compare.leftover(before, lab.run(lab.server, ["nft", "list", "ruleset"]).stdout) == []

    # the same port open: the client's connect completes, the text shows both ends
    lab.iptables_restore(lab.server, ACCEPT)
    lab.listen(lab.server, Proto.TCP, 8080)
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}", "--no-color", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    text = " ".join(p.stdout.split())
    assert f"sent from the client host root@{CLIENT4} over SSH" in text
    assert "ACCEPT by ip filter INPUT rule 3" in text, p.stdout
    assert "client saw syn-ack: connected" in text and "reply syn-ack (seen by the client's socket" in text, p.stdout


def test_ssh_errors_are_one_line(lab: Lab, farm: SshFarm) -> None:
    farm.start(lab.client, str(CLIENT4))
    env = {"FWTRACE_SSH_OPTIONS": farm.options}
    # nothing listens on port 2222: unreachable
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}:2222", env=env)
    assert p.returncode == 6 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "ssh to root@192.0.2.2 failed" in p.stderr and "Connection refused" in p.stderr
    # a key the server does not know: authentication fails
    other = farm.dir / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}",
                env={"FWTRACE_SSH_OPTIONS": farm.options.replace(str(farm.key), str(other))})
    assert p.returncode == 7 and "authentication failed" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # no python3 on the client: its sessions get a PATH without it
    farm.start(lab.client, str(CLIENT4), 2200, extra="SetEnv PATH=/nonexistent\n")
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}:2200", env=env)
    assert p.returncode == 8 and "no python3 on root@192.0.2.2" in p.stderr, p.stderr
    # nothing was left in the target
    assert "fwtrace" not in lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    assert system.netns_list()  # (the lab still exists; the guard checks the rest)
