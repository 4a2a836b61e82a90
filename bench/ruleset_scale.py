#!/usr/bin/env python3
"""Ruleset scale: time to a verdict and peak memory of `fwtrace probe` on large rulesets.

Not a test: run as root, `.venv/bin/python bench/ruleset_scale.py [--sizes 0,1000,10000,50000]`.
Each size loads a generated kube-proxy-like iptables ruleset (nat: KUBE-SERVICES with one jump
per service into KUBE-SVC-* chains, each with KUBE-SEP-* endpoints doing DNAT; filter: a
KUBE-FIREWALL/KUBE-FORWARD style set of rules and a final REJECT) into a lab namespace, and
times `fwtrace probe --dport 8080` from the client namespace (median of --runs) and its peak RSS.
The 0-rule run is the baseline; the report gives what each size adds. All labs exist for the whole
run and the rounds rotate over them, so every size is measured under the same load.
Target (issue "safe on production firewalls"): 50k rules add < 1 s. With --single-chain (issue 11):
one 20k-rule chain on the probe's path adds < 0.5 s. `--sources A,B` times the fwtrace of other
checkouts too (e.g. `git worktree add /tmp/base <commit>`), for before/after figures from one run.

Beside it, the cleanup proofs' own cost at each size (issue 13), in-process in the server
namespace, median of --runs: the generation proof (three NFT_MSG_GETGEN round trips, as a run
reads them), the content proof of the default path (table list before and after, x_tables names)
and of a --log run (also the iptables-nft tables of the family listed in full, before and after).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer import system
from tracer.cli.lab import Lab
from tracer.model import Proto

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


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


def probe_once(lab: Lab, src: str) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds (user + system, with nft's and iptables'), peak RSS in KiB as GNU
    time reports it, deciding rule number); `src` is the
    directory whose `tracer` package runs (this checkout, or another one to compare with)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", PYTHON, "-m", "tracer", "probe", "--dport", "8080",
                        "--netns", lab.server, "--from-netns", lab.client, "--json"], capture_output=True, text=True, env=env,
                       cwd=src)  # `-m` puts the working directory first on sys.path
    wall = time.perf_counter() - t
    doc = json.loads(p.stdout)
    maxrss, user, system = p.stderr.strip().splitlines()[-1].split()
    return wall, float(user) + float(system), int(maxrss), doc["packets"][0]["decided_by"]["rule_number"]


def proof_costs(lab: Lab, runs: int) -> dict[str, float]:
    """Median milliseconds of each cleanup proof in the lab's server namespace."""
    from tracer.system import listing
    from tracer.ruleset.snapshot import XTABLES_NAMES
    from tracer.system.collect import ruleset_generation
    from tracer.plan import proof

    def generation() -> None:
        for _ in range(3):
            ruleset_generation()

    def content(log_family: str | None) -> None:
        """What tracer/plan/verify.py has the driver list: before the first change and after the undo."""
        tables: tuple[tuple[str, str], ...] = ()
        if log_family is not None:
            names = [k.split()[1:3] for k in listing.nft_tables()]
            tables = tuple(sorted((f, n) for f, n in names if f == log_family and n in XTABLES_NAMES))
        scope = proof.Scope("fwtrace_0badc0de", tables)
        before = listing.proof_state(scope, {})
        assert proof.differences(before, listing.proof_state(scope)) == (), "the ruleset changed between two listings"

    out = {}
    with system.netns(lab.server):
        for name, fn in (("generation_proof_ms", generation), ("content_proof_ms", lambda: content(None)),
                         ("content_proof_log_ms", lambda: content("ip"))):
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1000)
            out[name] = round(statistics.median(times), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,1000,10000,50000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--single-chain", action="store_true", help="one INPUT chain of N rules instead of kube-proxy's shape")
    ap.add_argument("--sources", default=ROOT, help="comma-separated checkouts whose fwtrace to time (default: this one); "
                    "e.g. a worktree of an older commit, to compare in the same run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sources = args.sources.split(",")
    walls: dict[tuple[str, int], list[float]] = {(src, n): [] for src in sources for n in sizes}
    cpus: dict[tuple[str, int], list[float]] = {(src, n): [] for src in sources for n in sizes}
    rss: dict[tuple[str, int], int] = dict.fromkeys(walls, 0)
    load: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        labs = {}
        for size in sizes:  # every lab exists for the whole run, so rounds can alternate between them
            lab = stack.enter_context(Lab(prefix="fwtrace-bench"))
            t = time.perf_counter()
            lab.iptables_restore(lab.server, single_chain(size) if args.single_chain else kube_ruleset(size))
            if args.single_chain:
                lab.listen(lab.server, Proto.TCP, 8080)
            load[size] = time.perf_counter() - t
            labs[size] = lab
        cases = list(walls)
        for i in range(args.runs):  # rotated order each round: the machine's load drifts
            for src, size in cases[i % len(cases):] + cases[:i % len(cases)]:
                wall, cpu, maxrss, number = probe_once(labs[size], src)
                want = size + 1 if args.single_chain else 4
                assert number == want, f"verdict changed at size {size}: rule {number}"
                walls[(src, size)].append(wall)
                cpus[(src, size)].append(cpu)
                rss[(src, size)] = max(rss[(src, size)], maxrss)
        proofs = {size: proof_costs(labs[size], args.runs) for size in sizes}
    rows = []
    for src in sources:
        for size in sizes:
            w, c = walls[(src, size)], cpus[(src, size)]
            w0, c0 = walls[(src, sizes[0])], cpus[(src, sizes[0])]
            # Added cost: the median of per-round differences (both probes of a round ran minutes
            # apart at most), which the machine's drifting load disturbs less than two medians.
            rows.append({"source": src, "rules": size, "load_seconds": round(load[size], 2),
                         "median_seconds": round(statistics.median(w), 3),
                         "added_seconds": round(statistics.median(a - b for a, b in zip(w, w0)), 3),
                         "median_cpu_seconds": round(statistics.median(c), 3),
                         "added_cpu_seconds": round(statistics.median(a - b for a, b in zip(c, c0)), 3),
                         "peak_rss_mb": round(rss[(src, size)] / 1024, 1),
                         **(proofs[size] if src == sources[0] else {})})
    limit = 0.5 if args.single_chain else 1.0
    print(json.dumps({"runs": args.runs, "sizes": rows, "target_added_seconds": limit,
                      "target_met": all(r["added_seconds"] < limit for r in rows if r["source"] == sources[0])}, indent=2))


if __name__ == "__main__":
    main()
