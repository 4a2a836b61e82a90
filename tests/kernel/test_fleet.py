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
    import jsonschema

    jsonschema.validate(doc, json.loads((ROOT / "schema" / "report.schema.json").read_text()))
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
    assert p.returncode == 8 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "ssh to root@192.0.2.2 failed" in p.stderr and "Connection refused" in p.stderr
    # a key the server does not know: authentication fails
    other = farm.dir / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}",
                env={"FWTRACE_SSH_OPTIONS": farm.options.replace(str(farm.key), str(other))})
    assert p.returncode == 9 and "authentication failed" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # no python3 on the client: its sessions get a PATH without it
    farm.start(lab.client, str(CLIENT4), 2200, extra="SetEnv PATH=/nonexistent\n")
    p = fwtrace(lab.server, "probe", "--dport", "8080", "--from", f"ssh://root@{CLIENT4}:2200", env=env)
    assert p.returncode == 10 and "no python3 on root@192.0.2.2" in p.stderr, p.stderr
    # nothing was left in the target
    assert "fwtrace" not in lab.run(lab.server, ["nft", "list", "ruleset"]).stdout
    assert system.netns_list()  # (the lab still exists; the guard checks the rest)


COLLECTIONS = ROOT / "contrib" / "ansible"
ANSIBLE_BIN = Path(sys.executable).parent
# Three web servers on three links from the controller: lab addresses only (documentation ranges)
HOSTS = {"web1": ("192.0.2", "accept"), "web2": ("198.51.100", "reject"), "web3": ("203.0.113", "drop")}
RULES = {"accept": ACCEPT.replace("COMMIT", "-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT"),
         "reject": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8080 -j REJECT --reject-with tcp-reset\nCOMMIT\n",
         "drop": "*filter\n:INPUT DROP [0:0]\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n"
                 "-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"}


@pytest.fixture
def fleet(farm: SshFarm) -> Iterator[dict[str, str]]:
    """A controller namespace and one namespace per web server, each with its sshd and ruleset."""
    from conftest import PREFIX

    from tracer.system import serve

    rid = os.urandom(3).hex()
    ctl = f"{PREFIX}-{rid}-ctl"
    made = [ctl]
    socks = []
    system.run(["ip", "netns", "add", ctl])
    try:
        system.run(["ip", "-n", ctl, "link", "set", "lo", "up"])
        for i, (name, (net, kind)) in enumerate(HOSTS.items()):
            ns = f"{PREFIX}-{rid}-{name}"
            system.run(["ip", "netns", "add", ns])
            made.append(ns)
            system.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            system.run(["ip", "link", "add", f"w{i}", "netns", ctl, "type", "veth", "peer", "name", "eth0", "netns", ns])
            system.run(["ip", "-n", ctl, "link", "set", f"w{i}", "up"])
            system.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            system.run(["ip", "-n", ctl, "addr", "add", f"{net}.254/24", "dev", f"w{i}"])
            system.run(["ip", "-n", ns, "addr", "add", f"{net}.1/24", "dev", "eth0"])
            system.run(["ip", "-n", ns, "route", "add", "default", "via", f"{net}.254"])
            with system.netns(ns):
                system.run(["iptables-restore"], input=RULES[kind])
            if kind == "accept":
                socks.append(serve.listen(ns, True, 8080, "::"))
            farm.start(ns, f"{net}.1")
        yield {"ctl": ctl, **{name: f"{net}.1" for name, (net, _) in HOSTS.items()}}
    finally:
        for s in socks:
            s.close()
        farm.close()
        for ns in reversed(made):
            system.run(["ip", "netns", "del", ns], check=False)


def ansible(ctl: str, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_FORKS": "4",
           # no ControlPersist master outliving the test (it would hold on to a deleted namespace)
           "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
           "PATH": f"{ANSIBLE_BIN}:{os.environ.get('PATH', '')}"}
    return subprocess.run(["ip", "netns", "exec", ctl, str(ANSIBLE_BIN / tool), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=150)


def test_playbook_over_three_hosts_and_an_unreachable_one(fleet: dict[str, str], farm: SshFarm, tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    lines = ["[web]"] + [f"{n} ansible_host={fleet[n]}" for n in HOSTS] + ["web4 ansible_host=192.0.2.77",
             "[web:vars]", "ansible_user=root", "ansible_connection=ssh", f"ansible_ssh_common_args='{farm.options}'",
             f"fwtrace_executable={ANSIBLE_BIN / 'fwtrace'}", "fwtrace_become=false"]
    inv.write_text("\n".join(lines) + "\n")
    p = ansible(fleet["ctl"], "ansible-playbook", "-v", "-i", str(inv), "fwtrace.fwtrace.probe_fleet",
                "-e", "fwtrace_hosts=web", "-e", "fwtrace_dport=8080", "-e", f"fwtrace_summary={tmp_path}/summary.md",
                "-e", f"fwtrace_bundles={tmp_path}/bundles", cwd=tmp_path)
    assert "Traceback" not in p.stdout + p.stderr
    table = (tmp_path / "summary.md").read_text()
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in table.splitlines()[2:] if r.strip()}
    assert rows["web1"][0] == "reached (accept)" and rows["web1"][1] == "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT", p.stdout
    assert rows["web2"][0] == "blocked (reject)" and rows["web2"][1].endswith("-j REJECT --reject-with tcp-reset")
    assert rows["web2"][2] == "blocked-by-rule"
    assert rows["web3"][0] == "blocked (drop)" and rows["web3"][1] == "ip filter INPUT policy DROP", table
    assert rows["web4"][0] == "unreachable" and "192.0.2.77" in rows["web4"][2] + p.stdout, table
    for n in HOSTS:  # the bundles came back to the controller
        assert (tmp_path / "bundles" / f"{n}.tar.gz").stat().st_size > 0
    assert "fatal: [web4]: UNREACHABLE!" in p.stdout, p.stdout
    assert not list(Path("/tmp").glob("fwtrace-web[123]-*.tar.gz"))  # the playbook removed them after the fetch


def test_module_bad_argument_and_check_mode(fleet: dict[str, str], farm: SshFarm, tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"web2 ansible_host={fleet['web2']} ansible_user=root ansible_ssh_common_args='{farm.options}'\n")
    p = ansible(fleet["ctl"], "ansible", "-i", str(inv), "web2", "-m", "fwtrace.fwtrace.probe",
                "-a", "dport=8080 bogus=1", cwd=tmp_path)
    assert p.returncode != 0 and "Unsupported parameters for (fwtrace.fwtrace.probe) module: bogus" in p.stdout, p.stdout
    # fwtrace's own bad input: its one line as the module's msg
    p = ansible(fleet["ctl"], "ansible", "-i", str(inv), "web2", "-m", "fwtrace.fwtrace.probe",
                "-a", f"dport=8080 proto=icmp executable={ANSIBLE_BIN / 'fwtrace'}", "-o", cwd=tmp_path)
    assert p.returncode != 0 and "--dport does not apply to --proto icmp" in p.stdout, p.stdout
    # check mode: the plan, and no fwtrace table ever appears (nothing runs)
    p = ansible(fleet["ctl"], "ansible", "-i", str(inv), "web2", "-m", "fwtrace.fwtrace.probe",
                "-a", f"dport=8080 executable={ANSIBLE_BIN / 'fwtrace'}", "--check", "-o", cwd=tmp_path)
    assert p.returncode == 0 and "inet fwtrace_<run id>" in p.stdout and '"changed": false' in p.stdout, p.stdout
    # info: read-only facts (doctor, the host's own ruleset, its listeners)
    p = ansible(fleet["ctl"], "ansible", "-i", str(inv), "web2", "-m", "fwtrace.fwtrace.info",
                "-a", f"executable={ANSIBLE_BIN / 'fwtrace'}", "--check", "-o", cwd=tmp_path)
    assert p.returncode == 0 and "reject with tcp reset" in p.stdout and '"changed": false' in p.stdout, p.stdout
    assert "198.51.100.1:22" in p.stdout  # its sshd, among the listeners
