"""Handlers for the event sources: the nftrace socket (with the run's journal, at Begin), the
kernel log and NFLOG sockets, and waiting on all of them and the injector."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Optional

from tracer.plan import commands as c
from tracer import system
from tracer.pipeline.drive import checkpoint
from tracer.system.journal import Journal

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def begin(run: RunState, cmd: c.Begin) -> None:
    from tracer.system.collect import TraceSocket

    tsock = TraceSocket(system.interface_names())
    run.stack.callback(tsock.close)
    run.sources.insert(0, tsock)
    run.journal = Journal(run.run_id, list(sys.argv), netns=run.req.netns)


def open_kernel_sources(run: RunState, cmd: c.OpenKernelSources) -> None:
    """Opened in the target before any rule of the plan exists, closed at Finish."""
    from tracer.collect import kernlog

    kplan = cmd.plan
    ctx = kernlog.KernContext(run.run_id, kplan.ruleset, kplan.offsets, kplan.log_points)
    if kplan.kmsg:
        from tracer.system.kmsg import KmsgSource

        ksrc = KmsgSource(ctx)  # from now on: nothing older than the run is read
        run.stack.callback(ksrc.close)
        run.sources.append(ksrc)
        run.kmsg = ksrc
    if kplan.nflog_group is not None:
        from tracer.system.collect import NflogSocket

        nsrc = NflogSocket(kplan.nflog_group, ctx, system.interface_names())
        run.stack.callback(nsrc.close)
        run.sources.append(nsrc)
        run.nflog = nsrc


def wait(run: RunState, cmd: c.Wait) -> Optional[c.Polled]:
    now = time.monotonic()
    if now >= cmd.until:
        return None
    system.wait_readable([s.fileno() for s in run.sources] + [run.sender.fileno()], cmd.until - now)
    on_event = (lambda ev: run.log.debug("trace", **ev.to_json())) if run.log_events else None
    new = [ev for s in run.sources for ev in s.poll(0, on_event)]
    if new:
        checkpoint("collect")
    caps = tuple(c.Captured(x.headers, x.data, x.ifname) for x in run.sender.poll(0)) if cmd.replies else ()
    for cap in caps:
        run.log.debug("captured", ifname=cap.ifname)
    return c.Polled(time.monotonic(), tuple(new), caps)
