"""The evidence bundle: everything a probe saw, written to a directory for a ticket.

A bundle can be replayed offline (`replay`): the ruleset, the raw nfnetlink trace datagrams, the
instrumentation's echo and the captured replies give back the same verdict timeline. The unit
tests replay bundles captured on the real kernel (scripts/capture-trace-data).
"""
from __future__ import annotations

import ipaddress
import json
import os
from typing import Any, Mapping

from . import correlate, plan, snapshot
from .model import PacketResult, PacketSpec, Proto
from .nftrace import parse_headers, parse_messages


def bundle_files(report: Any, text: str) -> dict[str, bytes]:
    """File name -> content for a ProbeReport (pure)."""
    ev = report.evidence
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
    for i, reply in enumerate(ev.replies, 1):
        if reply:
            files[f"reply-{i}.ip"] = reply
    return files


def write_bundle(directory: str, files: Mapping[str, bytes]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for name, content in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)


def read_bundle(directory: str) -> dict[str, bytes]:
    out = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def spec_from_json(d: Mapping[str, Any]) -> PacketSpec:
    return PacketSpec(Proto(d["proto"]), ipaddress.ip_address(d["src"]), ipaddress.ip_address(d["dst"]),
                      int(d["sport"]), int(d["dport"]), str(d["flags"]), int(d["ident"]))


def replay(files: Mapping[str, bytes]) -> list[PacketResult]:
    """Redo the correlation from a bundle's raw material (pure)."""
    doc = json.loads(files["report.json"])
    ipt = {fam: files[f"{tool}.txt"].decode() for fam, tool in snapshot.IPT_SAVE.items() if f"{tool}.txt" in files}
    ruleset = snapshot.assemble(files["ruleset.nft"].decode(), "", ipt)
    specs = [spec_from_json(p["probe"]) for p in doc["packets"]]
    roles = plan.roles(plan.trace_plan(doc["run_id"], specs, 0))
    events = parse_messages(files["trace.nlmsg"])
    results = []
    for i, spec in enumerate(specs, 1):
        raw = files.get(f"reply-{i}.ip", b"")
        results.append(correlate.packet_result(spec, events, ruleset, parse_headers(raw), "", roles))
    return results
