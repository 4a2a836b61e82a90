#!/usr/bin/env python3
"""Ruleset scale: time to a verdict and peak memory of `fwtrace probe` on large rulesets.

Not a test: run as root, `.venv/bin/python bench/ruleset_scale.py [--sizes 0,1000,10000,50000]`.
Each size loads a generated kube-proxy-like iptables ruleset (nat: KUBE-SERVICES with one jump
per service into KUBE-SVC-* chains, each with KUBE-SEP-* endpoints doing DNAT; filter: a
KUBE-FIREWALL/KUBE-FORWARD style set of rules and a final REJECT) into a lab namespace, and
times `fwtrace probe --dport 8080` from the client namespace (median of --runs) and its peak RSS.
The 0-rule run is the baseline; the report gives what each size adds.
Target (issue "safe on production firewalls"): 50k rules add < 1 s.
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

from tracer.lab import Lab
from tracer.model import Proto

FWTRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin", "fwtrace")


def kube_ruleset(n_rules: int) -> str:
    """About n_rules rules: each service is 1 jump + 2 endpoint jumps + 2 DNATs = 5 rules."""
    services = max(n_rules // 5, 0)
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    body = ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
    for i in range(services):
        svc = f"KUBE-SVC-{i:012X}"
        nat.append(f":{svc} - [0:0]")
        ip = f"10.{96 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
        body.append(f"-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"ns/svc{i}:http\" -m tcp --dport 80 -j {svc}")
        for j in range(2):
            sep = f"KUBE-SEP-{i:010X}{j:02X}"
            nat.append(f":{sep} - [0:0]")
            prob = "-m statistic --mode random --probability 0.50000000000 " if j == 0 else ""
            body.append(f"-A {svc} {prob}-j {sep}")
            body.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination 10.244.{(i >> 8) & 255}.{i & 255}:{8000 + j}")
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT", "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
            "COMMIT"]
    return "\n".join(nat + body + ["COMMIT"] + filt) + "\n"


def single_chain(n_rules: int) -> str:
    """One INPUT chain of n_rules source bans for another port, then the ACCEPT for 8080 (issue 11:
    a long chain on the probe's path; only the deciding rule's text is shown)."""
    bans = [f"-A INPUT -s 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32 -p tcp -m tcp --dport 9999 -j DROP"
            for i in range(n_rules)]
    return "\n".join(["*filter", ":INPUT DROP [0:0]", *bans, "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT", "COMMIT"]) + "\n"


def probe_once(lab: Lab) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB as GNU time reports it, deciding rule number)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", FWTRACE, "probe", "--dport", "8080", "--netns", lab.server,
                        "--from-netns", lab.client, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    doc = json.loads(p.stdout)
    return wall, int(p.stderr.strip().splitlines()[-1]), doc["packets"][0]["decided_by"]["rule_number"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,1000,10000,50000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--single-chain", action="store_true", help="one INPUT chain of N rules instead of kube-proxy's shape")
    args = ap.parse_args()
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        with Lab(prefix="fwtrace-bench") as lab:
            t = time.perf_counter()
            lab.iptables_restore(lab.server, single_chain(size) if args.single_chain else kube_ruleset(size))
            if args.single_chain:
                lab.listen(lab.server, Proto.TCP, 8080)
            load = time.perf_counter() - t
            walls, rss = [], 0
            for _ in range(args.runs):
                wall, maxrss, number = probe_once(lab)
                want = size + 1 if args.single_chain else 4
                assert number == want, f"verdict changed at size {size}: rule {number}"
                walls.append(wall)
                rss = max(rss, maxrss)
            rows.append({"rules": size, "load_seconds": round(load, 2), "median_seconds": round(statistics.median(walls), 3),
                         "peak_rss_mb": round(rss / 1024, 1)})
    base = rows[0]["median_seconds"]
    for r in rows:
        r["added_seconds"] = round(r["median_seconds"] - base, 3)
    print(json.dumps({"runs": args.runs, "sizes": rows,
                      "target_met": all(r["added_seconds"] < 1.0 for r in rows)}, indent=2))


if __name__ == "__main__":
    main()
