"""How an eBPF event reads in the text report (the report adds the interface). Pure."""
from __future__ import annotations

from tracer.model import EventKind, TraceEvent


def ebpf_line(ev: TraceEvent) -> str:
    where = "kernel (eBPF)"
    if ev.kind is EventKind.DROP:
        hook = f", {ev.hook} hook" if ev.hook else ""
        return f"{where:<28} dropped: reason {ev.reason} at {ev.location}{hook}"
    if ev.kind is EventKind.HOOK:
        return f"{where:<28} {ev.text}"
    return f"{where:<28} {ev.text}"
