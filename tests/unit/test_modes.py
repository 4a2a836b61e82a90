"""Honest modes (tracer.plan.modes) and the one conclusion of a run (diagnose.overall)."""
from __future__ import annotations

import ipaddress
import json

import pytest

from tracer import cli, diagnose
from tracer.plan import modes
from tracer.errors import UsageError


def addr_json(*ifaces: tuple[str, str]) -> str:
    links = {}
    for dev, cidr in ifaces:
        ip, plen = cidr.split("/")
        links.setdefault(dev, {"ifname": dev, "flags": ["UP"], "addr_info": []})["addr_info"].append(
            {"local": ip, "prefixlen": int(plen), "scope": "global"})
    return json.dumps(list(links.values()))


DOCKER_HOST = addr_json(("docker0", "172.17.0.1/16"), ("eth0", "192.0.2.1/24"), ("eth0", "2001:db8:1::1/64"))


def test_default_dst_is_the_address_the_sender_shares_a_subnet_with() -> None:
    client = addr_json(("eth0", "192.0.2.2/24"))
    assert modes.reachable_dst(DOCKER_HOST, client, 4) == ipaddress.ip_address("192.0.2.1")
    assert modes.reachable_dst(DOCKER_HOST, addr_json(("eth0", "10.9.0.2/24")), 4) is None  # routed: ask the routes


def test_src_of_the_target_itself_and_broadcast_dst_are_refused() -> None:
    a = ipaddress.ip_address
    with pytest.raises(UsageError, match="address of the target itself"):
        modes.check_addresses(a("192.0.2.1"), a("192.0.2.1"), DOCKER_HOST, simulated=True)
    with pytest.raises(UsageError, match="broadcast"):
        modes.check_addresses(a("203.0.113.5"), a("172.17.255.255"), DOCKER_HOST, simulated=True)
    modes.check_addresses(a("192.0.2.1"), a("192.0.2.1"), DOCKER_HOST, simulated=False)  # --local: fine


@pytest.mark.parametrize("argv,fragment", [
    (["probe", "--proto", "icmp", "--dport", "80"], "--dport does not apply to --proto icmp"),
    (["probe", "--dport", "80", "--via", "lo"], "--via lo"),
    (["probe", "--dport", "80", "--dst", "224.0.0.1"], "not a unicast address"),
    (["probe", "--dport", "80", "--dst", "255.255.255.255"], "not a unicast address"),
])
def test_requests_without_a_true_answer_are_refused(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "hint:" in err and "Traceback" not in err


def test_sender_is_the_target_means_a_local_probe() -> None:
    ns = cli.build_parser().parse_args(["probe", "--dport", "80", "--netns", "srv", "--from-netns", "srv"])
    req = cli.probe_request(ns)
    assert req.mode == "local" and req.from_netns is None


def test_one_conclusion_for_all_packets() -> None:
    assert diagnose.overall(["tcp port 80 is reachable: x."] * 3, [True] * 3) == "tcp port 80 is reachable: x."
    mixed = diagnose.overall(["tcp port 80 is reachable: x.", "tcp port 80 is blocked: y."], [True, False])
    assert mixed.startswith("the 2 probes did not all fare alike: 1 of 2 reached the service, so it is not reliably")
    assert "packet 1: tcp port 80 is reachable" in mixed and "packet 2: tcp port 80 is blocked" in mixed


def test_help_defines_reached() -> None:
    assert '"reached" means the service\'s answer came back out through the firewall' in cli.EPILOG_PROBE
