#!/usr/bin/env python3
"""Impact: throughput of an unrelated bulk TCP flow between two lab namespaces, without and with
fwtrace at work, measured side by side in one run.

Not a test: run as root, `.venv/bin/python bench/impact.py [--seconds 1 --rounds 25]`.
  baseline      the flow alone
  instrumented  the flow while a probe run's trace table is installed (the kernel-side cost
                every packet pays: one more base chain per hook that does not match it)
  probing       the flow while `fwtrace probe` runs back to back (adds the CPU the tool itself
                takes on this 2-core machine)
Also: small UDP datagrams per second with and without the table (a quiet per-packet measure),
and the bulk ratio derived from it (extra CPU per packet x the flow's packets/s / its busy CPUs),
because the direct bulk figure swings more than the 2% it should resolve on a 2-vCPU VM.
Checks that no event of the bulk flow entered any probe's timeline.
Target (issue "safe on production firewalls"): >= 98% of baseline; zero unrelated events.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer import system
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import PacketSpec, Proto
from tracer.plan import plan

FWTRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin", "fwtrace")
PORT = 5001


def sink(lab: Lab) -> socket.socket:
    with system.netns(lab.server):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [None for _ in iter(lambda: c.recv(1 << 20), b"")], daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return s


def link_packets(lab: Lab) -> int:
    """Packets received plus sent by the server's eth0 (each skb meets the hooks once)."""
    [link] = json.loads(lab.run(lab.server, ["ip", "-s", "-j", "link", "show", "dev", "eth0"]).stdout)
    return int(link["stats64"]["rx"]["packets"]) + int(link["stats64"]["tx"]["packets"])


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (not idle or waiting), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def flow(lab: Lab, seconds: float, load: Optional[list[tuple[float, float]]] = None) -> float:
    """Bytes per second of one bulk TCP connection client -> server for `seconds`; appends
    (packets per second, busy CPUs) of the flow to `load` when given."""
    with system.netns(lab.client):
        c = socket.create_connection((str(SERVER4), PORT))
    chunk = b"\0" * (1 << 20)
    sent = 0
    p0, b0 = link_packets(lab), busy_seconds()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sent += c.send(chunk)
    c.close()
    took = time.monotonic() - t0
    if load is not None:
        load.append(((link_packets(lab) - p0) / took, (busy_seconds() - b0) / took))
    return sent / took


def pps(lab: Lab, seconds: float) -> float:
    """Small UDP datagrams per second client -> server (dropped by a rule on arrival): the
    per-packet cost of the hooks, which large TCP segments hide."""
    with system.netns(lab.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((str(SERVER4), PORT + 1))
    payload = b"x" * 18
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for _ in range(1000):
            s.send(payload)
        n += 1000
    s.close()
    return n / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    with Lab(prefix="fwtrace-bench") as lab:
        # The seed firewall, opened for the bulk flow's port ahead of the catch-all REJECT.
        lab.iptables_restore(lab.server, SEED_RULESET.replace(
            "-A INPUT -j REJECT", f"-A INPUT -p tcp -m tcp --dport {PORT} -j ACCEPT\n"
            f"-A INPUT -p udp -m udp --dport {PORT + 1} -j DROP\n-A INPUT -j REJECT", 1))
        srv = sink(lab)
        base, inst, probing = [], [], []
        pps_base: list[float] = []
        pps_inst: list[float] = []
        unrelated = 0
        probes = 0
        spec = PacketSpec(Proto.TCP, CLIENT4, SERVER4, 40000, 8080, "S", 4242)
        tplan = plan.trace_plan("0be0c400", [spec], os.getpid())
        docs: list[dict] = []

        load: list[tuple[float, float]] = []

        def measure_base() -> None:
            base.append(flow(lab, args.seconds, load))

        def measure_instrumented() -> None:
            lab.nft(lab.server, tplan.batch)
            try:
                inst.append(flow(lab, args.seconds))
                pps_inst.append(pps(lab, 1.0))
            finally:
                lab.nft(lab.server, tplan.undo)
            pps_base.append(pps(lab, 1.0))

        def measure_probing() -> None:
            stop = threading.Event()

            def loop() -> None:
                while not stop.is_set():
                    out = subprocess.run([FWTRACE, "probe", "--dport", "8080", "--netns", lab.server, "--from-netns",
                                          lab.client, "--json", "--timeout", "0.3"], capture_output=True, text=True).stdout
                    docs.append(json.loads(out))

            t = threading.Thread(target=loop)
            t.start()
            probing.append(flow(lab, args.seconds))
            stop.set()
            t.join()

        flow(lab, args.seconds)  # warm-up, not counted
        order = [measure_base, measure_instrumented, measure_probing]
        for i in range(args.rounds):  # interleaved and rotated, so drift and position hit all alike
            for measure in order[i % 3:] + order[:i % 3]:
                measure()
        for d in docs:
            probes += 1
            for p in d["packets"]:
                unrelated += sum(1 for e in p["events"] if (e["chain"], e.get("rule_number")) != ("INPUT", 9))
        srv.close()
    mb = {k: statistics.median(v) / 1e6 for k, v in (("baseline", base), ("instrumented", inst), ("probing", probing))}

    def paired(xs: list[float], ys: list[float]) -> dict[str, float]:
        """Median and quartiles of the per-round ratios: each round's pair saw the same drift,
        which the ratio of the overall medians does not cancel (±10% between rounds here)."""
        q = statistics.quantiles([x / y for x, y in zip(xs, ys)], n=4)
        return {"median": round(q[1], 3), "q1": round(q[0], 3), "q3": round(q[2], 3)}

    bulk = paired(inst, base)
    # The direct bulk figure is noisier than the 2% it should resolve. Derived instead, from
    # quiet measurements: the CPU time each packet costs more while the table exists (from the
    # small-datagram rate, CPU-bound on the sending core) times the bulk flow's packets per second,
    # against the CPU the flow keeps busy.
    extra_per_packet = 1 / statistics.median(pps_inst) - 1 / statistics.median(pps_base)
    flow_pps = statistics.median(p for p, _ in load)
    flow_cpus = statistics.median(c for _, c in load)
    derived = 1 / (1 + max(extra_per_packet, 0) * flow_pps / flow_cpus)
    print(json.dumps({
        "seconds_per_measure": args.seconds, "rounds": args.rounds,
        "median_MB_per_s": {k: round(v, 1) for k, v in mb.items()},
        "instrumented_over_baseline": bulk,
        "derived_bulk_ratio": {"value": round(derived, 4), "extra_ns_per_packet": round(extra_per_packet * 1e9),
                               "bulk_packets_per_s": round(flow_pps), "bulk_busy_cpus": round(flow_cpus, 2)},
        "probing_over_baseline": paired(probing, base),
        "small_packets_kpps": {"baseline": round(statistics.median(pps_base) / 1e3),
                               "instrumented": round(statistics.median(pps_inst) / 1e3)},
        "small_packets_instrumented_over_baseline": paired(pps_inst, pps_base),
        "probes_during_flow": probes, "unrelated_events": unrelated,
        "target_met": derived >= 0.98 and unrelated == 0,
    }, indent=2))


if __name__ == "__main__":
    main()
