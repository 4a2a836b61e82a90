"""Carries out the watch pipeline (tracer/pipeline/watch.py): the probe's driver (tracer/pipeline/driver.py,
its journal, undo and handlers) with the watch's own commands added."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from tracer import system
from tracer.system import console
from tracer.model import ProbeRequest
from tracer.pipeline import driver, watch
from tracer.pipeline.drive import undo
from tracer.pipeline.drive import watch as handlers
from tracer.plan import commands as c
from tracer.plan import watch_commands as w
from tracer.plan.commands import drive
from tracer.report.watch import Live, WatchSummary

HANDLERS: dict[type, Callable[[Any, Any], Any]] = {
    **driver.HANDLERS,
    w.OpenCapture: handlers.open_capture,
    w.PollWatch: handlers.poll_watch,
    w.CaptureStats: handlers.capture_stats,
    w.MarkCapture: handlers.mark_capture,
    w.Now: handlers.now,
    w.Show: handlers.show,
    w.WatchEbpfFilter: handlers.watch_ebpf_filter,
    w.EbpfLost: handlers.ebpf_lost,
}


class WatchRun(driver.Run):
    def __init__(self, req: watch.WatchRequest, log: Any, on_show: Optional[Callable[[Live], None]] = None) -> None:
        # The probe's Run reads the target namespace (and nothing else of a watch) from its request.
        super().__init__(ProbeRequest(dport=req.filter.dport or 0, netns=req.netns), log)
        self.wreq = req
        self.on_show = on_show
        self.capture: Any = None

    def execute_watch(self) -> WatchSummary:
        system.require_root()
        system.require_tools("nft", "ip")
        from tracer.system.cleanup import warn_stale

        warn_stale(self.log)
        if self.wreq.ebpf == "auto":  # a quick look first (no compile): --ebpf auto says why not
            from tracer.system.ebpf_loader import unavailable

            cannot = unavailable()
            if cannot is not None:
                self.wreq = dataclasses.replace(self.wreq, ebpf="off", notes=self.wreq.notes + (
                    f"--ebpf auto: the kernel's drop reasons were not watched: {cannot}",))
        with system.netns(self.wreq.netns), self.stack:
            try:
                summary: WatchSummary = drive(watch.watch(self.wreq, self.run_id, os.getpid()), self.carry_out)
            finally:
                if self.finished is None:
                    undo.finish(self, c.Finish())
        return summary

    def carry_out(self, cmd: c.Command) -> Any:
        # The probe's safe point for a signal (driver.Run.carry_out): between two commands, until
        # the undo began; the watch's own waits return at once on a signal (system.wait_readable).
        if self.finished is None:
            console.check()
        return HANDLERS[type(cmd)](self, cmd)
