"""Two probes at once, and probes under a flood of look-alike traffic: each run sees only its
own packets (the IPv4 id / flow label and source port pin them) and gets the verdict it gets alone."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from tracer import system
from tracer.system.raw import build
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import PacketSpec, Proto
from tracer.system.journal import RUN_DIR


def start_probe(lab: Lab, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tracer", "probe", "--netns", lab.server, "--from-netns", lab.client,
                             "--json", "--timeout", "0.5", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str]) -> dict[str, Any]:
    # Generous: under software emulation (scripts/vm-test) two runs at once take over a minute.
    out, err = p.communicate(timeout=300)
    assert p.returncode in (0, 1), err
    return json.loads(out)


def verdicts(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    # netfilter's steps only: a reply that never came (ICMP rate limit under the flood) makes
    # --ebpf auto probe again with the kernel's drop reason in the timeline
    return [(p["verdict"], p["reply"], p["decided_by"]["chain"] if p["decided_by"] else None,
             p["decided_by"]["rule_number"] if p["decided_by"] else None,
             len([e for e in p["events"] if e["source"] != "ebpf"])) for p in doc["packets"]]


def no_icmp_ratelimit(lab: Lab) -> None:
    """Per-namespace sysctls: the kernel would otherwise suppress some of the many REJECT
    replies this test provokes within a second (reply-missing is tested under the flood)."""
    with system.netns(lab.server):
        system.sysctl_set("net.ipv4.icmp_ratelimit", "0")
        system.sysctl_set("net.ipv4.icmp_msgs_per_sec", "100000")


def test_two_probes_in_the_same_namespace(lab: Lab) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    no_icmp_ratelimit(lab)
    lab.listen(lab.server, Proto.TCP, 22)
    alone_a = verdicts(finish(start_probe(lab, "--dport", "8080", "--count", "3")))
    alone_b = verdicts(finish(start_probe(lab, "--dport", "22", "--count", "3")))
    assert alone_a[0][:4] == ("reject", "icmp 3/10 host-prohibited", "INPUT", 7)
    assert alone_b[0][:2] == ("accept", "syn-ack")
    for _ in range(3):
        a, b = start_probe(lab, "--dport", "8080", "--count", "3"), start_probe(lab, "--dport", "22", "--count", "3")
        da, db = finish(a), finish(b)
        assert verdicts(da) == alone_a
        assert verdicts(db) == alone_b
        assert da["cleanup"]["ok"] and db["cleanup"]["ok"]


def test_two_probes_in_different_namespaces(make_lab: Any) -> None:
    with make_lab() as one, make_lab() as two:
        one.iptables_restore(one.server, SEED_RULESET)
        two.nft(two.server, "table inet f {\n chain i { type filter hook input priority 0; policy drop; }\n}\n")
        a, b = start_probe(one, "--dport", "8080"), start_probe(two, "--dport", "8080")
        da, db = finish(a), finish(b)
        assert verdicts(da) == [("reject", "icmp 3/10 host-prohibited", "INPUT", 7, 1)]
        assert verdicts(db) == [("drop", "none", "i", None, 1)]


@pytest.fixture
def flood(lab: Lab) -> Iterator[dict[str, int]]:
    """Look-alike traffic from the client: TCP SYNs to the probed port from the same address,
    other source ports and IP ids, as fast as one thread can send (bounded: 20 s, 2M packets)."""
    stop = threading.Event()
    sent = {"packets": 0}
    with system.netns(lab.client):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    frames = [build(PacketSpec(Proto.TCP, CLIENT4, SERVER4, 20000 + i, 8080, "S", 1 + i)) for i in range(512)]

    def run() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline and sent["packets"] < 2_000_000:
            for f in frames:
                raw.sendto(f, (str(SERVER4), 0))
            sent["packets"] += len(frames)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.3)
    yield sent
    stop.set()
    t.join()
    raw.close()


def test_verdict_unchanged_under_look_alike_flood(lab: Lab, flood: dict[str, int]) -> None:
    lab.iptables_restore(lab.server, SEED_RULESET)
    start = flood["packets"]
    t = time.monotonic()
    doc = finish(start_probe(lab, "--dport", "8080", "--count", "3"))
    rate = (flood["packets"] - start) / (time.monotonic() - t)
    assert rate > 1000, f"the flood was too thin to prove anything: {rate:.0f} packets/s"
    # The kernel rate-limits ICMP errors (icmp_msgs_per_sec): under a flood of rejected look-alikes
    # the probe's own reply may be suppressed, and fwtrace must then say why it is missing.
    for got in verdicts(doc):
        assert got[0] == "reject" and got[2:] == ("INPUT", 7, 1)
        assert got[1] in ("icmp 3/10 host-prohibited", "none")
    if any(p["reply"] == "none" for p in doc["packets"]):
        assert "reply-missing" in {f["code"] for f in doc["findings"]}
    assert doc["events_lost"] is False
    assert doc["cleanup"]["ok"]
    assert not [j for j in os.listdir(RUN_DIR) if doc["run_id"] in j] if os.path.isdir(RUN_DIR) else True
