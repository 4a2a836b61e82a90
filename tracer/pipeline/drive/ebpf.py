"""Handlers for the eBPF programs (tracer/system/ebpf_phase.py carries them)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.pipeline.drive import print_bpf
from tracer.plan import ebpf_commands as ec

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def start(run: RunState, cmd: ec.StartEbpf) -> None:
    from tracer.system.ebpf_phase import EbpfPhase

    run.ebpf = EbpfPhase("on", run.log, print_bpf if cmd.print_source else None)
    run.ebpf.start()


def open_(run: RunState, cmd: ec.OpenEbpf) -> str:
    assert run.ebpf is not None, "StartEbpf comes first"
    src = run.ebpf.open(run.stack)
    if src is not None:
        run.sources.append(src)
    return str(run.ebpf.status)


def watch(run: RunState, cmd: ec.WatchEbpf) -> Any:
    return run.ebpf.watch(cmd.spec)


def collect(run: RunState, cmd: ec.CollectEbpf) -> ec.EbpfOutcome:
    e = run.ebpf
    return ec.EbpfOutcome(e.status, tuple(e.notes), e.raw(), e.names()) if e is not None else ec.EbpfOutcome()
