#!/usr/bin/env python3
"""Speed (issue 25): fwtrace beside the seed's manual method scripted, in one run, as ratios.

Not a test: run as root, `.venv/bin/python bench/speed.py [--runs 7] [--sources A,B]`. Throwaway
namespace labs (tracer/cli/lab.py) exist for the whole run; each round runs every case once, in
a rotated order, so the machine's drifting load hits all alike. Medians over the rounds:
  seed        the seed's method scripted with no human wait, in the seed lab: add a `-j TRACE` rule
              (iptables-nft), start `xtables-monitor --trace`, one TCP connect from the client
              namespace (bash's /dev/tcp), stop at the first INPUT verdict the monitor prints, remove
              the rule
  from-netns  `fwtrace probe --dport 8080 --netns SRV --from-netns CLI --json` (seed lab)
  ingress     `fwtrace probe --dport 8080 --netns SRV --src 203.0.113.5 --json` (simulated ingress)
  ebpf-off    from-netns in a lab where the first pass cannot explain the fate (a blackhole route
              eats the SYN-ACK: accepted, no reply), `--ebpf off --timeout 0.3`
  ebpf-auto   the same with `--ebpf auto`: it engages (a second pass with the eBPF programs)
  chain-0     from-netns, an INPUT chain of 0 bans before the ACCEPT of 8080
  chain-20k   the same with 20,000 bans on the path (what they add: median of per-round differences)
  kube-50k    from-netns, a kube-proxy-like ruleset of 50,000 rules (bench/ruleset_scale.py's)
  version     `fwtrace --version`
Every fwtrace case runs `python -m tracer` from the checkout given (`--sources`, default this one;
e.g. `git archive <commit> | tar -x -C /tmp/base` for a before/after in one run). Prints a table
(markdown) and the same figures as JSON.
Targets: from-netns <= 2x seed; ingress <= 2.5x seed; ebpf-auto <= 1.5x ebpf-off; chain-20k adds
< 0.3 s; version < 0.1 s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from ruleset_scale import kube_ruleset, single_chain  # noqa: E402
from tracer.cli.lab import CLIENT4, SEED_RULESET, SERVER4, Lab  # noqa: E402
from tracer.model import Proto  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def fwtrace(src: str, args: list[str], want: set[int]) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    t = time.perf_counter()
    p = subprocess.run([PYTHON, "-m", "tracer", *args], capture_output=True, text=True, env=env, cwd=src)
    wall = time.perf_counter() - t
    assert p.returncode in want, f"fwtrace {' '.join(args)}: exit {p.returncode}: {p.stderr[-500:]}"
    return wall


VERDICT = re.compile(rb"filter:INPUT:(rule:\S+:(DROP|ACCEPT)|policy:)")


def seed(lab: Lab) -> float:
    """The seed's method as a script that stops as soon as the trace shows INPUT's verdict (the
    connect itself would take 1 s here: this kernel treats the first ICMP error of a SYN as soft
    and only the retransmitted SYN's ends the connect)."""
    ns = ["ip", "netns", "exec", lab.server]
    rule = ["PREROUTING", "-p", "tcp", "--dport", "8080", "-j", "TRACE"]
    t = time.perf_counter()
    subprocess.run(ns + ["iptables", "-t", "raw", "-I", *rule], check=True)
    mon = subprocess.Popen(ns + ["xtables-monitor", "--trace"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(0.02)  # the monitor must subscribe before the packet; a script would wait too
    conn = subprocess.Popen(["ip", "netns", "exec", lab.client, "timeout", "2", "bash", "-c",
                             f"exec 3<>/dev/tcp/{SERVER4}/8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert mon.stdout is not None
    for line in mon.stdout:
        if VERDICT.search(line):
            break
    else:
        raise AssertionError("xtables-monitor saw no verdict in INPUT")
    conn.kill()
    mon.terminate()
    mon.communicate()
    conn.wait()
    subprocess.run(ns + ["iptables", "-t", "raw", "-D", *rule], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sources", default=ROOT, help="comma-separated checkouts whose fwtrace to time (default: this one)")
    args = ap.parse_args()
    sources = args.sources.split(",")
    with contextlib.ExitStack() as stack:
        def lab(rules: str | None = None, blackhole: bool = False) -> Lab:
            lb = stack.enter_context(Lab(prefix="fwtrace-bench"))
            if rules:
                lb.iptables_restore(lb.server, rules)
            lb.listen(lb.server, Proto.TCP, 8080)
            if blackhole:
                lb.ip(lb.server, "route", "add", "blackhole", f"{CLIENT4}/32")
            return lb
        seedlab = lab(SEED_RULESET)
        seedlab.ip(seedlab.server, "route", "add", "default", "via", str(CLIENT4))  # the route back to 203.0.113.5
        hole = lab(blackhole=True)
        chain0, chain20k, kube = lab(single_chain(0)), lab(single_chain(20000)), lab(kube_ruleset(50000))

        def netns(lb: Lab, *extra: str) -> list[str]:
            return ["probe", "--dport", "8080", "--netns", lb.server, "--from-netns", lb.client, "--json", *extra]

        cases: dict[str, object] = {"seed": lambda: seed(seedlab)}
        for src in sources:
            tag = "" if len(sources) == 1 else f"{os.path.basename(os.path.normpath(src))}:"
            for name, argv, want in (
                    ("from-netns", netns(seedlab), {1}),
                    ("ingress", ["probe", "--dport", "8080", "--netns", seedlab.server, "--src", "203.0.113.5", "--json"], {1}),
                    ("ebpf-off", netns(hole, "--ebpf", "off", "--timeout", "0.3"), {1}),
                    ("ebpf-auto", netns(hole, "--ebpf", "auto", "--timeout", "0.3"), {1}),
                    ("chain-0", netns(chain0), {0}),
                    ("chain-20k", netns(chain20k), {0}),
                    ("kube-50k", netns(kube), {1}),
                    ("version", ["--version"], {0})):
                cases[tag + name] = (lambda s=src, a=argv, w=want: fwtrace(s, a, w))
        for src in sources:  # bytecode as an installed fwtrace has it (pip compiles at install; the
            # environment may set PYTHONDONTWRITEBYTECODE, which would compile ~100 modules per run)
            subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(src, "tracer")], check=True,
                           stdout=subprocess.DEVNULL)
        names = list(cases)
        for fn in cases.values():  # warm-up: page cache, .pyc files, the eBPF object cache
            fn()  # type: ignore[operator]
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.runs):
            for n in names[i % len(names):] + names[:i % len(names)]:
                times[n].append(cases[n]())  # type: ignore[operator]
    med = {n: statistics.median(v) for n, v in times.items()}
    seedm = med["seed"]
    rows = [("seed's method scripted (TRACE rule, xtables-monitor --trace, connect, rule removed)", med["seed"], "1.00x", "")]
    result: dict[str, object] = {"runs": args.runs, "load_average": os.getloadavg(),
                                 "median_seconds": {n: round(v, 3) for n, v in med.items()}}
    for src in sources:
        tag = "" if len(sources) == 1 else f"{os.path.basename(os.path.normpath(src))}:"
        added = statistics.median(a - b for a, b in zip(times[tag + "chain-20k"], times[tag + "chain-0"]))
        r = {"from_netns_over_seed": med[tag + "from-netns"] / seedm, "ingress_over_seed": med[tag + "ingress"] / seedm,
             "ebpf_auto_over_off": med[tag + "ebpf-auto"] / med[tag + "ebpf-off"], "chain_20k_added_seconds": added,
             "kube_50k_over_seed": med[tag + "kube-50k"] / seedm, "version_seconds": med[tag + "version"]}
        result[src] = {k: round(v, 3) for k, v in r.items()}
        rows += [(f"{tag}fwtrace probe --from-netns", med[tag + "from-netns"], f"{r['from_netns_over_seed']:.2f}x", "<= 2x seed"),
                 (f"{tag}fwtrace probe (simulated ingress)", med[tag + "ingress"], f"{r['ingress_over_seed']:.2f}x", "<= 2.5x seed"),
                 (f"{tag}--ebpf off (fate unexplained)", med[tag + "ebpf-off"], f"{med[tag + 'ebpf-off'] / seedm:.2f}x", ""),
                 (f"{tag}--ebpf auto (engaged)", med[tag + "ebpf-auto"], f"{r['ebpf_auto_over_off']:.2f}x off", "<= 1.5x off"),
                 (f"{tag}from-netns, 0-rule chain", med[tag + "chain-0"], f"{med[tag + 'chain-0'] / seedm:.2f}x", ""),
                 (f"{tag}from-netns, 20k-rule chain on the path", med[tag + "chain-20k"], f"+{added:.3f} s", "adds < 0.3 s"),
                 (f"{tag}from-netns, 50k-rule ruleset", med[tag + "kube-50k"], f"{r['kube_50k_over_seed']:.2f}x", ""),
                 (f"{tag}fwtrace --version", med[tag + "version"], "", "< 0.1 s")]
    print(f"| case ({args.runs} alternated runs) | median | ratio | target |\n|---|---|---|---|")
    for name, m, ratio, target in rows:
        print(f"| {name} | {m:.3f} s | {ratio} | {target} |")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
