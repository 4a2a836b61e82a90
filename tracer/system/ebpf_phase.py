"""The eBPF part of one probe run (system glue): start the compile early, open the ring buffer in
the target namespace, watch each probe. A kernel that cannot run the programs degrades the run to
the netfilter sources, with a note saying why; it never fails it."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

from tracer.model import PacketSpec


class EbpfPhase:
    def __init__(self, mode: str, log: Any, printer: Optional[Callable[[str, str], None]] = None) -> None:
        self.mode = mode  # "on": load now; "off"/"auto": not in this pass
        self.log = log
        self.printer = printer
        self.programs: Any = None
        self.source: Any = None
        self.notes: list[str] = []
        self.status = ""  # "loaded", or "unavailable: why"
        self.compile_seconds: Optional[float] = None

    def start(self) -> None:
        """Begin compiling in the background (bcc/clang take ~2 s) while the run sets up."""
        if self.mode != "on":
            return
        from tracer.system.ebpf_loader import Programs

        self.programs = Programs(self.printer).start()

    def open(self, stack: contextlib.ExitStack) -> Any:
        """The event source, opened in the calling thread's (target) namespace, or None."""
        if self.programs is None:
            return None
        from tracer.system.ebpf_loader import EbpfSource, EbpfUnavailable

        try:
            loaded = self.programs.wait()
        except EbpfUnavailable as e:
            return self._unavailable(str(e))
        self.compile_seconds = loaded.compile_seconds
        try:
            self.source = EbpfSource(loaded)
        except Exception as e:  # the ring buffer or a map refused: same degraded run
            loaded.bpf.close()
            return self._unavailable(f"{type(e).__name__}: {e}")
        stack.callback(self.source.close)
        self.status = "loaded"
        if loaded.hooks_note:
            self.notes.append(loaded.hooks_note)
        return self.source

    def _unavailable(self, why: str) -> None:
        self.status = f"unavailable: {why}"
        self.notes.append(f"eBPF probes not loaded: {why}; the run used the netfilter sources only")
        self.log.warning("ebpf unavailable", reason=why)
        return None

    def watch(self, spec: PacketSpec) -> None:
        if self.source is not None:
            self.source.watch(spec)

    def raw(self) -> tuple[bytes, ...]:
        return tuple(self.source.raw) if self.source is not None else ()

    def names(self) -> Optional[dict[str, object]]:
        return self.source.names_json() if self.source is not None else None
