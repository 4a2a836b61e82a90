#!/usr/bin/env python3
"""Impact: throughput of an unrelated bulk TCP flow between two lab namespaces, without and with
fwtrace at work, measured side by side in one run.

Not a test: run as root, `.venv/bin/python bench/impact.py [--seconds 2 --rounds 5]`.
  baseline      the flow alone
  instrumented  the flow while a probe run's trace table is installed (the kernel-side cost
                every packet pays: one more base chain per hook that does not match it)
  probing       the flow while `fwtrace probe` runs back to back (adds the CPU the tool itself
                takes on this 2-core machine)
Also checks that no event of the bulk flow entered any probe's timeline.
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer import plan, system  # noqa: E402
from tracer.lab import CLIENT4, SEED_RULESET, SERVER4, Lab  # noqa: E402
from tracer.model import PacketSpec, Proto  # noqa: E402

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


def flow(lab: Lab, seconds: float) -> float:
    """Bytes per second of one bulk TCP connection client -> server for `seconds`."""
    with system.netns(lab.client):
        c = socket.create_connection((str(SERVER4), PORT))
    chunk = b"\0" * (1 << 20)
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        sent += c.send(chunk)
    c.close()
    return sent / (time.monotonic() - t0)


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

        def measure_base() -> None:
            base.append(flow(lab, args.seconds))

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
    print(json.dumps({
        "seconds_per_measure": args.seconds, "rounds": args.rounds,
        "median_MB_per_s": {k: round(v, 1) for k, v in mb.items()},
        "instrumented_over_baseline": bulk,
        "probing_over_baseline": paired(probing, base),
        "small_packets_kpps": {"baseline": round(statistics.median(pps_base) / 1e3),
                               "instrumented": round(statistics.median(pps_inst) / 1e3)},
        "small_packets_instrumented_over_baseline": paired(pps_inst, pps_base),
        "probes_during_flow": probes, "unrelated_events": unrelated,
        "target_met": bulk["median"] >= 0.98 and unrelated == 0,
    }, indent=2))


if __name__ == "__main__":
    main()
