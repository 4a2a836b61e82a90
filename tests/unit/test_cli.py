"""Bad input: one line naming the problem, a hint, a distinct exit status, nothing touched.

These run without root: every case is refused while parsing, before any namespace, socket or
command is touched (a probe that got further would fail differently, or need root).
"""
from __future__ import annotations

from typing import Any

import pytest

from tracer import cli
from tracer.errors import ExitStatus


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["probe", "--dport", "70000"], "port out of range"),
        (["probe", "--dport", "0"], "port out of range"),
        (["probe", "--dport", "http"], "not a port number"),
        (["probe"], "--dport is required"),
        (["probe", "--dport", "80", "--dst", "300.1.1.1"], "not an IPv4 or IPv6 address"),
        (["probe", "--dport", "80", "--dst", "192.0.2.1", "--src", "2001:db8::1"], "different address families"),
        (["probe", "--dport", "53", "--proto", "udp", "--flags", "S"], "--flags only applies to tcp"),
        (["probe", "--dport", "80", "--flags", "SXZ"], "unknown TCP flag letters"),
        (["probe", "--proto", "icmp", "--sport", "1000"], "--sport does not apply to icmp"),
        (["probe", "--proto", "sctp", "--dport", "1"], "invalid choice"),
        (["probe", "--dport", "80", "--count", "0"], "count out of range"),
        (["probe", "--dport", "80", "--timeout", "0"], "timeout out of range"),
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
