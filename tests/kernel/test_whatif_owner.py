"""`fwtrace what-if -- ufw ...` / `-- firewall-cmd ...` on the real kernel: the shadow copies a lab
server loaded with ufw's and firewalld's own layouts (tests/kernel/test_owners.py), applies the
rules the owner's command would write (no ufw or firewalld runs: stand-ins that would leave a mark
sit first on PATH for the subprocess cases), and the sampled sources' verdicts are compared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.test_owners import FIREWALLD, UFW
from tests.kernel.test_whatif import LOG, ZONED, listing, shadows
from tracer.cli.lab import CLIENT4, SERVER4, Lab
from tracer.errors import ExitStatus
from tracer.model import ProbeRequest, Proto
from tracer.pipeline import whatif

FWTRACE = [sys.executable, "-m", "tracer"]

# ufw's layout with a source range named in before.rules (a sampled source that is not the client)
UFW_BANNED = UFW.replace("-A ufw-before-input -j ufw-not-local\n",
                         "-A ufw-before-input -s 198.51.100.0/24 -j ufw-user-input\n-A ufw-before-input -j ufw-not-local\n")
# firewalld's zone dispatch with a second zone bound to a source range (another zone's members)
FIREWALLD_ZONES = FIREWALLD.replace('\t\tiifname "eth0" goto filter_IN_public\n',
                                    '\t\tip saddr 100.64.0.0/10 goto filter_IN_public\n\t\tiifname "eth0" goto filter_IN_public\n')


def loaded(lab: Lab, load: Any) -> Any:
    """The lab server with an owner's layout and listeners on 8443 and 22; afterwards the host's
    firewall is as before and no shadow is left."""
    load()
    lab.listen(lab.server, Proto.TCP, 8443)
    lab.listen(lab.server, Proto.TCP, 22)
    before, names = listing(lab), shadows()
    yield lab
    assert listing(lab) == before, "the host's firewall changed"
    assert not shadows() - names, "a shadow namespace was left behind"


@pytest.fixture
def ufw(lab: Lab) -> Any:
    yield from loaded(lab, lambda: lab.iptables_restore(lab.server, UFW_BANNED))


@pytest.fixture
def firewalld(lab: Lab) -> Any:
    yield from loaded(lab, lambda: lab.nft(lab.server, FIREWALLD_ZONES))


def run_whatif(lab: Lab, *cmd: str) -> Any:
    req = ProbeRequest(dport=8443, netns=lab.server, from_netns=lab.client, dst=SERVER4, timeout=0.5)
    w = whatif.what_if(req, list(cmd), LOG)
    assert w.host_unchanged and not w.shadow_left
    return w


def gains(w: Any) -> set[str]:
    return {c.source for c in w.changes if c.gains and c.port == 8443}


def test_ufw_allow_port_gains_everyone(ufw: Lab) -> None:
    w = run_whatif(ufw, "ufw", "allow", "8443/tcp")
    assert w.translated.rules == ("iptables-nft -A ufw-user-input -p tcp --dport 8443 -j ACCEPT",)
    assert {str(CLIENT4), "198.51.100.1", "203.0.113.200"} <= gains(w)
    assert all(c.before == "drop" and c.after == "open" for c in w.changes)
    text = whatif.plan.render(w)
    assert "applied the rules `ufw allow 8443/tcp` would write:" in text
    assert text.index("applied the rules") < text.index("GAINS")
    assert w.to_json()["translated"]["rules"] == list(w.translated.rules)


def test_ufw_allow_from_client_gains_only_the_client(ufw: Lab) -> None:
    w = run_whatif(ufw, "ufw", "allow", "from", str(CLIENT4), "to", "any", "port", "8443", "proto", "tcp")
    assert w.translated.rules == (f"iptables-nft -A ufw-user-input -p tcp --dport 8443 -s {CLIENT4} -j ACCEPT",)
    assert [(c.source, c.port, c.gains) for c in w.changes] == [(str(CLIENT4), 8443, True)]
    assert len({p.source.addr for p in w.probes}) >= 3  # the others were probed, and kept out


def test_ufw_delete_shows_who_loses(ufw: Lab) -> None:
    req = ProbeRequest(dport=22, netns=ufw.server, from_netns=ufw.client, dst=SERVER4, timeout=0.5)
    w = whatif.what_if(req, ["ufw", "delete", "allow", "22/tcp"], LOG)
    loses = {c.source for c in w.changes if c.port == 22 and c.before == "open"}
    assert {str(CLIENT4), "203.0.113.200"} <= loses and not any(c.gains for c in w.changes)
    w = whatif.what_if(req, ["ufw", "delete", "allow", "2222/tcp"], LOG)
    assert not w.changes and any("Could not delete non-existent rule" in n for n in w.translated.notes)


def test_firewall_cmd_add_port_gains_everyone_a_rich_rule_only_the_client(firewalld: Lab) -> None:
    w = run_whatif(firewalld, "firewall-cmd", "--add-port=8443/tcp")
    assert w.translated.rules == ("nft add rule inet firewalld filter_IN_public_allow tcp dport 8443 accept",)
    assert {str(CLIENT4), "100.64.0.1", "203.0.113.200"} <= gains(w)
    assert all(c.before.startswith("reject") and c.after == "open" for c in w.changes)
    rich = f"rule family=ipv4 source address={CLIENT4} port port=8443 protocol=tcp accept"
    w = run_whatif(firewalld, "firewall-cmd", "--permanent", "--zone=public", f"--add-rich-rule={rich}")
    assert [(c.source, c.port, c.gains) for c in w.changes] == [(str(CLIENT4), 8443, True)]
    assert any("--reload" in n for n in w.translated.notes)


def test_firewall_cmd_remove_service_and_add_source(firewalld: Lab) -> None:
    req = ProbeRequest(dport=22, netns=firewalld.server, from_netns=firewalld.client, dst=SERVER4, timeout=0.5)
    w = whatif.what_if(req, ["firewall-cmd", "--remove-service=ssh"], LOG)
    assert {str(CLIENT4), "203.0.113.200"} <= {c.source for c in w.changes if c.before == "open"}
    assert any("service ssh" in n for n in w.translated.notes)


def test_owner_commands_from_the_command_line(firewalld: Lab, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("ufw", "firewall-cmd"):
        (fake / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/ran-{tool}\nexit 1\n")
        (fake / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    p = subprocess.run([*FWTRACE, "what-if", "--dport", "8443", "--netns", firewalld.server, "--json", "--",
                        "firewall-cmd", "--zone=public", "--add-port=8443/tcp"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)["whatif"]
    assert doc["translated"]["owner"] == "firewalld" and doc["translated"]["rules"]
    assert any(c["change"] == "gains" for c in doc["changes"])
    # the wrong owner's command: no ufw chains here; one line, exit 2, nothing built
    names = shadows()
    p = subprocess.run([*FWTRACE, "what-if", "--dport", "8443", "--netns", firewalld.server, "--", "ufw", "allow",
                        "8443/tcp"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == ExitStatus.USAGE and p.stdout == ""
    err = [line for line in p.stderr.splitlines() if "fwtrace: error:" in line]
    assert len(err) == 1 and "no ufw chains" in err[0] and "hint:" in err[0]
    # an unsupported option: named, exit 2 (before root or the target is read)
    p = subprocess.run([*FWTRACE, "what-if", "--dport", "8443", "--netns", firewalld.server, "--", "firewall-cmd",
                        "--add-masquerade"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == ExitStatus.USAGE and "--add-masquerade" in p.stderr
    assert not shadows() - names and not list(tmp_path.glob("ran-*"))


def test_firewall_cmd_on_a_target_without_firewalld(lab: Lab) -> None:
    lab.iptables_restore(lab.server, ZONED)
    names = shadows()
    from tracer.errors import UsageError

    with pytest.raises(UsageError) as e:
        run_whatif(lab, "firewall-cmd", "--add-port=8443/tcp")
    assert "no `table inet firewalld`" in e.value.message and e.value.hint
    with pytest.raises(UsageError) as e:
        run_whatif(lab, "firewall-cmd", "--zone=nosuch", "--add-port=8443/tcp")
    assert not shadows() - names
