#!/usr/bin/env python3
"""What-if on a large ruleset: the shadow's build and one `what-if` beside the plain probe.

Not a test: run as root, `.venv/bin/python bench/whatif_scale.py [--rules 50000] [--runs 3]`.
A lab server gets a generated iptables ruleset of about --rules rules (kube-proxy-like: a
KUBE-SERVICES chain with one jump per service into KUBE-SVC-* chains, each with two KUBE-SEP-*
endpoints doing DNAT; a filter INPUT with a banned /24 per 250 services and ssh open). Measured,
median of --runs: the plain probe from the client namespace (`Run(...).execute()`), listing the
target (`capture`), building the shadow (`Shadow.__enter__`, incl. the restores) and tearing it
down, and one whole what-if (`iptables -I INPUT 1 -p tcp --dport 8443 -j ACCEPT`, every sampled
source probed before and after). Prints one table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import structlog  # noqa: E402

from tracer.model import ProbeRequest, Proto  # noqa: E402
from tracer.pipeline import whatif  # noqa: E402
from tracer.pipeline.driver import Run  # noqa: E402
from tracer.system.lab import SERVER4, Lab  # noqa: E402
from tracer.system.shadow import Shadow, capture  # noqa: E402

LOG = structlog.wrap_logger(structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def ruleset(n_rules: int) -> str:
    services = max(n_rules // 5, 1)
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    body = ["-A PREROUTING -j KUBE-SERVICES"]
    for i in range(services):
        svc = f"KUBE-SVC-{i:012X}"
        nat.append(f":{svc} - [0:0]")
        ip = f"10.{96 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
        body.append(f"-A KUBE-SERVICES -d {ip}/32 -p tcp -m tcp --dport 80 -j {svc}")
        for j in range(2):
            sep = f"KUBE-SEP-{i:010X}{j:02X}"
            nat.append(f":{sep} - [0:0]")
            body.append(f"-A {svc} -j {sep}")
            body.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination 10.244.{(i >> 8) & 255}.{i & 255}:{8000 + j}")
    filt = ["*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A INPUT -i lo -j ACCEPT"]
    filt += [f"-A INPUT -s 100.{64 + (k >> 8) % 64}.{k & 255}.0/24 -j DROP" for k in range(max(services // 250, 1))]
    filt += ["-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"]
    return "\n".join(nat + body + ["COMMIT"] + filt + ["COMMIT"]) + "\n"


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows: dict[str, list[float]] = {"plain probe (from-netns)": [], "list the target": [], "build the shadow": [],
                                    "remove the shadow": [], "one what-if (all samples, before+after)": []}
    with Lab(prefix="fwtrace-bench") as lab:
        lab.iptables_restore(lab.server, ruleset(a.rules))
        lab.listen(lab.server, Proto.TCP, 8443)
        n = lab.run(lab.server, ["iptables-save"]).stdout.count("\n-A ")
        req = ProbeRequest(dport=8443, netns=lab.server, from_netns=lab.client, dst=SERVER4, timeout=0.5)
        probes = 0
        for _ in range(a.runs):
            rows["plain probe (from-netns)"].append(timed(lambda: Run(req, LOG).execute()))
            state = capture(lab.server)
            rows["list the target"].append(timed(lambda: capture(lab.server)))
            sh = Shadow(state, LOG)
            rows["build the shadow"].append(timed(sh.__enter__))
            rows["remove the shadow"].append(timed(sh.close))
            t = time.perf_counter()
            w = whatif.what_if(req, ["iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"], LOG)
            rows["one what-if (all samples, before+after)"].append(time.perf_counter() - t)
            probes = len(w.probes)
    print(f"ruleset: {n} iptables rules; what-if probed {probes} (source, port) pairs twice; median of {a.runs}")
    for name, xs in rows.items():
        print(f"  {name:<42} {statistics.median(xs):7.2f} s")


if __name__ == "__main__":
    main()
