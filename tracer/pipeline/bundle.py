"""Write the evidence bundle of a probe run: `--evidence DIR` or `--evidence FILE.tar.gz`.

The system side of the bundle: it lists the target's rulesets with counters before and after the
run, collects the environment (kernel, tools, sysctls, addresses, routes, listening sockets), and
writes everything the renderers make (report.md/.html/.json/.txt, path.svg, probe.pcapng) beside
the raw material `tracer.pipeline.evidence` already bundles for replay. See `files()` for the list.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import time
from typing import Any

from tracer import __version__, system
from tracer.collect import counters
from tracer.system.bundle_io import (  # noqa: F401  rulesets, _try, write_dir and write_tar re-exported
    _try,
    environment_in,
    rulesets,
    rulesets_in,
    write_dir,
    write_tar,
)
from tracer.model import ProbeRequest

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter",
           "net.ipv4.conf.default.rp_filter", "net.netfilter.nf_conntrack_tcp_loose", "net.netfilter.nf_conntrack_max",
           "net.netfilter.nf_conntrack_count", "net.ipv4.icmp_ratelimit", "net.ipv4.icmp_msgs_per_sec",
           "net.ipv6.icmp.ratelimit", "net.bridge.bridge-nf-call-iptables", "net.netfilter.nf_conntrack_log_invalid")


class Collector:
    """Listings taken around a run, then the bundle written from them and the report."""

    def __init__(self, req: ProbeRequest, argv: list[str]) -> None:
        self.req = req
        self.argv = argv
        self.started = time.time()
        self.before_sets: dict[str, str] = {}

    def before(self) -> None:
        system.require_root()
        self.before_sets = rulesets_in(self.req.netns)
        self.started = time.time()

    def environment(self, report: Any) -> tuple[dict[str, str], dict[str, str]]:
        """(short facts, long listings) of the target namespace and the machine."""
        sysctls, long, legacy = environment_in(self.req.netns, SYSCTLS, report.via)
        uname = platform.uname()
        facts = {
            "fwtrace version": __version__,
            "command line": shlex.join(["fwtrace", *self.argv[1:]]),  # argv[0] may be a venv path or -m
            "time (UTC)": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": f"{uname.system} {uname.release} {uname.version} {uname.machine}",
            "target namespace": self.req.netns or "(the one fwtrace ran in)",
            "nft": _try(["nft", "--version"]).strip(),
            "iptables": _try(["iptables", "--version"]).strip(),
            "nf_tables tables": ", ".join(" ".join(line.split()[1:3]) for line in
                                          self.before_sets.get("nft-ruleset.txt", "").splitlines()
                                          if line.startswith("table ")) or "none",
            "iptables-legacy tables": ", ".join(legacy) or "none",
            "probe mode": report.mode or self.req.mode,
            "kernel BTF": "present" if os.path.exists("/sys/kernel/btf/vmlinux") else "absent",
            "tcx (Linux 6.6+)": "yes" if _kernel_at_least(uname.release, 6, 6) else "no",
            "conntrack state in nft trace events (Linux 6.16+)": "yes" if _kernel_at_least(uname.release, 6, 16) else "no",
        }
        return facts, long

    def files(self, report: Any) -> dict[str, bytes]:
        """Every file of the bundle, by name."""
        from tracer.pipeline.evidence import bundle_files
        from tracer.render import html, jsondoc, markdown, svg, terminal

        after = rulesets_in(self.req.netns)
        facts, long = self.environment(report)
        command = facts["command line"]
        text = terminal.text(report)
        files = dict(bundle_files(report, text))
        files["report.json"] = jsondoc.dumps(report).encode() + b"\n"
        files["report.md"] = markdown.render(report, facts, command).encode()
        files["report.html"] = html.render(report, facts, command).encode()
        files["path.svg"] = svg.for_report(report).encode()
        files["probe.pcapng"] = pcapng_of(report, self.started)
        before_sets = self.before_sets
        if huge(before_sets):
            before_sets, after = on_path(before_sets, report), on_path(after, report)
            files["rulesets-TRIMMED.txt"] = (f"The ruleset has more than {HUGE_LINES} lines: before/ and after/ "
                                             "hold only the tables the probe went through.\n").encode()
        for name, content in before_sets.items():
            files[f"before/{name}"] = content.encode()
        for name, content in after.items():
            files[f"after/{name}"] = content.encode()
        files["counter-deltas.txt"] = counter_deltas(self.before_sets, after).encode()
        files["environment.json"] = json.dumps(facts, indent=2).encode() + b"\n"
        from tracer.pipeline.doctor import dumps, gather

        files["doctor.json"] = (dumps(gather(load=False)) + "\n").encode()  # what the machine supports
        for name, content in long.items():
            files[f"environment/{name}"] = content.encode()
        return files

    def write(self, report: Any, dest: str, redact: bool = False) -> str:
        files = self.files(report)
        if redact:
            files = redacted(files, report)
        if dest.endswith(".tar.gz"):
            write_tar(dest, files, f"fwtrace-{report.run_id}")
        else:
            write_dir(dest, files)
        return dest


HUGE_LINES = 20000  # a kube-proxy host with thousands of Services: keep what the probe met


def huge(sets: dict[str, str]) -> bool:
    return sum(text.count("\n") for text in sets.values()) > HUGE_LINES


def on_path(sets: dict[str, str], report: Any) -> dict[str, str]:
    """The listings cut down to the tables the probe (or its reply) went through."""
    met = {(s.event.family, s.event.table) for r in report.results for s in (*r.steps, *r.reply_steps)}
    out = {}
    for name, text in sets.items():
        if name.startswith("nft"):
            out[name] = counters.nft_tables(text, met)
        else:
            family = "ip6" if name.startswith("ip6") else "ip"
            out[name] = counters.save_tables(text, {t for f, t in met if f == family})
    return out


def _kernel_at_least(release: str, major: int, minor: int) -> bool:
    try:
        parts = [int(x) for x in release.split("-")[0].split(".")[:2]]
    except ValueError:
        return False
    return tuple(parts) >= (major, minor)


def counter_deltas(before: dict[str, str], after: dict[str, str]) -> str:
    lines = ["# Counters that moved during the run (all traffic, not only the probe's), before -> after", ""]
    for name, parse in (("nft-ruleset.txt", counters.nft_counters),) + tuple(
            (n, counters.save_counters) for n in sorted(after) if n.endswith("-save-c.txt")):
        if name in before and name in after:
            label = "nft" if name.startswith("nft") else name.replace("-save-c.txt", "")
            lines += counters.deltas(parse(before[name]), parse(after[name]), label)
    if len(lines) == 2:
        lines.append("(no counter moved: the rules on the path have no `counter` statement)")
    return "\n".join(lines) + "\n"


def pcapng_of(report: Any, started: float) -> bytes:
    """The probes (rebuilt from their specs: fwtrace's packets are fully determined by them) and
    the replies as captured, each commented with its verdict."""
    from tracer.system.raw import build
    from tracer.render import pcapng, timeline

    packets = []
    replies = report.evidence.replies if report.evidence is not None else ()
    for i, r in enumerate(report.results):
        when = started + i * 0.001
        packets.append(pcapng.Packet(build(r.spec), when, f"fwtrace probe {i + 1}: {r.spec.summary()}; "
                                     f"verdict {timeline.verdict_text(r)}; reply {r.reply.kind}"))
        if i < len(replies) and replies[i]:
            way = "; ".join(f"{s.event.table} {s.event.chain} {s.event.verdict or s.event.kind.value}" for s in r.reply_steps)
            packets.append(pcapng.Packet(replies[i], when + 0.0005, f"reply to probe {i + 1}: {r.reply.kind}"
                                         + (f"; on its way out: {way}" if way else "")))
    note = ("fwtrace run {}: timestamps give the order only (the run's start time plus 1 ms per probe), "
            "not capture times".format(report.run_id))
    return pcapng.write(packets, f"fwtrace {__version__}", note)


BINARY_RAW = (".nlmsg", ".ip")


def redacted(files: dict[str, bytes], report: Any) -> dict[str, bytes]:
    """Text files with other addresses replaced; the raw trace datagrams (binary, for replay)
    left out, as they would carry addresses a text filter cannot reach."""
    from tracer.report.redact import Redactor

    keep = {str(a) for r in report.results for a in (r.spec.src, r.spec.dst)}
    red = Redactor(keep)
    out: dict[str, bytes] = {}
    for name, content in files.items():
        if name.endswith(BINARY_RAW):
            continue
        if name.endswith(".pcapng"):
            out[name] = content  # the probe's own packets and their replies only
            continue
        out[name] = red.text(content.decode(errors="replace")).encode()
    out["REDACTED.txt"] = (f"Addresses other than the probe's ({', '.join(sorted(keep))}) were replaced by "
                           "placeholders from 198.18.0.0/15 and 2001:db8:fade::/48, the same placeholder for the "
                           "same address throughout the bundle. The raw trace datagrams (*.nlmsg, reply-*.ip) are "
                           "left out, so this bundle cannot be replayed offline.\n").encode()
    return out
