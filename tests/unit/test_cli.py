"""Bad input: one line naming the problem, a hint, a distinct exit status, nothing touched.

These run without root: every case is refused while parsing, before any namespace, socket or
command is touched (a probe that got further would fail differently, or need root).
"""
from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from tracer import cli
from tracer.errors import ExitStatus
from tracer.model import Proto


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["probe", "--dport", "70000"], "port out of range"),
        (["probe", "--dport", "0"], "port out of range"),
        (["probe", "--dport", "http"], "not a port number"),
        # int() would take these as 80: only ASCII digits are numbers here
        (["probe", "--dport", "\uff18\uff10"], "not a port number: '\uff18\uff10'"),
        (["probe", "--dport", "8_0"], "not a port number"),
        (["probe", "--dport", "+80"], "not a port number"),
        (["probe", "--dport", " 80"], "not a port number"),
        (["probe", "--dport", "80", "--count", "\u0663"], "not a number"),
        (["probe", "--dport", "80", "--timeout", "inf"], "not a number of seconds"),
        (["probe", "--dport", "80", "--timeout", "1e1"], "not a number of seconds"),
        (["probe"], "--dport is required"),
        (["probe", "--dport", "80", "--dst", "300.1.1.1"], "not an IPv4 or IPv6 address"),
        (["probe", "--dport", "80", "--dst", "192.0.2.1", "--src", "2001:db8::1"], "different address families"),
        (["probe", "--dport", "53", "--proto", "udp", "--flags", "S"], "--flags only applies to tcp"),
        (["probe", "--dport", "80", "--flags", "SXZ"], "unknown TCP flag letters"),
        (["probe", "--proto", "icmp", "--sport", "1000"], "--sport does not apply to icmp"),
        (["probe", "--proto", "sctp", "--dport", "1"], "invalid choice"),
        (["probe", "--dport", "80", "--count", "0"], "count out of range"),
        (["probe", "--dport", "80", "--timeout", "0"], "--timeout: 0 is not allowed: the timeout is more than 0 and at most 60"),
        (["probe", "--dport", "80", "--timeout", "-1"], "--timeout: -1 is not allowed"),
        (["probe", "--dport", "-1"], "--dport: port out of range (1-65535): -1"),
        (["probe", "--dport", "80", "--sport", "-5"], "--sport: port out of range (1-65535): -5"),
        (["probe", "--dport", "80", "--count", "-2"], "--count: count out of range (1-100): -2"),
        (["probe", "--dport", "80", "-6", "--src", "192.0.2.9"], "-6 given but --src 192.0.2.9 is IPv4"),
        (["probe", "--dport", "80", "--redact"], "--redact applies to the evidence bundle only"),
        (["probe", "--dport", "80", "-6", "--dst", "192.0.2.1"], "-6 given but --dst"),
        (["frobnicate"], "invalid choice"),
        (["probe", "--dport", "80", "--log", "syslog"], "invalid choice"),
    ],
)
def test_usage_errors(argv: list[str], needle: str, capsys: Any) -> None:
    assert cli.main(argv) == ExitStatus.USAGE
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fwtrace: error: ") and needle in lines[0] and "hint:" in lines[0]


def test_help_lists_the_interface(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["probe", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--dport", "--proto", "--flags", "--dst", "--src", "--sport", "--count", "--netns",
                "--from-netns", "--timeout", "--json", "--via", "--local", "--print-bpf", "203.0.113.5", "--log"):
        assert opt in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["probe", "--dport", "80", "--local", "--from-netns", "x"], "--local and --from-netns exclude each other"),
        (["probe", "--dport", "80", "--local", "--via", "eth0"], "--via only applies to simulated ingress"),
        (["probe", "--dport", "80", "--from-netns", "x", "--via", "eth0"], "--via only applies to simulated ingress"),
        (["probe", "--dport", "80", "--via", "a/b"], "not an interface name"),
    ],
)
def test_ingress_usage_errors(argv: list[str], needle: str, capsys: Any) -> None:
    assert cli.main(argv) == ExitStatus.USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "hint:" in lines[0]


def test_request_modes() -> None:
    parser = cli.build_parser()
    req = cli.probe_request(parser.parse_args(["probe", "--dport", "8080", "--src", "203.0.113.5", "--via", "eth0"]))
    assert req.mode == "ingress" and req.via == "eth0" and str(req.src) == "203.0.113.5"
    assert cli.probe_request(parser.parse_args(["probe", "--dport", "8080"])).mode == "ingress"
    assert cli.probe_request(parser.parse_args(["probe", "--dport", "8080", "--local"])).mode == "local"
    assert cli.probe_request(parser.parse_args(["probe", "--dport", "8080", "--from-netns", "c"])).mode == "from-netns"


@pytest.mark.parametrize("argv, log", [([], ""), (["--log"], "nflog"), (["--log", "kmsg"], "kmsg"), (["--log", "nflog"], "nflog")])
def test_log_option(argv: list[str], log: str) -> None:
    ns = cli.build_parser().parse_args(["probe", "--dport", "80", *argv])
    assert cli.probe_request(ns).log == log



def test_negative_numbers_never_read_as_missing_arguments(capsys: Any) -> None:
    for argv in (["probe", "--dport", "-1"], ["probe", "--dport", "80", "--timeout", "-1"]):
        assert cli.main(argv) == ExitStatus.USAGE
        assert "expected one argument" not in capsys.readouterr().err


def test_src_ipv4_with_ipv6_flag_does_not_blame_dst(capsys: Any) -> None:
    assert cli.main(["probe", "--dport", "80", "-6", "--src", "192.0.2.9"]) == ExitStatus.USAGE
    assert "--dst" not in capsys.readouterr().err


def test_version(capsys: Any) -> None:
    from tracer import __version__

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fwtrace {__version__}"


def test_help_shows_required_dport_every_exit_status_and_examples(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["probe", "--help"])
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    assert "--dport PORT" in usage and "[--dport" not in usage and "required for tcp and udp" in usage
    for status, what in ((0, "reached"), (1, "blocked"), (2, "usage"), (3, "environment"), (4, "internal"),
                         (5, "cleanup incomplete"), (130, "interrupted")):
        assert any(line.split()[:1] == [str(status)] and what in line for line in out.splitlines()), status
    assert "unknown namespace" in out and "examples:" in out and "--evidence" in out


def test_unknown_namespace_is_an_environment_problem() -> None:
    from tracer import system
    from tracer.errors import EnvironmentProblem

    with pytest.raises(EnvironmentProblem) as e:
        system.netns_path("no-such-namespace-fwtrace")
    assert e.value.status == ExitStatus.ENVIRONMENT == 3


# ---------------------------------------------------------------------------------------------
# --evidence is checked before anything is touched (no root needed to be refused)


def test_evidence_path_refused_up_front(tmp_path: Any, capsys: Any) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "report.json").write_text("{}")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    old_tgz = tmp_path / "old.tar.gz"
    old_tgz.write_text("x")
    cases = [("", "--evidence needs a path"), (str(a_file), "exists and is not a directory"),
             (str(full), "is a directory that is not empty"), (str(old_tgz), "exists and is not a directory"),
             ("/proc/x", "cannot write in /proc"), (str(tmp_path / "no" / "dir"), "does not exist")]
    for path, needle in cases:
        assert cli.main(["probe", "--dport", "80", "--evidence", path]) == ExitStatus.USAGE, path
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fwtrace: error: ") and needle in err, (path, err)
    assert (full / "report.json").read_text() == "{}" and a_file.read_text() == "x"


def test_evidence_path_accepted(tmp_path: Any) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (str(empty), str(tmp_path / "new"), str(tmp_path / "bundle.tar.gz")):
        cli.check_evidence_path(path)  # raises on refusal
    assert list(empty.iterdir()) == [] and not (tmp_path / "new").exists()


def test_interrupt_message_says_what_was_undone() -> None:
    from tracer.errors import Interrupted

    assert cli._interrupted_line(KeyboardInterrupt()) == "fwtrace: interrupted (SIGINT)"
    assert cli._interrupted_line(Interrupted("SIGTERM", None, "srv", run=True)) == \
        "fwtrace: interrupted (SIGTERM) before the run changed anything"
    assert cli._interrupted_line(Interrupted("SIGINT", [], "srv", run=True)) == \
        "fwtrace: interrupted (SIGINT); every change of the run was undone"
    assert cli._interrupted_line(Interrupted("SIGHUP", ["veth fwi1: busy"], "srv", run=True)) == \
        "fwtrace: interrupted (SIGHUP); could not undo: veth fwi1: busy (hint: run `fwtrace cleanup --netns srv`)"


def test_cleanup_help_says_which_runs(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["cleanup", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "only the dead runs that probed" in out and "Without --netns: replays the journals of ALL dead runs" in out


def test_probe_help_lists_exit_statuses(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # the table of statuses, spacing aside
    assert "5 cleanup incomplete" in out and "130 interrupted" in out


@pytest.mark.parametrize("argv, mode", [([], "auto"), (["--ebpf", "on"], "on"), (["--ebpf", "off"], "off")])
def test_ebpf_option(argv: list[str], mode: str) -> None:
    ns = cli.build_parser().parse_args(["probe", "--dport", "80", *argv])
    assert cli.probe_request(ns).ebpf == mode


def test_ebpf_option_refuses_other_words(capsys: Any) -> None:
    assert cli.main(["probe", "--dport", "80", "--ebpf", "maybe"]) == ExitStatus.USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_doctor_options() -> None:
    ns = cli.build_parser().parse_args(["doctor", "--json", "--no-load"])
    assert (ns.command, ns.json, ns.no_load) == ("doctor", True, True)


@pytest.mark.parametrize("argv, verbose, fmt, tb", [
    (["probe", "--dport", "80", "-v"], 1, "console", False),
    (["-v", "probe", "--dport", "80", "-vv"], 3, "console", False),
    (["probe", "--log-format", "json", "--dport", "80", "--traceback"], 0, "json", True),
    (["probe", "--dport", "80", "--log-format=json", "--verbose"], 1, "json", False),
    (["doctor", "-vv"], 2, "console", False),
])
def test_global_options_after_the_subcommand(argv: list[str], verbose: int, fmt: str, tb: bool) -> None:
    ns = cli.build_parser().parse_args(cli._globals_first(argv))
    assert (ns.verbose, ns.log_format, ns.traceback) == (verbose, fmt, tb)
    assert cli._globals_first(["probe", "--dport", "80", "--", "-v"]) == ["probe", "--dport", "80", "--", "-v"]


def test_probe_help_states_the_limits_and_where_global_options_go(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "1-100" in out and "at most 60" in out and "1-65535" in out
    assert "may also be given here, after `probe`" in out


def test_signal_handler_only_sets_the_flag_and_check_raises_once() -> None:
    import os
    import signal

    from tracer.system import console
    from tracer.errors import Interrupted

    with console.interrupts():
        # raise_signal delivers to this thread and runs the Python handler before it returns, so
        # SIGTERM's handler has run before SIGINT is sent. (os.kill may be delivered to another
        # thread of pytest's; two pending signals then run in number order, SIGINT first: the
        # flake seen under load.) The handler must not raise.
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        wake = console.wakeup_fd()
        assert wake is not None and os.read(wake, 16)  # a select() on it returns at once
        with pytest.raises(Interrupted) as e:
            console.check()
        assert e.value.signame == "SIGTERM"  # the first one
        console.check()  # once: the undo on the way out goes on
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_proto_both_is_tcp_and_udp_in_one_run(capsys: Any) -> None:
    import random

    from tracer.pipeline.probe import build_specs

    parser = cli.build_parser()
    req = cli.probe_request(parser.parse_args(["probe", "--dport", "53", "--proto", "both", "--count", "2"]))
    assert req.both and req.protos == (Proto.TCP, Proto.UDP)
    specs = build_specs(req, ipaddress.ip_address("203.0.113.5"), ipaddress.ip_address("192.0.2.1"), random.Random(1))
    assert [(s.proto, s.dport) for s in specs] == [(Proto.TCP, 53)] * 2 + [(Proto.UDP, 53)] * 2
    assert cli.main(["probe", "--dport", "53", "--proto", "both", "--log"]) == ExitStatus.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log takes one protocol" in err[0] and "hint:" in err[0]
