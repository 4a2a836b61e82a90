"""The system side of the eBPF probes: facts about the kernel, compiling and loading through bcc,
reading the ring buffer as an event source (poll/fileno/close, like tracer.collect's sockets).

bcc is imported here only, lazily: `--help`, the pure modules and `--ebpf off` never need it.
bcc compiles with clang at start-up (~2 s): `Programs` does it in a background thread while the
run snapshots and instruments; `wait()` joins it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .. import system
from ..model import PacketSpec, TraceEvent
from . import decode, headers, keys, reasons, render
from .btf import BTF, BTFError

BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"


class EbpfUnavailable(Exception):
    """The kernel or the machine cannot run the programs: the run goes on without them."""


def tracefs(mount: bool = True) -> Optional[str]:
    """tracefs with its events, mounted at TRACEFS when it is not (it is a view of the kernel's
    tracing state, shared by every user: left mounted, like `perf` and bcc leave it)."""
    for path in (TRACEFS, "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(path, "events")):
            return path
    if mount and os.path.isdir(TRACEFS):
        try:
            system.run(["mount", "-t", "tracefs", "nodev", TRACEFS])
        except Exception:
            return None
        return TRACEFS if os.path.isdir(os.path.join(TRACEFS, "events")) else None
    return None


def tracepoint_formats(tfs: str) -> dict[str, str]:
    out = {}
    for tp in render.TRACEPOINTS:
        try:
            with open(os.path.join(tfs, "events", tp, "format")) as f:
                out[tp] = f.read()
        except OSError:
            pass
    return out


def kernel_btf() -> BTF:
    try:
        with open(BTF_PATH, "rb") as f:
            return BTF(f.read())
    except (OSError, BTFError) as e:
        raise EbpfUnavailable(f"no usable kernel BTF at {BTF_PATH} ({e}): the sk_buff offsets are unknown") from e


def kprobes_available() -> bool:
    return os.path.isdir(KPROBE_PMU)


@dataclass
class Loaded:
    bpf: Any
    source: str
    reasons: dict[int, str]
    compile_seconds: float
    hooks: Any = None  # the nf_hook_slow program when kprobes or fentry allowed it
    hooks_note: str = ""  # why the hook verdicts are not traced


@dataclass
class Programs:
    """Compile and load the programs in a background thread; `wait()` for the result."""

    print_source: Optional[Callable[[str, str], None]] = None
    hooks: bool = True
    _result: list[Any] = field(default_factory=list)

    def start(self) -> "Programs":
        self._thread = threading.Thread(target=self._build, name="fwtrace-ebpf-compile", daemon=True)
        self._thread.start()
        return self

    def _build(self) -> None:
        try:
            self._result.append(build(self.print_source, self.hooks))
        except BaseException as e:  # handed to wait(), in the run's thread
            self._result.append(e)

    def wait(self) -> Loaded:
        self._thread.join()
        res = self._result[0]
        if isinstance(res, BaseException):
            if isinstance(res, EbpfUnavailable):
                raise res
            raise EbpfUnavailable(f"{type(res).__name__}: {res}") from res
        return res


def build(print_source: Optional[Callable[[str, str], None]] = None, hooks: bool = True) -> Loaded:
    tfs = tracefs()
    if tfs is None:
        raise EbpfUnavailable("tracefs is not available (mount -t tracefs nodev /sys/kernel/tracing failed)")
    formats = tracepoint_formats(tfs)
    table = reasons.from_format(formats.get("skb/kfree_skb", ""))
    btf = kernel_btf()
    offs = render.offsets(btf)
    table = table or reasons.from_btf(btf)
    try:
        src = render.render_drops(render.template("drops.c"), offs, formats)
    except render.RenderError as e:
        raise EbpfUnavailable(str(e)) from e
    if print_source is not None:
        print_source("eBPF program probes/drops.c as rendered for this kernel", src)
    found = headers.find()
    path = headers.prepare(found)
    if found.kind != "matching":
        os.environ["BCC_KERNEL_SOURCE"] = path  # read by libbcc when it compiles
    try:
        from bcc import BPF
    except ImportError as e:
        raise EbpfUnavailable("bcc is not importable (Debian package python3-bpfcc, for /usr/bin/python3)") from e
    t0 = time.monotonic()
    try:
        bpf = BPF(text=src.encode())
    except Exception as e:
        raise EbpfUnavailable(f"bcc could not compile or load probes/drops.c: {e}") from e
    loaded = Loaded(bpf, src, table, time.monotonic() - t0)
    if hooks:
        loaded.hooks, loaded.hooks_note = _load_hooks(BPF, offs, print_source)
    return loaded


def _load_hooks(BPF: Any, offs: render.Offsets, print_source: Optional[Callable[[str, str], None]]) -> tuple[Any, str]:
    """The nf_hook_slow program through kprobes, else fentry; (None, why) when neither works."""
    attach = "kprobe" if kprobes_available() else "fentry" if BPF.support_kfunc() else None
    if attach is None:
        return None, ("netfilter hook verdicts not traced: this kernel has neither kprobes (CONFIG_KPROBES) "
                      "nor fentry (BPF trampolines)")
    try:
        src = render.render_hooks(render.template("nfhook.c"), offs, attach)
    except render.RenderError as e:
        return None, f"netfilter hook verdicts not traced: {e}"
    if print_source is not None:
        print_source(f"eBPF program probes/nfhook.c ({attach}) as rendered for this kernel", src)
    refused = _refusal_path(attach)
    if os.path.exists(refused):  # tried since boot: the kernel said no (and the try costs a compile)
        with open(refused) as f:
            return None, f.read()
    try:
        return BPF(text=src.encode()), ""
    except Exception as e:
        why = "EPERM" if "privilege" in str(e) or "not permitted" in str(e) else str(e)
        note = f"netfilter hook verdicts not traced: the kernel refused {attach} on nf_hook_slow ({why})"
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(refused), exist_ok=True)
            with open(refused, "w") as f:
                f.write(note)
        return None, note


def _refusal_path(attach: str) -> str:
    """A marker that `attach` was refused since this boot (kernel features do not change before a reboot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown"
    return os.path.join(headers.CACHE, f"refused-{attach}-{boot}")


class EbpfSource:
    """The programs' ring buffer as an event source of the run (opened in the target namespace,
    whose interface names it uses)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.raw: list[bytes] = []
        self.lost = False
        self._pending: list[bytes] = []
        self._seq = 0
        bpf = loaded.bpf
        self._ring = bpf[b"events"]
        self._ring.open_ring_buffer(self._on_record)
        self._hook_pending: list[bytes] = []
        if loaded.hooks is not None:
            loaded.hooks[b"hook_events"].open_ring_buffer(
                lambda ctx, data, size: self._hook_pending.append(ctypes.string_at(data, size)) or 0)
        self._stacks = bpf[b"stacks"]
        self._syms: dict[int, str] = {}
        self._frames: dict[int, tuple[str, ...]] = {}
        self.names = decode.Names(loaded.reasons, system.interface_names(), self._symbol, self._stack)
        self.netns = os.stat("/proc/thread-self/ns/net").st_ino  # the target's (opened there)

    def _on_record(self, ctx: Any, data: Any, size: int) -> int:
        self._pending.append(ctypes.string_at(data, size))
        return 0

    def _symbol(self, addr: int) -> str:
        if addr not in self._syms:
            from bcc import BPF

            self._syms[addr] = BPF.ksym(addr).decode(errors="replace")
        return self._syms[addr]

    def _stack(self, stack_id: int) -> tuple[str, ...]:
        if stack_id not in self._frames:
            try:
                self._frames[stack_id] = tuple(self._symbol(a) for a in self._stacks.walk(stack_id))
            except Exception:  # the id was reused or evicted meanwhile
                self._frames[stack_id] = ()
        return self._frames[stack_id]

    def names_json(self) -> dict[str, object]:
        """What the records' numbers meant here (symbols, stacks, interfaces, reasons): with the
        raw records, enough to decode them again offline (evidence bundles, golden tests)."""
        return {"symbols": {str(a): s for a, s in self._syms.items()},
                "stacks": {str(i): list(f) for i, f in self._frames.items()},
                "ifnames": {str(i): n for i, n in self.names.ifnames.items()},
                "reasons": {str(v): n for v, n in self.loaded.reasons.items()},
                "netns": self.netns}

    def watch(self, spec: PacketSpec) -> None:
        """Report the packets of `spec` (and its replies) from now on."""
        for bpf in (self.loaded.bpf, self.loaded.hooks):
            if bpf is None:
                continue
            table = bpf[b"probes"]
            for key, role in keys.keys(spec):
                table[table.Key.from_buffer_copy(key)] = table.Leaf(role)

    def fileno(self) -> int:
        return int(self._ring.map_fd)  # a BPF ring buffer's fd polls readable when records wait

    def poll(self, until: float, on_event: Optional[Callable[[TraceEvent], None]] = None) -> list[TraceEvent]:
        """Read what arrives until the monotonic deadline `until` (returns at once when past it)."""
        events: list[TraceEvent] = []
        while True:
            self.loaded.bpf.ring_buffer_consume()
            if self.loaded.hooks is not None:
                self.loaded.hooks.ring_buffer_consume()
                for data in self._hook_pending:
                    events.append(decode.hook_event(data, self._seq))
                    self._seq += 1
                self._hook_pending.clear()
            for data in self._pending:
                self.raw.append(data)
                rec = decode.decode(data)
                if not decode.wanted(rec, self.netns, self._symbol):
                    continue
                ev = decode.to_event(rec, self.names, self._seq)
                self._seq += 1
                events.append(ev)
                if on_event is not None:
                    on_event(ev)
            self._pending.clear()
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.fileno()], [], [], left)[0]:
                return events

    def close(self) -> None:
        for bpf in (self.loaded.bpf, self.loaded.hooks):
            if bpf is not None:
                bpf.cleanup()
