"""The run's step sequence (tracer/pipeline/probe.py) driven by a script instead of the system: no root.

Each test answers the pipeline's commands from `Script` and checks what it asked for, in order:
the sequence of a local run, the simulated-ingress fallback, an interrupted run, and the waiting
rules on trace datagrams captured on the real kernel.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tracer.plan import commands as c
from tracer.plan.commands import drive
from tracer.pipeline.evidence import spec_from_json
from tracer.system.bundle_io import read_dir as read_bundle
from tracer.inject.ingress import Route
from tracer.model import Mode, ProbeRequest, Ruleset
from tracer.report.outcome import exit_status
from tracer.packet import parse_headers
from tracer.pipeline.probe import DRAIN, REJECT_GRACE, Waiter, probe
from tracer.ruleset.snapshot import Snapshot
from tracer.plan import plan
from tracer.collect.nftrace import parse_messages

BUNDLES = Path(__file__).parent.parent / "data" / "bundles"
SERVER = ipaddress.ip_address("192.0.2.1")
SERVER_MAC = "02:00:00:00:00:01"
ADDRS = json.dumps([{"ifname": "eth0", "flags": ["UP"], "address": SERVER_MAC,
                     "addr_info": [{"local": "192.0.2.1", "scope": "global"}]}])
EMPTY = Snapshot(Ruleset(), "", {})


class Script:
    """Answers each command as the system would have; records what was asked."""

    def __init__(self, **answers: Any) -> None:
        generations = itertools.count(10)
        self.answers: dict[str, Any] = {
            "TakeSnapshot": EMPTY, "SaveLegacy": {}, "ListAddresses": ADDRS, "RouteBack": Route("eth0"),
            "OpenInjector": SERVER, "BuildPackets": lambda cmd: tuple(b"probe" for _ in cmd.specs),
            "OpenPort": "", "Generation": lambda cmd: next(generations), "ReadSysctl": "0", "Send": 100.0,
            "Wait": None, "Conntrack": "none", "Finish": c.Finished(), "ProofListing": {}, "NftTables": {},
            "LegacyHasRaw": False, "SharedHeld": False, "MetChains": EMPTY,
            "Describe": "a reply", "RpFilter": False, "Listeners": (), "ListBaseChains": "", "Neighbour": SERVER_MAC,
            "StatefulFacts": c.StatefulTexts((), "", ()),
            "ReadCounters": {}, "KernelChecks": ({}, None, None), "ConnectCheck": "open",
            "ProcessFacts": ((), None, "", ""), "SelinuxFacts": (None, "", "", ""), **answers,
        }
        self.asked: list[c.Command] = []

    def __call__(self, cmd: c.Command) -> Any:
        self.asked.append(cmd)
        answer = self.answers.get(type(cmd).__name__)
        return answer(cmd) if callable(answer) else answer

    def names(self) -> list[str]:
        return [type(cmd).__name__ for cmd in self.asked]


def run(req: ProbeRequest, script: Script) -> Any:
    return drive(probe(req, "0badc0de", 4242, random.Random(1)), script)


def test_local_run_sequence() -> None:
    script = Script()
    report = run(ProbeRequest(dport=8080, local=True), script)
    assert script.names() == [
        "Checkpoint", "ListAddresses", "OpenInjector", "ListAddresses", "ListBaseChains", "BuildPackets", "SaveLegacy",
        "Begin", "StatefulFacts", "ProofListing", "Generation", "Change", "Generation", "ReadSysctl", "ReadCounters", "Send", "Wait",
        "ReadCounters", "Finish", "Generation", "ProofListing", "MetChains", "Listeners", "KernelChecks"]
    add = next(cmd for cmd in script.asked if isinstance(cmd, c.Change))
    assert add.atomic and add.action == c.RunArgv(("nft", "-f", "-"), report.evidence.batch)
    assert add.undo.netns is None  # the driver gives it the run's namespace
    assert report.mode is Mode.LOCAL and report.generations == (10, 11, 12) and report.ruleset_unchanged
    assert report.results[0].spec.dst == SERVER and report.cleanup_ok and exit_status(report) == 1


def test_from_netns_enters_the_client_namespace_once() -> None:
    script = Script(OpenInjector=ipaddress.ip_address("192.0.2.2"))
    report = run(ProbeRequest(dport=8080, from_netns="cli", dst=SERVER), script)
    opened = [cmd for cmd in script.asked if isinstance(cmd, c.OpenInjector)]
    assert opened == [c.OpenInjector("cli", SERVER)]  # the socket and the source address, together
    assert report.mode is Mode.FROM_NETNS and str(report.results[0].spec.src) == "192.0.2.2"
    # (the target's addresses are read for the checks of tracer.plan.modes; none in the client)
    assert {cmd for cmd in script.asked if isinstance(cmd, c.ListAddresses)} == {c.ListAddresses()}
    # The sender's way to the target: its route, and who answers for the next hop there.
    assert [cmd for cmd in script.asked if isinstance(cmd, (c.RouteBack, c.Neighbour))] == [
        c.RouteBack(SERVER, None, "cli"), c.Neighbour(SERVER, "eth0", "cli")]


def test_waits_until_the_timeout_then_cleans_up() -> None:
    polls = iter([c.Polled(100.2), c.Polled(100.7), None])
    script = Script(Wait=lambda cmd: next(polls))
    run(ProbeRequest(dport=8080, local=True, timeout=1.0), script)
    waits = [cmd for cmd in script.asked if isinstance(cmd, c.Wait)]
    assert [w.until for w in waits] == [101.0, 101.0, 101.0] and all(w.replies for w in waits)


def test_simulated_ingress_with_via_looks_the_route_up_once() -> None:
    script = Script()
    report = run(ProbeRequest(dport=8080, via="eth0", src=ipaddress.ip_address("203.0.113.5")), script)
    assert script.names().count("RouteBack") == 1 and "OpenPort" in script.names()
    assert "OpenInjector" not in script.names()
    assert report.mode is Mode.INGRESS and report.via == "eth0" and not report.caveats


def test_ingress_falls_back_to_a_local_probe_when_the_port_cannot_be_built() -> None:
    script = Script(OpenPort="tcx not supported")
    report = run(ProbeRequest(dport=8080, src=ipaddress.ip_address("203.0.113.5")), script)
    names = script.names()
    # The route back picks eth0, whose address becomes the destination; asked again from it.
    # Then who answers for the next hop of the route back (before anything is changed).
    assert names[:9] == ["Checkpoint", "ListAddresses", "RouteBack", "ListAddresses", "RouteBack", "Neighbour",
                         "ListAddresses", "ListBaseChains", "BuildPackets"]
    after_port = names[names.index("OpenPort") + 1:]
    assert after_port[:4] == ["OpenInjector", "ListAddresses", "ListBaseChains", "BuildPackets"]  # a local source, new packets
    sent = next(cmd for cmd in script.asked if isinstance(cmd, c.Send))
    assert sent.spec.src == SERVER  # not the spoofed 203.0.113.5: its replies would leave the machine
    assert report.mode is Mode.LOCAL and report.via is None
    assert report.caveats == ("simulated ingress on eth0 is not possible here (tcx not supported); "
                              "the probe was sent locally instead",)
    assert "Reset" not in names


def test_interrupted_run_still_asks_for_its_cleanup() -> None:
    def interrupt(cmd: c.Command) -> None:
        raise KeyboardInterrupt

    script = Script(Wait=interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(ProbeRequest(dport=8080, local=True), script)
    assert script.names()[-2:] == ["Wait", "Finish"]


def test_failure_before_begin_asks_for_nothing_more() -> None:
    def bad(cmd: c.Command) -> None:
        raise ValueError("scapy cannot build it")

    script = Script(BuildPackets=bad)
    with pytest.raises(ValueError):
        run(ProbeRequest(dport=8080, local=True), script)
    assert script.names()[-1] == "BuildPackets" and "Begin" not in script.names()


def _seed() -> tuple[Any, Any, list[Any], bytes]:
    files = read_bundle(str(BUNDLES / "seed-shadowed"))
    doc = json.loads(files["report.json"])
    spec = spec_from_json(doc["packets"][0]["probe"])
    roles = plan.roles(plan.trace_plan(doc["run_id"], [spec], 0))
    return spec, roles, parse_messages(files["trace.nlmsg"]), files["reply-1.ip"]


def test_waiting_rules_drop_then_reply() -> None:
    spec, roles, events, reply = _seed()
    w = Waiter(spec, roles, deadline=101.0)
    assert w.until == 101.0
    w.feed(c.Polled(100.01, tuple(events)))  # the REJECT's drop: its reply comes right after
    assert w.until == pytest.approx(100.01 + REJECT_GRACE)
    headers = parse_headers(reply)
    assert headers is not None
    w.feed(c.Polled(100.05, (), (c.Captured(headers, reply),)))
    assert w.reply is not None and w.until == pytest.approx(100.05 + DRAIN)


def test_waiting_ends_once_the_traces_of_probe_and_reply_have_ended() -> None:
    """No drain once the reply is caught and its trace reached fwtrace's postrouting end chain
    (the probe's ended in the REJECT's drop); the drain still when that end is not yet read, or
    when another source may still deliver (early off: kernel log, eBPF)."""
    import dataclasses

    from tracer import correlate

    spec, roles, events, reply = _seed()
    _, reply_events = correlate.split_events(events, spec, roles)
    end = dataclasses.replace(reply_events[-1], table=reply_events[0].table, chain="post_end", handle=None, packet=None)
    headers = parse_headers(reply)
    assert headers is not None
    for early, evs, until in ((True, (*events, end), 100.05), (True, tuple(events), 100.05 + DRAIN),
                              (False, (*events, end), 100.05 + DRAIN)):
        w = Waiter(spec, roles, deadline=101.0, early=early)
        w.feed(c.Polled(100.05, evs, (c.Captured(headers, reply),)))
        assert w.reply is not None and w.until == pytest.approx(until), (early, len(evs))
    w = Waiter(spec, roles, deadline=101.0, early=True)  # the end read after the reply: stops then
    w.feed(c.Polled(100.05, tuple(events), (c.Captured(headers, reply),)))
    w.feed(c.Polled(100.06, (end,)))
    assert w.until == pytest.approx(100.06)


def test_waiting_rules_ignore_other_packets_replies() -> None:
    spec, roles, _, reply = _seed()
    headers = parse_headers(reply)
    assert headers is not None
    other = type(spec)(spec.proto, spec.src, spec.dst, spec.sport + 1, spec.dport, spec.flags, spec.ident)
    w = Waiter(other, roles, deadline=101.0)
    w.feed(c.Polled(100.05, (), (c.Captured(headers, reply),)))
    assert w.reply is None and w.until == 101.0


def test_log_rules_only_into_chains_the_proof_listed() -> None:
    """--log: the proof lists the family's iptables-nft tables first; a chain iptables-nft-save
    prints but nf_tables does not hold gets no rule (iptables-nft would create it)."""
    saved = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"
    listed = {"table ip filter": "{}", "chain ip filter INPUT": "{}", "rule ip filter INPUT handle 2": "{}"}
    script = Script(NftTables={"table ip filter": "{}", "table inet other": "{}"}, ProofListing=listed, IptSave=saved,
                    InInitialNetns=True, ListChains="")
    report = run(ProbeRequest(dport=8080, local=True, log="nflog"), script)
    [scope] = {cmd.scope for cmd in script.asked if isinstance(cmd, c.ProofListing)}
    assert scope.tables == (("ip", "filter"),) and scope.own_table == "fwtrace_0badc0de"
    edits = [cmd.action.argv for cmd in script.asked if isinstance(cmd, c.Change) and cmd.action.argv[0] == "iptables-nft"]
    assert [argv[5] for argv in edits] == ["INPUT"] and "--comment" in edits[0]
    assert report.cleanup_ok and report.ruleset_unchanged
    assert report.checked == ("the table list (handles, flags, chain and set counts)",
                              "ip filter in full (chains, sets, rules with handles)")


def test_a_difference_after_the_undo_fails_the_cleanup_with_its_name() -> None:
    from tracer.plan.records import RestoreSysctl

    key = "net.netfilter.nf_conntrack_log_invalid"
    listings = iter([{"table inet fwtrace_0badc0de": "absent"},
                     {"table inet fwtrace_0badc0de": "absent", "table ip raw": '{"handle": 9}'}])
    script = Script(ProofListing=lambda cmd: next(listings), Finish=c.Finished(undos=(RestoreSysctl(key, "0", "srv"),)),
                    ReadSysctl=lambda cmd: "255" if cmd.key == key else "0")
    report = run(ProbeRequest(dport=8080, netns="srv", local=True), script)
    assert not report.cleanup_ok and report.ruleset_unchanged is False and exit_status(report) == 5
    assert report.leftover == (
        f"sysctl {key} in srv: changed (remedy: `ip netns exec srv sysctl -w {key}=0`)",
        "table ip raw: left behind (remedy: `ip netns exec srv nft delete table ip raw`)")


def test_silent_next_hop_gets_a_journaled_neighbour_entry_after_the_proof_listing() -> None:
    """Issue 21: an on-link source nobody answers ARP for; its reply would wait in the neighbour table."""
    src = ipaddress.ip_address("192.0.2.77")
    script = Script(Neighbour=None)
    report = run(ProbeRequest(dport=8080, via="eth0", src=src), script)
    names = script.names()
    changes = [cmd for cmd in script.asked if isinstance(cmd, c.Change)]
    neigh = next(ch for ch in changes if ch.action.argv[:3] == ("ip", "neigh", "replace"))
    assert neigh.action.argv == ("ip", "neigh", "replace", "192.0.2.77", "lladdr", "02:00:0b:ad:c0:de", "dev", "eth0",
                                 "nud", "permanent")
    assert neigh.undo.argv == ("ip", "neigh", "del", "192.0.2.77", "dev", "eth0") and neigh.atomic
    listing = next(cmd for cmd in script.asked if isinstance(cmd, c.ProofListing))
    assert listing.scope.neighbours == (("192.0.2.77", "eth0"),)
    assert names.index("ProofListing") < script.asked.index(neigh)  # listed before it is added
    assert any("no host answers ARP for 192.0.2.77 on eth0" in x for x in report.caveats)
