"""nft in-process through libnftables (issue 25) gives what the nft command gives: the same text
for every listing fwtrace reads, the same exit status and message for a failure, one transaction
per `-f -` batch (a batch with a bad line changes nothing), and a wrapper earlier on PATH still
runs as a command."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from tracer import system
from tracer.cli.lab import SEED_RULESET, Lab
from tracer.errors import CommandError
from tracer.system import nftlib

LISTINGS = [["nft", "list", "chains"], ["nft", "-a", "list", "chain", "ip", "filter", "INPUT"], ["nft", "-a", "list", "ruleset"],
            ["nft", "-j", "-s", "list", "table", "ip", "filter"], ["nft", "list", "tables"], ["nft", "-a", "list", "table", "ip", "filter"],
            ["nft", "-j", "list", "ruleset"], ["nft", "-a", "list", "chain", "ip", "nope", "x"],
            ["nft", "-t", "list", "sets"], ["nft", "-t", "list", "meters"], ["nft", "-t", "list", "ruleset"]]


def test_in_process_listings_are_the_commands(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.nft(lab.server, "table inet t {\n set s {\n  type ipv4_addr\n  elements = { 192.0.2.9 }\n }\n"
            " chain c {\n  type filter hook input priority 10; policy accept;\n  ip saddr @s counter drop\n"
            "  tcp dport 22 accept\n }\n}\n")
    assert nftlib.usable(shutil.which("nft") or "nft")
    with system.netns(lab.server):
        for argv in LISTINGS + [["nft", "-a", "list", "table", "inet", "t"]]:
            lib = nftlib.run(argv, None)
            cmd = subprocess.run(argv, capture_output=True, text=True)
            assert lib == (cmd.returncode, cmd.stdout, cmd.stderr), argv


def test_a_batch_is_one_transaction(lab: Lab) -> None:
    with system.netns(lab.server):
        system.run(["nft", "-f", "-"], input="add table inet fw25\nadd chain inet fw25 c\n")
        assert system.run(["nft", "list", "chains"]).stdout.count("chain c") == 1
        with pytest.raises(CommandError) as e:
            system.run(["nft", "-f", "-"], input="add chain inet fw25 d\nadd rule inet fw25 nosuch accept\n")
        assert e.value.returncode == 1
        assert "No such file or directory" in str(e.value)
        assert "chain d" not in system.run(["nft", "list", "table", "inet", "fw25"]).stdout  # nothing of it stayed
        system.run(["nft", "-f", "-"], input="delete table inet fw25\n")
        assert "fw25" not in system.run(["nft", "list", "tables"]).stdout


def test_a_wrapper_on_path_runs_as_a_command(lab: Lab, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    (d / "nft").write_text("#!/bin/sh\necho wrapped \"$@\"\n")
    (d / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    with system.netns(lab.server):
        assert system.run(["nft", "list", "tables"]).stdout == "wrapped list tables\n"
