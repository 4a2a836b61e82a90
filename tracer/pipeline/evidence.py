"""The evidence bundle: everything a probe saw, written to a directory for a ticket. Pure: it works on
the bundle's files as bytes by name; tracer/system/bundle_io.py reads and writes them.

A bundle can be replayed offline (`replay`): the ruleset, the raw nfnetlink trace datagrams (and
kernel-log records / NFLOG datagrams with the places of fwtrace's own LOG rules) and the captured
replies give back the same verdict timeline. The unit
tests replay bundles captured on the real kernel (scripts/capture-trace-data).
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Mapping

from tracer import correlate, diagnose
from tracer.ruleset import snapshot
from tracer.model import PacketResult, PacketSpec, ProbeRequest, Proto
from tracer.report.outcome import ProbeReport, build_report
from tracer.packet import parse_headers
from tracer.plan import plan
from tracer.collect.nftrace import parse_messages


def bundle_files(report: ProbeReport, text: str) -> dict[str, bytes]:
    """File name -> content for a ProbeReport (pure)."""
    ev = report.evidence
    assert ev is not None, "only a live run's report carries its evidence"
    files: dict[str, bytes] = {
        "report.json": report.dumps().encode() + b"\n",
        "report.txt": text.encode(),
        "ruleset.nft": ev.nft_rules.encode(),
        "instrumentation.nft": ev.batch.encode(),
        "trace.nlmsg": ev.trace,
    }
    for family, saved in ev.ipt_rules.items():
        files[f"{snapshot.IPT_SAVE[family]}.txt"] = saved.encode()
    if ev.ruleset_diff is not None:
        files["ruleset-diff.txt"] = "".join(line + "\n" for line in ev.ruleset_diff).encode() or b"(identical)\n"
    for family, saved in ev.legacy_rules.items():
        files[f"{snapshot.LEGACY_SAVE[family]}.txt"] = saved.encode()
    if ev.nflog:
        files["nflog.nlmsg"] = ev.nflog
    if getattr(ev, "ebpf", ()):
        files["ebpf-records.bin"] = b"".join(ev.ebpf)  # struct event_t records (tracer/collect/ebpf_decode.py)
        files["ebpf-names.json"] = json.dumps(ev.ebpf_names, indent=1, sort_keys=True).encode() + b"\n"
    if ev.own_handles:
        files["instrumentation-handles.json"] = json.dumps([list(h) for h in ev.own_handles]).encode()
    if ev.kern_plan is not None:
        files["instrumentation-kernel.json"] = json.dumps(ev.kern_plan, sort_keys=True).encode() + b"\n"
    if ev.kmsg:
        # One /dev/kmsg record per line: continuation lines (" SUBSYSTEM=...") are dropped.
        files["kmsg.txt"] = b"".join(r.split(b"\n", 1)[0] + b"\n" for r in ev.kmsg)
    for i, reply in enumerate(ev.replies, 1):
        if reply:
            files[f"reply-{i}.ip"] = reply
    return files


def spec_from_json(d: Mapping[str, Any]) -> PacketSpec:
    return PacketSpec(Proto(d["proto"]), ipaddress.ip_address(d["src"]), ipaddress.ip_address(d["dst"]),
                      int(d["sport"]), int(d["dport"]), str(d["flags"]), int(d["ident"]))


def replay(files: Mapping[str, bytes]) -> list[PacketResult]:
    """Redo the correlation from a bundle's raw material (pure)."""
    doc = json.loads(files["report.json"])
    ipt = {fam: files[f"{tool}.txt"].decode() for fam, tool in snapshot.IPT_SAVE.items() if f"{tool}.txt" in files}
    legacy = {fam: files[f"{tool}.txt"].decode() for fam, tool in snapshot.LEGACY_SAVE.items() if f"{tool}.txt" in files}
    ruleset = snapshot.assemble(files["ruleset.nft"].decode(), "", ipt, legacy)
    specs = [spec_from_json(p["probe"]) for p in doc["packets"]]
    roles = plan.roles(plan.trace_plan(doc["run_id"], specs, 0))
    own = {(f, t, int(h)) for f, t, h in json.loads(files.get("instrumentation-handles.json", b"[]"))}
    # interfaces.json: the target's interface names by index, when the bundle has them (else "if2")
    ifnames = {int(k): str(v) for k, v in json.loads(files.get("interfaces.json", b"{}")).items()}
    events = correlate.without_handles(parse_messages(files["trace.nlmsg"], ifnames), own)
    if "kmsg.txt" in files or "nflog.nlmsg" in files:
        from tracer.collect import kernlog, nflog
        from tracer.plan import kernplan

        # Where the run put its LOG/NFLOG rules and how many TRACE/LOG rules it inserted at the
        # top of legacy chains: recorded at the run (its plan came from the chains before it).
        kp = kernplan.plan_from_json(json.loads(files["instrumentation-kernel.json"]))
        ctx = kernlog.KernContext(doc["run_id"], ruleset, kp.offsets, kp.log_points)
        events += [e for e in (kernlog.event_of_record(r, ctx) for r in files.get("kmsg.txt", b"").splitlines()) if e]
        events += [e for e in (nflog.to_event(p, ctx) for p in nflog.parse_packets(files.get("nflog.nlmsg", b""))) if e]
    results = []
    for i, spec in enumerate(specs, 1):
        raw = files.get(f"reply-{i}.ip", b"")
        results.append(correlate.packet_result(spec, events, ruleset, parse_headers(raw), "", roles))
    if "ebpf-records.bin" in files:  # the kernel's own view, as the run decoded it
        from tracer.collect import ebpf_decode as decode
        from tracer.plan import ebpf_programs as render
        from tracer.correlate import ebpf_timeline as timeline
        from tracer.inject.ingress import port_names

        kernel = decode.replay_events(files["ebpf-records.bin"], json.loads(files["ebpf-names.json"]),
                                      decode.HEAD_SIZE + render.PKT_MAX)
        port = frozenset(port_names(doc["run_id"])) if doc.get("mode") == "ingress" else frozenset()
        results = [timeline.attach(r, kernel, port) for r in results]
    return results


def replay_report(files: Mapping[str, bytes], request: ProbeRequest, ctx: diagnose.Context, **kw: Any) -> ProbeReport:
    """A report from a bundle's raw material, put together as the live run does (pure); `kw` as
    for outcome.build_report (generations, cleanup, ...), which the bundle cannot replay."""
    return build_report(request, json.loads(files["report.json"])["run_id"], replay(files), ctx, **kw)
