"""`fwtrace watch` against the real kernel: a real client namespace makes real connections in a
bounded loop while the server namespace is watched."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from tracer.cli.lab import BACKEND4, CLIENT4, SERVER4, Lab
from tracer.model import Proto

RULESET = """
table inet filter {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 8080 drop
        tcp dport 9090 accept
    }
}
"""
CLIENT_LOOP = """
import socket, sys, time
proto, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + seconds
first = True
while time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        if proto == "tcp":
            s.connect((dst, port))
        else:
            s.sendto(b"x", (dst, port))
    except OSError:
        pass
    s.close()
    if first:
        print("sending", flush=True)
        first = False
    time.sleep(0.05)
"""
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, port, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + seconds
for i in range(5000000):  # bounded: at most this many, for at most this long
    if i % 100 == 0 and time.monotonic() > end:
        break
    try:
        s.sendto(b"y" * 64, (dst, port))
    except OSError:
        pass
    if i == 0:
        print("sending", flush=True)
"""


@pytest.fixture(autouse=True)
def run_dir(tmp_path_factory: Any, monkeypatch: Any) -> str:
    d = str(tmp_path_factory.mktemp("run"))
    monkeypatch.setenv("FWTRACE_RUN_DIR", d)
    return d


@pytest.fixture
def served(lab: Lab) -> Iterator[Lab]:
    lab.nft(lab.server, RULESET)
    for port in (8080, 9090, 7070, 6060):
        lab.listen(lab.server, Proto.TCP, port)
    yield lab


def client(lab: Lab, port: int, seconds: float = 60, proto: str = "tcp", script: str = CLIENT_LOOP) -> subprocess.Popen[bytes]:
    """The client namespace's loop of connects / datagrams to the server; returns once it sends.
    It runs until killed (at most `seconds`, a bound): the watch's window lies within its traffic
    however long a loaded machine takes to start either (no timing: the tests kill it)."""
    p = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", script, proto, str(SERVER4),
                          str(port), str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline() == b"sending\n"
    return p


def watch(lab: Lab, *args: str, timeout: float = 30) -> tuple[int, list[dict[str, Any]], str]:
    r = subprocess.run([sys.executable, "-m", "tracer", "watch", "--netns", lab.server, "--json", *args],
                       capture_output=True, text=True, timeout=timeout)
    docs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return r.returncode, docs, r.stderr


def summary(docs: list[dict[str, Any]]) -> dict[str, Any]:
    assert docs and docs[-1]["type"] == "summary", docs
    return docs[-1]


def rx_packets(lab: Lab) -> int:
    [link] = json.loads(lab.run(lab.server, ["ip", "-s", "-j", "link", "show", "dev", "eth0"]).stdout)
    return int(link["stats64"]["rx"]["packets"])


def state(lab: Lab) -> str:
    return lab.run(lab.server, ["nft", "list", "ruleset"]).stdout


def journals() -> list[str]:
    d = os.environ["FWTRACE_RUN_DIR"]
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_blocked_flow_names_the_deciding_rule(served: Lab) -> None:
    before = state(served)
    c = client(served, 8080)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "8080", "--duration", "2s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 1, err
    assert s["outcome"] == "flows" and s["flows"], s
    flow = s["flows"][0]
    assert flow["verdict"] == "drop" and flow["src"] == str(CLIENT4) and flow["dport"] == 8080
    assert "input" in flow["decided_by"] and "tcp dport 8080 drop" in flow["decided_by"], flow
    assert "blocked" in flow["conclusion"]
    assert any(ev["type"] == "flow" for ev in docs[:-1])  # the ndjson events came while it ran
    assert s["cleanup"]["ok"] and state(served) == before
    acc = s["accounting"]
    assert acc["packets_traced"] >= 1 and acc["events_emitted"] >= 1 and acc["events_lost"] is False
    assert acc["kernel_budget"]["hit"] is False and acc["kernel_counted"] >= acc["packets_traced"]
    assert flow["packets_captured"] >= 1 and flow["interfaces"] == ["eth0"]


def test_accepted_flow(served: Lab) -> None:
    c = client(served, 9090)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "9090", "--proto", "tcp", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 0, (err, s)
    # a connection cut at the window's edge may have no traced verdict (unknown); none is blocked
    assert s["flows"] and all(f["verdict"] in ("accept", "unknown") for f in s["flows"]), s
    first = next(f for f in s["flows"] if f["verdict"] == "accept")
    assert first["conntrack"]  # read while the flow was fresh


def test_client_banned_by_source(served: Lab) -> None:
    served.nft(served.server, f"add rule inet filter input ip saddr {CLIENT4} drop\n"
                              f"insert rule inet filter input ip saddr {CLIENT4} counter drop\n")
    c = client(served, 9090)
    try:
        rc, docs, err = watch(served, "--src", f"{CLIENT4}/32", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 1, err
    flow = s["flows"][0]
    assert flow["verdict"] == "drop" and f"ip saddr {CLIENT4}" in flow["decided_by"], flow


def test_nothing_arrived_when_the_client_drops_its_own_packets(served: Lab) -> None:
    served.nft(served.client, "table inet cfw {\n chain out {\n type filter hook output priority 0; policy accept;\n"
                              " tcp dport 7070 drop\n }\n}\n")
    c = client(served, 7070)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "7070", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 1, err
    assert s["outcome"] == "nothing-arrived" and not s["flows"], s
    assert s["interfaces_watched"] and "eth0" in s["interfaces_watched"]
    assert "eth0" in s["message"] and s["outside_this_host"]
    assert s["accounting"]["packets_captured"] == 0 and s["accounting"]["kernel_counted"] == 0


def test_wrong_filter_is_worded_apart_from_nothing_arrived(served: Lab) -> None:
    c = client(served, 9090)  # the client talks to 9090; the filter asks for 7071
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "7071", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert s["outcome"] == "filter-matched-nothing", s
    assert any("9090" in n for n in s["near_misses"]) and not s["outside_this_host"]


def test_arrived_but_dropped_before_netfilter(served: Lab) -> None:
    # The client's neighbour entry for the server names a wrong MAC: the frames reach the server's
    # eth0 (the capture sees them) as PACKET_OTHERHOST, and ip_rcv drops them before PREROUTING.
    served.run(served.client, ["ip", "neigh", "replace", str(SERVER4), "lladdr", "02:00:00:00:00:99", "dev", "eth0",
                               "nud", "permanent"])
    c = client(served, 6060)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "6060", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 1, err
    assert s["outcome"] == "not-in-netfilter", s
    assert "arrived on eth0 but never reached netfilter" in s["message"] and "PACKET_OTHERHOST" in s["message"]
    assert s["flows"] and s["flows"][0]["verdict"] == "not-in-netfilter" and s["flows"][0]["packets_captured"] >= 1
    assert s["accounting"]["kernel_counted"] == 0


def test_unrelated_flood_produces_no_events(served: Lab) -> None:
    rx = rx_packets(served)
    f = client(served, 5555, 60, "udp", FLOOD)  # datagrams to another port, until killed
    try:
        rc, docs, err = watch(served, "--src", "198.51.100.7", "--dport", "8080", "--duration", "1.5s")
    finally:
        f.kill(), f.wait()
    flood = rx_packets(served) - rx
    assert flood > 1000, flood  # the flood did arrive
    s = summary(docs)
    acc = s["accounting"]
    assert acc["events_emitted"] == 0 and acc["packets_traced"] == 0 and acc["packets_captured"] == 0, acc
    assert acc["capture"]["passed_filter"] == 0  # the kernel's BPF filter kept the flood away
    assert [d for d in docs if d["type"] == "flow"] == []


def test_a_flood_of_the_filter_hits_the_kernel_budget_not_the_tool(served: Lab) -> None:
    f = client(served, 5555, 60, "udp", FLOOD)  # as fast as the client can, until killed
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "5555", "--proto", "udp", "--duration", "1.5s")
    finally:
        f.kill(), f.wait()
    acc = summary(docs)["accounting"]
    budget = acc["kernel_budget"]
    assert budget["hit"] is True and budget["untraced"] > 0, acc
    # traced: at most the burst plus the rate over the watch (and a second of slack)
    assert acc["packets_traced"] <= budget["burst"] + budget["rate_per_second"] * 3, acc
    assert acc["kernel_counted"] >= acc["packets_traced"] + budget["untraced"] - 1


def test_max_packets_and_duration_stop_it(served: Lab) -> None:
    c = client(served, 9090)
    try:
        t0 = time.monotonic()
        _, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "9090", "--duration", "20s", "--max-packets", "3")
        took = time.monotonic() - t0
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert s["stopped_by"] == "max-packets", s
    assert took < 15, took  # generous: a bound, not a timing
    _, docs, _ = watch(served, "--src", str(CLIENT4), "--dport", "9090", "--duration", "0.5s")
    assert summary(docs)["stopped_by"] == "duration"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_mid_watch_leave_nothing_behind(served: Lab, sig: signal.Signals) -> None:
    before, before_journals = state(served), journals()
    c = client(served, 8080)
    p = subprocess.Popen([sys.executable, "-m", "tracer", "-v", "watch", "--netns", served.server, "--src", str(CLIENT4),
                          "--dport", "8080", "--duration", "30s", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        deadline = time.monotonic() + 10
        for line in p.stderr:
            if "change" in line or time.monotonic() > deadline:
                break
        time.sleep(0.5)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        c.kill(), c.wait()
        if p.poll() is None:
            p.kill()
    s = summary([json.loads(x) for x in out.splitlines() if x.strip()])
    assert s["stopped_by"] == sig.name and s["cleanup"]["ok"], (s, err)
    assert state(served) == before and journals() == before_journals


def test_bad_input_is_refused_before_anything(served: Lab) -> None:
    before = state(served)
    for args, status, words in ((["--duration", "5s"], 2, "--all"),
                                (["--dport", "80", "--duration", "0"], 2, "duration"),
                                (["--dport", "80", "--duration", "-3s"], 2, "duration"),
                                (["--dport", "80", "--duration", "2h"], 2, "at most 3600"),
                                (["--dport", "80", "--iface", "nosuch0"], 2, "no interface 'nosuch0'")):
        rc, _, err = watch(served, *args)
        assert rc == status and words in err and len(err.strip().splitlines()) == 1, (args, rc, err)
    r = subprocess.run([sys.executable, "-m", "tracer", "watch", "--netns", "no-such-ns-fwtrace", "--dport", "80"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "unknown network namespace" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert state(served) == before and journals() == []


def test_evidence_has_the_watched_packets_with_their_trace_ids(served: Lab, tmp_path: Any) -> None:
    import tarfile

    from scapy.utils import rdpcap

    path = str(tmp_path / "w.tar.gz")
    c = client(served, 8080)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--dport", "8080", "--duration", "1.5s", "--evidence", path)
    finally:
        c.kill(), c.wait()
    assert rc == 1, err
    with tarfile.open(path) as tar:
        names = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        assert {"watch.pcapng", "flows.txt", "flows.json", "command.txt"} <= set(names)
        raw = tar.extractfile(names["watch.pcapng"]).read()  # type: ignore[union-attr]
        assert b"nftrace id 0x" in raw and b"tcp 192.0.2.2:" in raw and b": drop;" in raw
        (tmp_path / "w.pcapng").write_bytes(raw)
        assert json.loads(tar.extractfile(names["flows.json"]).read())["flows"]  # type: ignore[union-attr]
    from scapy.layers.inet import IP, TCP

    pkts = [IP(bytes(p)) for p in rdpcap(str(tmp_path / "w.pcapng"))]  # LINKTYPE_IPV4: bare IP
    assert pkts and all(p.haslayer(TCP) and p[TCP].dport == 8080 and p[IP].src == str(CLIENT4) for p in pkts)


def test_a_netdev_ingress_drop_is_traced_once_per_packet(served: Lab) -> None:
    served.nft(served.server, 'table netdev edge {\n chain in {\n type filter hook ingress device "eth0" priority -500; '
                              'policy accept;\n tcp dport 4040 drop\n }\n}\n')
    served.listen(served.server, Proto.TCP, 4040)
    c, ok = client(served, 4040), client(served, 9090)
    try:
        rc, docs, err = watch(served, "--src", str(CLIENT4), "--duration", "1.5s")
    finally:
        for p in (c, ok):
            p.kill(), p.wait()
    s = summary(docs)
    assert rc == 1 and s["outcome"] == "flows", (err, s)
    dropped = [f for f in s["flows"] if f["dport"] == 4040]
    passed = [f for f in s["flows"] if f["dport"] == 9090 and f["packets_traced"]]
    assert dropped and all(f["verdict"] == "drop" and "netdev edge in" in f["decided_by"] for f in dropped), dropped
    assert passed and all(f["verdict"] == "accept" for f in passed), passed
    # flagged at ingress and again at prerouting, each packet is counted once (+1: a packet may
    # be traced in the instant between the table going in and the capture's start mark)
    assert sum(f["packets_traced"] for f in s["flows"]) <= sum(f["packets_captured"] for f in s["flows"]) + 1, s["flows"]


def test_a_port_forwarded_flow_is_one_flow_across_nat(router_lab: Lab) -> None:
    """8080 on the server is DNATed to the backend's port 80: the answers come back from
    198.51.100.2:80 (another 5-tuple) and join the client's flow by their conntrack entry."""
    from tracer.system.lab import published_port

    lab = router_lab
    assert lab.backend is not None
    lab.iptables_restore(lab.server, published_port(f"-A FORWARD -p tcp -d {BACKEND4} --dport 80 -j ACCEPT\n"
                                                    "-A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT\n"))
    lab.listen(lab.backend, Proto.TCP, 80)
    c = client(lab, 8080)
    try:
        rc, docs, err = watch(lab, "--src", str(CLIENT4), "--dport", "8080", "--duration", "1.5s")
    finally:
        c.kill(), c.wait()
    s = summary(docs)
    assert rc == 0 and s["outcome"] == "flows", (err, s)
    assert all(f["dst"] == str(SERVER4) and f["dport"] == 8080 for f in s["flows"]), s["flows"]  # none keyed by the backend
    joined = [f for f in s["flows"] if f["answers_traced"]]
    assert joined and all(f["verdict"] == "accept" and f["conntrack_id"] for f in joined), s["flows"]
    assert any(f"DNAT to {BACKEND4}:80" in (f["conntrack"] or "") for f in joined), joined
