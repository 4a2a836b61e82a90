"""Read the kernel log as it is written: /dev/kmsg, one record per read(2).

Opened at the start of a run and moved to the end at once (SEEK_END), so lines older than the
run are never seen. The kernel log is global: lines from every namespace arrive here, and
`tracer.collect.kernlog` keeps only those describing this run's probes. The source has `fileno()` and
`poll(until, on_event)` like the nftrace socket, so the probe waits on both at once.
"""
from __future__ import annotations

import errno
import os
import select
import time
from typing import Callable, Optional

from tracer.errors import EnvironmentProblem
from tracer.model import TraceEvent
from tracer.collect import kernlog

KMSG = "/dev/kmsg"


class KmsgSource:
    def __init__(self, ctx: kernlog.KernContext, path: str = KMSG) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read the kernel log {path}: {e.strerror}",
                                     "fwtrace needs root, and a kernel with /dev/kmsg (CONFIG_PRINTK)") from e
        os.lseek(self.fd, 0, os.SEEK_END)
        self.ctx = ctx
        self.raw: list[bytes] = []  # every record read, for the evidence bundle
        self.lost = False

    def fileno(self) -> int:
        return self.fd

    def poll(self, until: float, on_event: Optional[Callable[[TraceEvent], None]] = None) -> list[TraceEvent]:
        """Read what arrives until the monotonic deadline `until` (returns at once when past it)."""
        events: list[TraceEvent] = []
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: the next read goes on
                    self.lost = True
                    continue
                if e.errno != errno.EAGAIN:
                    raise
                left = until - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    return events
                continue
            self.raw.append(rec)
            ev = kernlog.event_of_record(rec, self.ctx)
            if ev is not None:
                events.append(ev)
                if on_event is not None:
                    on_event(ev)

    def close(self) -> None:
        os.close(self.fd)


