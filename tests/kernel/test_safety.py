"""Crash-proof cleanup: SIGKILL at every phase, then `fwtrace cleanup` restores everything;
SIGINT/SIGTERM/SIGHUP clean up by themselves; bad namespaces touch nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tracer.journal import RUN_DIR
from tracer.lab import Lab
from tracer.probe import KILL_ENV

# No counters: `nft list ruleset` must then be byte-identical before and after.
RULESET = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state established,related accept
\t\ttcp dport 22 accept
\t}
}
"""
PHASES = ["snapshot", "instrument-1", "inject", "collect", "cleanup"]


def fwtrace(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, **kw)  # type: ignore[call-overload]


def state(lab: Lab) -> tuple[str, str]:
    return (lab.run(lab.server, ["nft", "list", "ruleset"]).stdout,
            lab.run(lab.server, ["sysctl", "-a", "--pattern", "^net\\.netfilter\\.nf_(log|conntrack_log)"]).stdout)


def journals() -> list[str]:
    return sorted(os.listdir(RUN_DIR)) if os.path.isdir(RUN_DIR) else []


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_at_each_phase_then_cleanup_restores(lab: Lab, phase: str) -> None:
    lab.nft(lab.server, RULESET)
    start = state(lab)
    before_journals = journals()
    killed = fwtrace("probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client,
                     "--timeout", "0.5", env={KILL_ENV: phase})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if phase not in ("snapshot",):
        # The kill left something behind: the journal says what, and a new run warns about it.
        assert len(journals()) == len(before_journals) + 1
        warned = fwtrace("probe", "--dport", "22", "--netns", lab.server, "--from-netns", lab.client, "--timeout", "0.3")
        assert "dead fwtrace run left changes behind" in warned.stderr
    cleaned = fwtrace("cleanup", "--netns", lab.server)
    assert cleaned.returncode == 0, cleaned.stderr
    assert state(lab) == start
    assert journals() == before_journals
    assert "fwtrace" not in lab.run(lab.server, ["nft", "list", "tables"]).stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_clean_up(lab: Lab, sig: signal.Signals) -> None:
    lab.nft(lab.server, RULESET)
    start = state(lab)
    before_journals = journals()
    p = subprocess.Popen([sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server,
                          "--from-netns", lab.client, "--timeout", "20"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stderr is not None
    deadline = time.monotonic() + 10
    for line in p.stderr:  # wait until the instrumentation is in place, then interrupt
        if "change" in line or time.monotonic() > deadline:
            break
    time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert state(lab) == start
    assert journals() == before_journals


def test_unknown_namespace_touches_nothing(lab: Lab) -> None:
    start = state(lab)
    r = fwtrace("probe", "--dport", "80", "--netns", "no-such-namespace-fwtrace")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("fwtrace: error: unknown network namespace: no-such-namespace-fwtrace")
    assert len(r.stderr.strip().splitlines()) == 1
    r = fwtrace("probe", "--dport", "80", "--netns", lab.server, "--from-netns", "nope-fwtrace")
    assert r.returncode == 2 and "unknown network namespace: nope-fwtrace" in r.stderr
    assert state(lab) == start
