"""Handlers for the eBPF programs (tracer/system/ebpf_phase.py carries them), and --ebpf auto's second pass."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from tracer.pipeline.drive import print_bpf
from tracer.plan import ebpf_commands as ec
from tracer.report.outcome import ProbeReport

if TYPE_CHECKING:
    from tracer.pipeline.driver import Run


def start(run: Run, cmd: ec.StartEbpf) -> None:
    from tracer.system.ebpf_phase import EbpfPhase

    run.ebpf = EbpfPhase("on", run.log, print_bpf if cmd.print_source else None)
    run.ebpf.start()


def open_(run: Run, cmd: ec.OpenEbpf) -> str:
    assert run.ebpf is not None, "StartEbpf comes first"
    src = run.ebpf.open(run.stack)
    if src is not None:
        run.sources.append(src)
    return str(run.ebpf.status)


def watch(run: Run, cmd: ec.WatchEbpf) -> Any:
    return run.ebpf.watch(cmd.spec)


def collect(run: Run, cmd: ec.CollectEbpf) -> ec.EbpfOutcome:
    e = run.ebpf
    return ec.EbpfOutcome(e.status, tuple(e.notes), e.raw(), e.names()) if e is not None else ec.EbpfOutcome()


def second_pass(run: Run, report: ProbeReport) -> ProbeReport:
    """--ebpf auto: probe again with the eBPF programs when the first pass left a fate unexplained."""
    from tracer.plan.ebpf_policy import unexplained

    why = unexplained(report.results) if run.req.ebpf == "auto" and report.cleanup_ok else None
    if why is None:
        return report
    from tracer.pipeline.driver import Run  # the second pass is a run of its own (imported here: Run imports us)
    from tracer.system.ebpf_loader import unavailable

    cannot = unavailable()
    if cannot is not None:
        note = f"--ebpf auto: the first pass left a fate unexplained ({why}), but eBPF cannot run here: {cannot}"
        return dataclasses.replace(report, notes=report.notes + (note,))
    run.log.info("probing again with eBPF", why=why)
    again = Run(dataclasses.replace(run.req, ebpf="on"), run.log, log_events=run.log_events,
                full_snapshot=run.full_snapshot, extra=run.extra, on_extra=run.on_extra).execute()
    note = (f"--ebpf auto: the first pass (run {report.run_id}) left a fate unexplained ({why}); "
            "probed again with the eBPF programs loaded")
    return dataclasses.replace(again, notes=(note,) + again.notes)
