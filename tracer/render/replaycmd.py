"""The command line that sends a report's probe again. No I/O."""
from __future__ import annotations

from typing import Any

from tracer.model import Proto


def replay_command(report: Any) -> str:
    """The command that sends the same probe again (same addresses, ports, flags and mode)."""
    req = report.request
    r = report.results[0] if report.results else None
    argv = ["fwtrace", "probe"]
    if req.proto is not Proto.ICMP:
        argv += ["--dport", str(req.dport)]
    if getattr(req, "both", False):
        argv += ["--proto", "both"] + (["--flags", req.flags] if req.flags != "S" else [])
    elif req.proto is not Proto.TCP:
        argv += ["--proto", req.proto.value]
    elif req.flags != "S":
        argv += ["--flags", req.flags]
    if r is not None:
        argv += ["--dst", str(r.spec.dst), "--src", str(r.spec.src)]
        if req.proto is not Proto.ICMP:
            argv += ["--sport", str(req.sport if req.sport is not None else r.spec.sport)]
    if req.count != 1:
        argv += ["--count", str(req.count)]
    if req.timeout != 1.0:
        argv += ["--timeout", f"{req.timeout:g}"]
    if req.netns:
        argv += ["--netns", req.netns]
    mode = report.mode or req.mode
    if mode == "from-netns":
        argv += ["--from-netns", str(req.from_netns)]
    elif mode == "from-ssh":
        argv += ["--from", str(req.from_ssh)]
    elif mode == "local":
        argv += ["--local"]
    elif report.via:
        argv += ["--via", report.via]
    if req.log:
        argv += ["--log", req.log]
    return " ".join(argv)
