"""Crash-proof cleanup: SIGKILL at every phase, then `fwtrace cleanup` restores everything;
SIGINT/SIGTERM/SIGHUP clean up by themselves; bad namespaces touch nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tracer.cli.lab import Lab
from tracer.pipeline.driver import KILL_ENV

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


@pytest.fixture(autouse=True)
def run_dir(tmp_path_factory: Any, monkeypatch: Any) -> str:
    """A journal directory of this test's own: other fwtrace runs on the machine keep theirs."""
    d = str(tmp_path_factory.mktemp("run"))
    monkeypatch.setenv("FWTRACE_RUN_DIR", d)
    return d


def fwtrace(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60, **kw)  # type: ignore[call-overload]


def state(lab: Lab) -> tuple[str, str]:
    return (lab.run(lab.server, ["nft", "list", "ruleset"]).stdout,
            lab.run(lab.server, ["sysctl", "-a", "--pattern", "^net\\.netfilter\\.nf_(log|conntrack_log)"]).stdout)


def journals() -> list[str]:
    d = os.environ["FWTRACE_RUN_DIR"]
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


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
    p = subprocess.Popen([sys.executable, "-m", "tracer", "-v", "probe", "--dport", "8080", "--netns", lab.server,
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
    assert r.returncode == 3  # an environment problem, as README and --help say
    assert r.stderr.strip().startswith("fwtrace: error: unknown network namespace: no-such-namespace-fwtrace")
    assert len(r.stderr.strip().splitlines()) == 1
    r = fwtrace("probe", "--dport", "80", "--netns", lab.server, "--from-netns", "nope-fwtrace")
    assert r.returncode == 3 and "unknown network namespace: nope-fwtrace" in r.stderr
    assert state(lab) == start


def fake_tool_dir(tmp_path: Any, name: str, script: str) -> str:
    """A stand-in for a broken system tool (the one mock here: a real nft cannot be made to fail
    reading a ruleset on demand). It forwards everything but `list` to the real nft."""
    d = tmp_path / "bin"
    d.mkdir()
    tool = d / name
    tool.write_text(script)
    tool.chmod(0o755)
    return f"{d}:{os.environ['PATH']}"


def test_not_root_is_refused_before_anything() -> None:
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "tracer",
                        "probe", "--dport", "80"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert r.stderr.strip() == ("fwtrace: error: fwtrace needs root (CAP_NET_ADMIN) to read and trace netfilter "
                                "(hint: run it with sudo)")


def test_missing_nft_is_refused_before_anything(lab: Lab, tmp_path: Any) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    start = state(lab)
    r = fwtrace("probe", "--dport", "80", "--netns", lab.server, env={"PATH": str(d)})
    assert r.returncode == 3
    assert r.stderr.strip().startswith("fwtrace: error: required commands not found: nft, ip (hint: install them")
    assert state(lab) == start and journals() == []


def test_unreadable_ruleset_is_an_error_after_a_clean_undo(lab: Lab, tmp_path: Any) -> None:
    lab.nft(lab.server, RULESET)
    start, before_journals = state(lab), journals()
    real = subprocess.run(["which", "nft"], capture_output=True, text=True).stdout.strip()
    path = fake_tool_dir(tmp_path, "nft", f"""#!/bin/sh
case " $* " in *" tables "*) exec {real} "$@";; esac  # the table list holds no rule: readable
for a in "$@"; do [ "$a" = list ] && [ "$2" != table ] && {{ echo "Error: unknown expression type 'frob'" >&2; exit 1; }}; done
exec {real} "$@"
""")
    r = fwtrace("probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--timeout", "0.3",
                env={"PATH": path})
    assert r.returncode == 3, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fwtrace: error: `nft -a list chain inet filter input` failed with exit code 1: "
                           "Error: unknown expression type 'frob'")
    assert state(lab) == start and journals() == before_journals
