#!/usr/bin/env python3
"""Bounds of `fwtrace watch` (issue 24): memory over a long watch of a busy flow, and the events
per second it emits under a flood of its own filter, against the kernel-side cap.

Not a test: run as root.
  .venv/bin/python bench/watch_bounds.py memory [--minutes 10 --pps 2000 --every 5]
      one TCP connection client -> server, to the watched port, sending small segments at
      about --pps for the whole watch (every packet matches the filter, both directions); the
      watch's resident memory (VmRSS of its process) sampled every --every seconds. Reports the
      samples' summary: RSS after the first minute, at the end, the maximum, and the slope of a
      least-squares line over minute 1 .. end (KiB per minute; flat: about 0).
  .venv/bin/python bench/watch_bounds.py flood [--seconds 10 --senders 2]
      UDP datagrams as fast as --senders processes can send, to the watched port; reports what
      arrived (the kernel's count in the watch's prerouting chain), what was traced, the trace
      events fwtrace received and the ndjson lines it printed, per second, beside the cap
      (rate per second per direction plus the burst once).
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
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tracer import system  # noqa: E402
from tracer.cli.lab import CLIENT4, SERVER4, Lab  # noqa: E402
from tracer.plan import watchplan  # noqa: E402

FWTRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".venv", "bin", "fwtrace")
PORT = 5101
RULES = (f"table inet filter {{\n chain input {{\n type filter hook input priority 0; policy accept;\n"
         f" tcp dport {PORT} accept\n udp dport {PORT} drop\n }}\n}}\n")
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    for _ in range(200):
        try:
            s.send(b"y" * 32)
        except OSError:
            pass
"""


def start_watch(lab: Lab, seconds: float, proto: str) -> tuple[subprocess.Popen[str], list[tuple[float, str]]]:
    """`fwtrace watch --json` in the server namespace; returns once its table is in. Its stdout
    lines are collected with their arrival times (a thread drains stderr and stdout)."""
    p = subprocess.Popen([FWTRACE, "-v", "watch", "--netns", lab.server, "--src", str(CLIENT4), "--dport", str(PORT),
                          "--proto", proto, "--json", "--duration", f"{seconds}s"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stderr is not None
    lines: list[tuple[float, str]] = []
    ready = threading.Event()

    def err() -> None:
        for line in p.stderr:  # type: ignore[union-attr]
            if "change" in line:
                ready.set()
        ready.set()

    def out() -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            lines.append((time.monotonic(), line))

    threading.Thread(target=err, daemon=True).start()
    threading.Thread(target=out, daemon=True).start()
    ready.wait(30)
    time.sleep(0.3)
    return p, lines


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope(points: list[tuple[float, float]]) -> float:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def memory(args: argparse.Namespace) -> dict[str, Any]:
    total = args.minutes * 60
    with Lab(prefix="fwtrace-wmem") as lab:
        lab.nft(lab.server, RULES)
        with system.netns(lab.server):
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", PORT))
        srv.listen(1)
        p, lines = start_watch(lab, total + 2, "tcp")
        with system.netns(lab.client):
            c = socket.create_connection((str(SERVER4), PORT))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn, _ = srv.accept()
        stop = threading.Event()
        threading.Thread(target=lambda: [None for _ in iter(lambda: conn.recv(1 << 16), b"")], daemon=True).start()

        def send() -> None:
            batch, t0, n = max(1, args.pps // 100), time.monotonic(), 0
            while not stop.is_set():
                for _ in range(batch):
                    c.send(b"z" * 100)
                n += batch
                ahead = n / args.pps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        t0 = time.monotonic()
        samples: list[tuple[float, float]] = []
        while p.poll() is None and time.monotonic() - t0 < total + 30:
            try:
                samples.append(((time.monotonic() - t0) / 60, rss_kib(p.pid)))
                print(f"{samples[-1][0]:.2f} min {samples[-1][1]} KiB", file=sys.stderr, flush=True)
            except OSError:
                break
            time.sleep(args.every)
        stop.set()
        sender.join()
        p.wait(timeout=60)
        c.close(), conn.close(), srv.close()
    doc = json.loads(lines[-1][1])
    later = [(m, r) for m, r in samples if m >= 1.0]
    return {
        "minutes": args.minutes, "segments_per_second": args.pps, "samples": len(samples),
        "rss_kib": {"first_sample": samples[0][1] if samples else None,
                    "at_1_min": later[0][1] if later else None, "at_end": samples[-1][1] if samples else None,
                    "max": max(r for _, r in samples) if samples else None},
        "rss_slope_kib_per_min_after_1_min": round(slope(later), 2) if len(later) > 2 else None,
        "watch": {k: doc["accounting"][k] for k in ("packets_traced", "events_emitted", "kernel_counted")},
        "kernel_budget": doc["accounting"]["kernel_budget"], "flows": len(doc["flows"]),
        "cleanup_ok": doc["cleanup"]["ok"], "ndjson_lines": len(lines),
    }


def flood(args: argparse.Namespace) -> dict[str, Any]:
    with Lab(prefix="fwtrace-wflood") as lab:
        lab.nft(lab.server, RULES)
        p, lines = start_watch(lab, args.seconds, "udp")
        t0 = time.monotonic()
        senders = [subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable, "-c", FLOOD, str(SERVER4),
                                     str(PORT), str(args.seconds + 1)]) for _ in range(args.senders)]
        p.wait(timeout=args.seconds + 60)
        took = time.monotonic() - t0
        for s in senders:
            s.wait()
    doc = json.loads(lines[-1][1])
    acc = doc["accounting"]
    window = doc["duration_s"] if "duration_s" in doc else args.seconds
    rate, burst = acc["kernel_budget"]["rate_per_second"], acc["kernel_budget"]["burst"]
    return {
        "seconds": round(window, 2), "senders": args.senders,
        "arrived_per_s": round(acc["kernel_counted"] / window), "traced_per_s": round(acc["packets_traced"] / window, 1),
        "cap_traced_per_s_one_direction": f"{rate} (+ burst {burst} once) = {round(rate + burst / window, 1)} over this window",
        "trace_events_per_s": round(acc["events_emitted"] / window, 1),
        "trace_events_per_traced_packet": round(acc["events_emitted"] / max(1, acc["packets_traced"]), 2),
        "ndjson_lines_per_s": round((len(lines) - 1) / window, 2),
        "within_cap": acc["packets_traced"] <= burst + rate * took,
        "kernel_budget": acc["kernel_budget"], "events_lost": acc["events_lost"], "cleanup_ok": doc["cleanup"]["ok"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--minutes", type=float, default=10.0)
    m.add_argument("--pps", type=int, default=2000)
    m.add_argument("--every", type=float, default=5.0)
    f = sub.add_parser("flood")
    f.add_argument("--seconds", type=float, default=10.0)
    f.add_argument("--senders", type=int, default=2)
    args = ap.parse_args()
    assert watchplan.RATE > 0
    print(json.dumps(memory(args) if args.what == "memory" else flood(args), indent=2))


if __name__ == "__main__":
    main()
