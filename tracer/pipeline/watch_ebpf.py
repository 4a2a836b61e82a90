"""`fwtrace watch --ebpf`: the probe's eBPF drop reasons (probes/drops.c, tracer/system/ebpf_phase.py)
with the watch's filter as their key, and the probe's kernel verdict (tracer/diagnose/kernverdict.py)
for a flow the kernel dropped. Pipeline steps (sans-io), used by tracer/pipeline/watch.py."""
from __future__ import annotations

import dataclasses
from typing import Any

from tracer import diagnose
from tracer.correlate import ebpf_timeline
from tracer.correlate.flows import FlowKey
from tracer.diagnose import kernverdict
from tracer.errors import EnvironmentProblem
from tracer.model import EventKind, PacketResult
from tracer.plan import ebpf_keys
from tracer.plan.commands import KernelChecks, Steps
from tracer.plan.ebpf_commands import OpenEbpf
from tracer.plan.watch_commands import WatchEbpfFilter
from tracer.plan.watchplan import WatchFilter

KERNEL_FLOWS = 8  # flows whose kernel verdict is asked (sysctls and route lookups each)


def open_ebpf(f: WatchFilter, strict: bool) -> Steps[str]:
    """The probe's eBPF programs with the watch's filter as their key -> "loaded", or "unavailable:
    why" (--ebpf auto goes on without them); `strict` (--ebpf on): that is a one-line failure
    instead (the table is not in yet; Finish closes the capture)."""
    status: str = yield OpenEbpf()
    if status != "loaded":
        if strict:
            raise EnvironmentProblem(f"--ebpf on: the eBPF drop reasons cannot run here "
                                     f"({status.removeprefix('unavailable: ')})",
                                     "run with --ebpf auto or off to watch with the netfilter sources only")
        return status
    yield WatchEbpfFilter(tuple(ebpf_keys.watch_keys(f).items()))
    return status


def note(status: str) -> tuple[str, ...]:
    """What the summary says of eBPF when --ebpf auto could not engage it."""
    if status.startswith("unavailable: "):
        return (f"--ebpf auto: the kernel's drop reasons were not watched: {status.removeprefix('unavailable: ')}",)
    return ()


def kernel_verdicts(results: dict[FlowKey, PacketResult], listeners: Any) -> Steps[None]:
    """The probe's kernel verdict (tracer/diagnose/kernverdict.py) for the flows whose packet the
    kernel dropped (an eBPF drop event) where no rule did: the sysctls and routes asked only then."""
    asked = 0
    for key, r in list(results.items()):
        if asked >= KERNEL_FLOWS or not kernverdict.needs_check(r) or not any(
                s.event.kind is EventKind.DROP for s in r.steps if s.event.source == ebpf_timeline.SOURCE):
            continue
        asked += 1
        h = diagnose.seen(r)
        iif = kernverdict.by_iif(r.steps) or next((s.event.iif for s in r.steps if s.event.iif), None)
        values, rin, back = yield KernelChecks(r.spec.src, h.dst, iif, kernverdict.sysctls_wanted(r.spec.family, iif))
        facts = kernverdict.Facts({}, False, values, rin, back, iif, True, listeners)
        found, checked = kernverdict.decide(r, facts, h.dst, h.dport)
        results[key] = dataclasses.replace(r, kernel=found, kernel_checked=checked, route_back=back)
