"""Handlers for the event sources: the nftrace socket (with the run's journal, at Begin), the
kernel log and NFLOG sockets, and waiting on all of them and the injector."""
from __future__ import annotations

import os
import select
import sys
import time
from typing import TYPE_CHECKING, Optional

from tracer import commands as c
from tracer import console, system
from tracer.drive import checkpoint
from tracer.undo.journal import Journal

if TYPE_CHECKING:
    from tracer.driver import Run


def begin(run: Run, cmd: c.Begin) -> None:
    from tracer.trace.collect import TraceSocket

    tsock = TraceSocket(system.interface_names())
    run.stack.callback(tsock.close)
    run.sources.insert(0, tsock)
    run.journal = Journal(run.run_id, list(sys.argv), netns=run.req.netns)


def open_kernel_sources(run: Run, cmd: c.OpenKernelSources) -> None:
    """Opened in the target before any rule of the plan exists, closed at Finish."""
    from tracer.trace import kernlog

    kplan = cmd.plan
    ctx = kernlog.KernContext(run.run_id, kplan.ruleset, kplan.offsets, kplan.log_points)
    if kplan.kmsg:
        from tracer.trace.kmsg import KmsgSource

        ksrc = KmsgSource(ctx)  # from now on: nothing older than the run is read
        run.stack.callback(ksrc.close)
        run.sources.append(ksrc)
        run.kmsg = ksrc
    if kplan.nflog_group is not None:
        from tracer.trace.collect import NflogSocket

        nsrc = NflogSocket(kplan.nflog_group, ctx, system.interface_names())
        run.stack.callback(nsrc.close)
        run.sources.append(nsrc)
        run.nflog = nsrc


def wait(run: Run, cmd: c.Wait) -> Optional[c.Polled]:
    now = time.monotonic()
    if now >= cmd.until:
        return None
    wake = console.wakeup_fd()  # readable once a signal arrived: stop waiting, the next command acts on it
    fds = [s.fileno() for s in run.sources] + [run.sender.fileno()] + ([wake] if wake is not None else [])
    ready = select.select(fds, [], [], cmd.until - now)[0]
    if wake is not None and wake in ready:
        _drain(wake)
    on_event = (lambda ev: run.log.debug("trace", **ev.to_json())) if run.log_events else None
    new = [ev for s in run.sources for ev in s.poll(0, on_event)]
    if new:
        checkpoint("collect")
    caps = tuple(c.Captured(x.headers, x.data, x.ifname) for x in run.sender.poll(0)) if cmd.replies else ()
    for cap in caps:
        run.log.debug("captured", ifname=cap.ifname)
    return c.Polled(time.monotonic(), tuple(new), caps)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
