"""Handlers for the watch's own commands (tracer/plan/watch_commands.py): the receive-side capture,
waiting on it and the trace socket, the live view."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from tracer import system
from tracer.errors import UsageError
from tracer.pipeline.drive import checkpoint
from tracer.plan import watch_commands as w

MARK_READS = 16  # x the capture's MAX_READ: what a loaded moment can queue before the table is in

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def open_capture(run: "RunState", cmd: w.OpenCapture) -> tuple[str, ...]:
    from tracer.system.capture import RxCapture, interfaces

    names = interfaces()
    if cmd.iface is not None and cmd.iface not in names:
        raise UsageError(f"no interface {cmd.iface!r} in the target namespace", f"it has: {', '.join(names)}")
    cap = RxCapture(cmd.program, cmd.iface)
    run.stack.callback(cap.close)
    run.capture = cap  # type: ignore[attr-defined]
    return (cmd.iface,) if cmd.iface is not None else tuple(n for n in names)


def poll_watch(run: "RunState", cmd: w.PollWatch) -> Optional[w.WatchPolled]:
    cap = getattr(run, "capture")
    now = time.monotonic()
    if now < cmd.until:
        system.wait_readable([s.fileno() for s in run.sources] + [cap.fileno()], cmd.until - now)
    new = [ev for s in run.sources for ev in s.poll(0)]
    for s in run.sources:
        s.raw.clear()  # the watch keeps flows, not datagrams: memory stays flat
    if new:
        checkpoint("collect")
    seen = tuple(cap.poll())
    return w.WatchPolled(time.monotonic(), tuple(new), seen, any(s.lost for s in run.sources))


def mark_capture(run: "RunState", cmd: w.MarkCapture) -> tuple[w.Seen, ...]:
    cap = getattr(run, "capture")
    out: list[w.Seen] = []
    for _ in range(MARK_READS):
        got = cap.poll()
        out += got
        if not got:
            break
    return tuple(out)


def capture_stats(run: "RunState", cmd: w.CaptureStats) -> tuple[int, int]:
    return getattr(run, "capture").stats()  # type: ignore[no-any-return]


def now(run: "RunState", cmd: w.Now) -> float:
    return time.monotonic()


def show(run: "RunState", cmd: w.Show) -> Any:
    on_show = getattr(run, "on_show", None)
    if on_show is not None:
        on_show(cmd.live)
    checkpoint("show")
    return None


def watch_ebpf_filter(run: "RunState", cmd: w.WatchEbpfFilter) -> None:
    src = run.ebpf.source if run.ebpf is not None else None
    if src is None:
        return None
    from tracer.system import ebpf_watch

    slots = dict(cmd.slots)
    ebpf_watch.set_filter(src, slots)
    run.stack.callback(ebpf_watch.clear_filter, src, slots)  # before the source's close (LIFO)
    return None


def ebpf_lost(run: "RunState", cmd: w.EbpfLost) -> int:
    src = run.ebpf.source if run.ebpf is not None else None
    if src is None:
        return 0
    from tracer.system import ebpf_watch

    return ebpf_watch.lost(src)
