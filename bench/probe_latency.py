#!/usr/bin/env python3
"""Probe latency: median wall time of `fwtrace probe` against the demo lab, beside its floor.

Not a test: run as root, `.venv/bin/python bench/probe_latency.py [--runs N]`. Measures in the
same run, on the same machine:
  interpreter  `python -c pass` with the same interpreter (the start-up no CLI can avoid)
  nft-list     one `nft -a list ruleset` in the lab's server namespace (the snapshot floor)
  by-hand      the seed's method scripted: add a TRACE rule, `xtables-monitor --trace`, one TCP
               connect attempt, remove the rule (what an engineer would otherwise script)
  fwtrace      `fwtrace probe --dport 8080 --netns SRV --from-netns CLI --json`, one TCP SYN
  ingress     `fwtrace probe --dport 8080 --netns SRV --src 203.0.113.5 --json`: simulated ingress
              (injection veth, two tc programs loaded with bpf(2), reply capture, all undone)
and prints the medians and fwtrace's ratio to the floor (interpreter + nft-list). fwtrace runs as
`python -m tracer` from this checkout, so the code measured is the code beside this file.
Target (issue "fwtrace probe"): fwtrace median < 1 s, aim 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab
from tracer.model import Proto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(argv: list[str], runs: int, **kw: object) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        out.append(time.perf_counter() - t)
    return out


def by_hand(lab: Lab) -> float:
    ns = ["ip", "netns", "exec", lab.server]
    t = time.perf_counter()
    subprocess.run(ns + ["iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "TRACE"], check=True)
    mon = subprocess.Popen(ns + ["xtables-monitor", "--trace"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(0.02)  # the monitor must subscribe before the packet; a script would wait too
    subprocess.run(["ip", "netns", "exec", lab.client, "nc", "-z", "-w", "1", str(SERVER4), "8080"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mon.terminate()
    mon.communicate()
    subprocess.run(ns + ["iptables", "-t", "raw", "-D", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "TRACE"], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    python = sys.executable
    fwtrace = [python, "-m", "tracer"]
    with Lab(prefix="fwtrace-bench") as lab:
        lab.iptables_restore(lab.server, SEED_RULESET)
        lab.listen(lab.server, Proto.TCP, 8080)
        lab.ip(lab.server, "route", "add", "default", "via", str(CLIENT4))  # the route back to 203.0.113.5
        interp = timed([python, "-c", "pass"], args.runs)
        nft = timed(["ip", "netns", "exec", lab.server, "nft", "-a", "list", "ruleset"], args.runs)
        hand = [by_hand(lab) for _ in range(args.runs)] if subprocess.run(["which", "nc"], capture_output=True).returncode == 0 else []
        probe = timed(fwtrace + ["probe", "--dport", "8080", "--netns", lab.server, "--from-netns", lab.client, "--json"],
                      args.runs, cwd=ROOT)
        ingress = timed(fwtrace + ["probe", "--dport", "8080", "--netns", lab.server, "--src", "203.0.113.5", "--json"],
                        args.runs, cwd=ROOT)
    med = {k: statistics.median(v) for k, v in
           (("interpreter", interp), ("nft-list", nft), ("by-hand", hand), ("fwtrace", probe), ("ingress", ingress)) if v}
    floor = med["interpreter"] + med["nft-list"]
    result = {
        "runs": args.runs,
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "fwtrace_over_floor": round(med["fwtrace"] / floor, 2),
        "fwtrace_over_by_hand": round(med["fwtrace"] / med["by-hand"], 2) if "by-hand" in med else None,
        "ingress_over_floor": round(med["ingress"] / floor, 2),
        "target_met": max(med["fwtrace"], med["ingress"]) < 1.0,
        "aim_met": max(med["fwtrace"], med["ingress"]) < 0.5,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
