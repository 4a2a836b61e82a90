"""README's sample outputs are the current renderer's, on bundles captured from real runs.

A sample is an indented block right after a line `<!-- sample: BUNDLE [part=findings|prove-fix] -->`;
its first line is the command (`$ sudo fwtrace probe ...`: its --netns/--from-netns name the
namespaces the header shows), an optional `...` line, then the output. The test replays
tests/data/bundles/BUNDLE (scripts/capture-trace-data made it on the kernel), renders it at 80
columns and compares. After a deliberate change to the renderer, regenerate the samples with
`FWTRACE_UPDATE_README=1 .venv/bin/python -m pytest -q tests/unit/test_readme.py` and read the diff.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from tracer import diagnose
from tracer.pipeline.evidence import replay_report
from tracer.system.bundle_io import read_dir as read_bundle
from tracer.model import Finding, Mode, ProbeRequest, Proto
from tracer.report.outcome import ProbeReport
from tracer.render import terminal
from tracer.ruleset.snapshot import assemble

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
BUNDLES = ROOT / "tests" / "data" / "bundles"
MARK = re.compile(r"^<!-- sample: (\S+)(?: part=(findings|prove-fix))? -->$")


def samples(lines: list[str]) -> list[tuple[str, str, int, int]]:
    """(bundle, part, first line of the block, end) for each marked block of README's lines."""
    out = []
    for i, line in enumerate(lines):
        m = MARK.match(line)
        if not m:
            continue
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        end = start
        while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
            end += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        out.append((m.group(1), m.group(2) or "all", start, end))
    return out


def report_for(bundle: str, command: str) -> ProbeReport:
    files = read_bundle(str(BUNDLES / bundle))
    doc = json.loads(files["report.json"])
    argv = shlex.split(command.lstrip("$ "))
    opt = {a: b for a, b in zip(argv, argv[1:]) if a.startswith("--")}
    p = doc["packets"][0]["probe"]
    mode = Mode(doc["mode"])
    req = ProbeRequest(dport=int(p["dport"]), proto=Proto(p["proto"]), netns=opt.get("--netns"),
                       from_netns=opt.get("--from-netns"), log=doc.get("log", ""),
                       src=ipaddress.ip_address(p["src"]) if "--src" in opt else None)
    ipt = {"ip": files["iptables-nft-save.txt"].decode()} if "iptables-nft-save.txt" in files else {}
    ctx = diagnose.Context(assemble(files["ruleset.nft"].decode(), "", ipt), (), local=False)
    c = doc["cleanup"]
    rep = replay_report(files, req, ctx, generations=tuple(c["generations"]), mode=mode, via=doc.get("via"),
                        unchanged=c["ruleset_unchanged"], checked=tuple(c.get("checked") or ()),
                        caveats=tuple(doc.get("caveats", ())))
    # A captured reply's one-line summary is scapy's, made by the live run's system layer: as it recorded it.
    results = tuple(dataclasses.replace(r, reply=dataclasses.replace(r.reply, summary=p.get("reply_summary") or ""))
                    if r.reply.captured else r for r, p in zip(rep.results, doc["packets"]))
    return dataclasses.replace(rep, results=results)


def rendered(bundle: str, part: str, command: str) -> list[str]:
    if part == "prove-fix":
        from tracer.pipeline.provefix import ProofStep, render

        steps = tuple(ProofStep(Finding(s["code"], "", s["fix"]), s["narrowed"], bool(s["proven"]), s["blocked_by"] or "",
                                s["error"] or "", tuple(s["cleanup"]["generations"]), s["cleanup"]["ruleset_unchanged"])
                      for s in json.loads((BUNDLES / bundle / "prove_fix.json").read_text()))
        return render(steps).rstrip("\n").split("\n")
    text = terminal.text(report_for(bundle, command), width=80).rstrip("\n").split("\n")
    if part == "findings":
        first = next(i for i, line in enumerate(text) if line.startswith("  finding"))
        last = next(i for i, line in enumerate(text) if line.startswith("  conclusion"))
        text = text[first:last]
        while text and not text[-1].strip():
            text.pop()
    return text


def check(lines: list[str], update: bool) -> list[str]:
    """README's lines with every sample as rendered now (update), or the samples that differ."""
    out, bad, pos = [], [], 0
    for bundle, part, start, end in samples(lines):
        block = [line[4:] for line in lines[start:end]]
        command = block[0]
        head = block[:2] if block[1:2] == ["..."] else block[:1]
        want = rendered(bundle, part, command)
        if block[len(head):] != want:
            bad.append(f"README line {start + 1} ({bundle}): differs from the renderer")
        out += lines[pos:start] + ["    " + line if line else "" for line in head + want]
        pos = end
    out += lines[pos:]
    return out if update else bad


def test_every_readme_sample_is_what_the_renderer_prints_for_its_bundle() -> None:
    lines = README.read_text().split("\n")
    assert {b for b, _, _, _ in samples(lines)} >= {"readme-seed-ingress", "readme-reply-dropped", "readme-prove-fix",
                                                    "readme-near-miss"}
    if os.environ.get("FWTRACE_UPDATE_README"):
        README.write_text("\n".join(check(lines, True)))
    assert check(README.read_text().split("\n"), False) == []


def test_a_changed_sample_is_caught() -> None:
    lines = README.read_text().split("\n")
    bundle, part, start, end = samples(lines)[0]
    broken = lines[:end - 1] + [lines[end - 1] + " (edited)"] + lines[end:]
    assert check(broken, False) == [f"README line {start + 1} ({bundle}): differs from the renderer"]
    with pytest.raises(StopIteration):
        next(iter(samples(["no samples here"])))
