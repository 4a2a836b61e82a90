#!/usr/bin/env python3
"""Impact of `fwtrace watch`: throughput of an unrelated bulk TCP flow between two lab namespaces
without and with a watch running (its rate-limited trace table and its receive-side capture with
the BPF filter), measured side by side in one run as alternated pairs.

Not a test: run as root, `.venv/bin/python bench/watch_impact.py [--seconds 1 --rounds 30]`.
The watch's filter is a client the bulk flow is not (--src 198.51.100.7 --dport 8080): the flow
pays the table's match rules and the capture's filter, never a trace. Also reports the watch's
own accounting (it must have traced nothing) and its peak memory (ru_maxrss).
Target (issue 24): with / without >= 0.95.

Method: each round is a pair (without, with) measured back to back, the order alternating
round by round (ABBA...), so a drift of the machine's load hits both sides alike. Reported: the
ratio of the medians and the median of the per-pair ratios, each with a 95% bootstrap confidence
interval (pairs resampled, 10000 times, fixed seed). The target is shown when the interval's
lower end is >= 0.95, refuted when its upper end is < 0.95, else the run cannot tell (more
rounds, or a quieter machine). The load average before and after says how quiet it was.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from impact import PORT, flow, sink  # noqa: E402  (the same bulk flow and sink as bench/impact.py)

from tracer.cli.lab import Lab  # noqa: E402

FWTRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin", "fwtrace")


def bootstrap(stat: Callable[[list[int]], float], n: int, times: int = 10000, seed: int = 24) -> tuple[float, float]:
    """95% percentile interval of `stat` over resampled pair indices."""
    rng = random.Random(seed)
    vals = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(times))
    return vals[int(0.025 * times)], vals[int(0.975 * times) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    base: list[float] = []
    watched: list[float] = []
    summaries: list[dict] = []
    load0 = os.getloadavg()[0]
    with Lab(prefix="fwtrace-wbench") as lab:
        lab.nft(lab.server, f"table inet filter {{\n chain input {{\n type filter hook input priority 0; policy accept;\n"
                            f" tcp dport {PORT} accept\n tcp dport 8080 drop\n }}\n}}\n")
        srv = sink(lab)
        flow(lab, args.seconds)  # warm-up
        for i in range(args.rounds):
            for which in (("base", "watch") if i % 2 == 0 else ("watch", "base")):
                if which == "base":
                    base.append(flow(lab, args.seconds))
                    continue
                p = subprocess.Popen(["/usr/bin/time", "-f", "maxrss_kb=%M", FWTRACE, "-v", "watch", "--netns", lab.server,
                                      "--src", "198.51.100.7", "--dport", "8080", "--json",
                                      "--duration", f"{args.seconds + 3}s"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                assert p.stderr is not None
                for line in p.stderr:  # until the table is in
                    if "change" in line:
                        break
                time.sleep(0.3)
                watched.append(flow(lab, args.seconds))
                out, err = p.communicate()
                doc = json.loads(out.splitlines()[-1])
                doc["maxrss_kb"] = next((int(x.split("=")[1]) for x in err.split() if x.startswith("maxrss_kb=")), None)
                summaries.append(doc)
        srv.close()
    ratios = [w / b for w, b in zip(watched, base)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    rom = statistics.median(watched) / statistics.median(base)
    rom_ci = bootstrap(lambda ix: statistics.median([watched[i] for i in ix]) / statistics.median([base[i] for i in ix]),
                       len(ratios))
    mpr_ci = bootstrap(lambda ix: statistics.median([ratios[i] for i in ix]), len(ratios))
    verdict = "shown" if rom_ci[0] >= 0.95 else "refuted" if rom_ci[1] < 0.95 else "cannot tell"
    print(json.dumps({
        "seconds_per_measure": args.seconds, "rounds": args.rounds, "loadavg_before_after": [load0, os.getloadavg()[0]],
        "median_MB_per_s": {"without": round(statistics.median(base) / 1e6, 1),
                            "with_watch": round(statistics.median(watched) / 1e6, 1)},
        "ratio_of_medians": {"value": round(rom, 3), "ci95": [round(x, 3) for x in rom_ci]},
        "median_of_pair_ratios": {"value": round(q[1], 3), "ci95": [round(x, 3) for x in mpr_ci],
                                  "q1": round(q[0], 3), "q3": round(q[2], 3)},
        "target_0.95": verdict,
        "watch_packets_traced": sum(s["accounting"]["packets_traced"] for s in summaries),
        "watch_events": sum(s["accounting"]["events_emitted"] for s in summaries),
        "watch_capture_passed_filter": sum(s["accounting"]["capture"]["passed_filter"] for s in summaries),
        "watch_cleanup_ok": all(s["cleanup"]["ok"] for s in summaries),
        "watch_maxrss_kb": max((s["maxrss_kb"] or 0) for s in summaries),
    }, indent=2))


if __name__ == "__main__":
    main()
