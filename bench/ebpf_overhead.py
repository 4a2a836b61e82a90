#!/usr/bin/env python3
"""eBPF overhead: `fwtrace probe --ebpf on` against `--ebpf off`, same lab, same run.

Not a test: run as root, `.venv/bin/python bench/ebpf_overhead.py [--rounds N]`. Each round runs,
in turn (so load from other work on the machine hits both alike):
  off       `fwtrace probe --dport 8080 --netns SRV --from-netns CLI --json --ebpf off`
  on        the same with `--ebpf on`: bcc compiles probes/drops.c in a background thread while
            the run snapshots and instruments, then loads and attaches it
  compile   in a fresh interpreter: render + clang compile (bcc) + load + attach, forced past the
            cache of compiled objects (what the first run after an upgrade or a reboot pays)
  cached    the same from the cache: render + load + attach (what every later run pays)
and prints the medians, the quartiles of the per-round ratio on/off, and whether the target holds.
Target (issue #9): median(on) <= 2 x median(off).
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

from tracer.cli.lab import SEED_RULESET, Lab  # noqa: E402
from tracer.model import Proto  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def once(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t


def build_once(cold: bool) -> float:
    """loader.build() in a fresh interpreter; `cold`: under a key no cached object has (removed after)."""
    force = ("import os; from tracer.system import ebpf_objcache as objcache; k = os.urandom(8).hex();"
             "objcache.key = lambda *a: 'bench-' + k;") if cold else ""
    tidy = ("import glob; [os.unlink(p) for p in glob.glob('/var/cache/fwtrace/bpf/bench-' + k + '.json')];") if cold else ""
    out = subprocess.run([sys.executable, "-c", "import time, sys; sys.path.insert(0, '.');" + force +
                          "from tracer.system import ebpf_loader as loader; t = time.perf_counter(); l = loader.build(hooks=False);"
                          "print(time.perf_counter() - t); l.bpf.close();" + tidy],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.split()[-1])


def quartiles(xs: list[float]) -> list[float]:
    q = statistics.quantiles(xs, n=4)
    return [round(q[0], 2), round(statistics.median(xs), 2), round(q[2], 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    fwtrace = [sys.executable, "-m", "tracer", "probe", "--dport", "8080", "--json"]
    off: list[float] = []
    on: list[float] = []
    comp: list[float] = []
    cached: list[float] = []
    with Lab(prefix="fwtrace-bench") as lab:
        lab.iptables_restore(lab.server, SEED_RULESET)
        lab.listen(lab.server, Proto.TCP, 8080)
        argv = fwtrace + ["--netns", lab.server, "--from-netns", lab.client]
        once(argv + ["--ebpf", "on"])  # warm-up: page cache, the merged header tree, the fentry marker
        for _ in range(args.rounds):
            off.append(once(argv + ["--ebpf", "off"]))
            on.append(once(argv + ["--ebpf", "on"]))
            cached.append(build_once(cold=False))
        for _ in range(min(args.rounds, 3)):  # a clang compile is slow and its figure steady
            comp.append(build_once(cold=True))
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    med_off, med_on = statistics.median(off), statistics.median(on)
    print(json.dumps({
        "rounds": args.rounds,
        "load_average": os.getloadavg()[0],
        "median_seconds": {"off": round(med_off, 3), "on": round(med_on, 3), "compile_load_alone": round(statistics.median(comp), 3),
                           "cached_load_alone": round(statistics.median(cached), 3)},
        "on_over_off_median": round(med_on / med_off, 2),
        "per_round_ratio_quartiles": quartiles(ratios),
        "cold_first_run_extra_seconds": round(statistics.median(comp) - statistics.median(cached), 3),
        "target_met": med_on <= 2 * med_off,
    }, indent=2))


if __name__ == "__main__":
    main()
