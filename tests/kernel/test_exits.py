"""The exit statuses the README lists, one test each, as a user meets them (fwtrace run as a
command), and the --evidence failures that must be 3 with the verdict intact (issue 21)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tracer.pipeline.driver import SIGINT_ENV
from tracer.cli.lab import SEED_RULESET, SERVER4, Lab
from tracer.model import Proto
from tracer.system.cleanup import SKIP_UNDO_ENV

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture(autouse=True)
def run_dir(tmp_path_factory: Any, monkeypatch: Any) -> str:
    d = str(tmp_path_factory.mktemp("run"))
    monkeypatch.setenv("FWTRACE_RUN_DIR", d)
    return d


def fwtrace(*args: str, env: dict[str, str] | None = None, pre: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(pre or []), sys.executable, "-m", "tracer", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def probe(lab: Lab, *extra: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return fwtrace("probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--dst", str(SERVER4),
                   "--timeout", "0.5", *extra, **kw)


def last(p: subprocess.CompletedProcess[str]) -> str:
    """The report's last paragraph: the one-line summary (folded at 80 columns)."""
    return p.stdout.rstrip().split("\n\n")[-1]


def errors(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("fwtrace: ")]


def test_exit_0_reached(lab: Lab) -> None:
    lab.listen(lab.server, Proto.TCP, 8080)
    p = probe(lab)
    assert p.returncode == 0 and last(p).startswith("REACHED"), p.stdout


def test_exit_1_blocked(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    p = probe(lab)
    assert p.returncode == 1 and last(p).startswith("BLOCKED"), p.stdout


def test_exit_2_usage(lab: Lab) -> None:
    p = probe(lab, "--count", "0")
    assert p.returncode == 2 and len(errors(p)) == 1 and p.stdout == ""


def test_exit_3_not_root() -> None:
    p = fwtrace("probe", "--dport", "80", pre=NOBODY)
    assert p.returncode == 3 and errors(p) == [p.stderr.strip()] and "needs root" in p.stderr, p.stderr


def test_exit_3_doctor_not_root() -> None:
    p = fwtrace("doctor", "--no-load", pre=NOBODY)
    assert p.returncode == 3, p.stderr
    assert "root              no" in p.stdout and p.stdout.rstrip().endswith("probing does NOT work here")
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr


@pytest.mark.parametrize("where", ["/proc/fwtrace-none", "/etc/hostname"])
def test_exit_3_unusable_run_dir(lab: Lab, where: str) -> None:
    p = probe(lab, env={"FWTRACE_RUN_DIR": where})
    assert p.returncode == 3 and errors(p) == [p.stderr.strip()], p.stderr
    assert f"cannot use the run journal directory {where}" in p.stderr and "FWTRACE_RUN_DIR" in p.stderr


def test_exit_3_report_not_written(lab: Lab) -> None:
    for shell in ("{} >/dev/full", "{} >&-"):
        cmd = " ".join([sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server,
                        "--from-netns", lab.client, "--timeout", "0.5"])
        p = subprocess.run(["sh", "-c", shell.format(cmd)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 3, (shell, p.stderr)
        assert errors(p) == [p.stderr.strip()] and "could not write the report to stdout" in p.stderr


def test_exit_4_internal_error_is_one_line(lab: Lab, tmp_path: Path) -> None:
    # A bug, made by a module that raises where fwtrace does not expect it.
    (tmp_path / "sitecustomize.py").write_text("import tracer.cli as c\n"
                                               "def boom(*a, **k):\n    raise RuntimeError('planted bug')\n"
                                               "c.check_evidence_path = boom\n")
    p = fwtrace("probe", "--dport", "80", env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 4, p.stderr
    assert errors(p) == ["fwtrace: internal error: RuntimeError: planted bug (rerun with --traceback and report it)"]


def test_exit_5_cleanup_incomplete(lab: Lab) -> None:
    p = probe(lab, "--json", env={SKIP_UNDO_ENV: "table inet fwtrace_"})
    assert p.returncode == 5, p.stderr
    doc = json.loads(p.stdout)
    assert doc["exit_status"] == 5 and doc["cleanup"]["ok"] is False
    assert [e for e in errors(p) if "cleanup incomplete" in e]
    lab.run(lab.server, ["nft", "delete", "table", "inet", f"fwtrace_{doc['run_id']}"])


def test_exit_130_interrupted(lab: Lab) -> None:
    p = probe(lab, env={SIGINT_ENV: "inject"})
    assert p.returncode == 130 and errors(p) == ["fwtrace: interrupted (SIGINT); every change of the run was undone"]


# --evidence on a full filesystem: a small tmpfs mounted in a mount namespace of the test's own
# (unshare --mount: the machine's mounts never see it, and it goes with the process).


@pytest.mark.parametrize("dest", ["bundle", "bundle.tar.gz"])
def test_evidence_on_a_full_disk_exits_3_with_the_verdict_intact_and_nothing_left(lab: Lab, tmp_path: Path,
                                                                                   dest: str) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    lab.listen(lab.server, Proto.TCP, 8080)
    mnt = tmp_path / "small"
    mnt.mkdir()
    run = " ".join([sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns",
                    lab.client, "--dst", str(SERVER4), "--timeout", "0.5", "--evidence", f"{mnt}/{dest}"])
    script = f"mount -t tmpfs -o size=8k fwtrace-test {mnt} && {run}; rc=$?; ls -A {mnt} >&3; exit $rc"
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script + " 3>" + str(tmp_path / "ls")],
                       capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert p.returncode == 3, p.stderr
    [line] = errors(p)
    assert line.startswith(f"fwtrace: error: could not write the evidence to {mnt}/{dest}: No space left on device")
    assert last(p).startswith("BLOCKED") and "conclusion" in p.stdout  # the verdict, whole
    assert (tmp_path / "ls").read_text() == ""  # no bundle, no .part file, no staging directory
    assert list(mnt.iterdir()) == []  # (and the tmpfs was never the machine's)


def test_two_runs_with_the_same_evidence_path_never_mix(lab: Lab, tmp_path: Path) -> None:
    lab.listen(lab.server, Proto.TCP, 8080)
    dest = tmp_path / "ticket"
    cmd = [sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client,
           "--dst", str(SERVER4), "--timeout", "0.5", "--evidence", str(dest)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in outs) == [0, 2], outs
    refused = next(err for rc, _, err in outs if rc == 2)
    assert f"--evidence {dest}" in refused and ("another fwtrace run holds it" in refused or "not empty" in refused)
    report = json.loads((dest / "report.json").read_text())
    ran = next(out for rc, out, _ in outs if rc == 0)
    assert report["run_id"] in ran  # the files are the one run's that printed
    assert not (dest / ".fwtrace-writing").exists()
