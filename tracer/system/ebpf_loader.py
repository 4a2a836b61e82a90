"""The system side of the eBPF probes: facts about the kernel, compiling and loading through bcc,
reading the ring buffer as an event source (poll/fileno/close, like tracer.collect's sockets).

bcc is imported here only, lazily: `--help`, the pure modules and `--ebpf off` never need it.
bcc compiles with clang at start-up (~2 s): `Programs` does it in a background thread while the
run snapshots and instruments; `wait()` joins it.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from tracer import system
from tracer.system import bpfsys, ebpf_headers as headers, ebpf_objcache as objcache
from tracer.collect import ebpf_decode as decode, ebpf_reasons as reasons
from tracer.plan import ebpf_keys as keys, ebpf_programs as render
from tracer.collect.btf import BTF, BTFError
from tracer.model import PacketSpec, TraceEvent

BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
DROPS_MAPS = ("events", "stacks", "probes", "scratch", "watchf", "lost")  # the maps probes/drops.c declares


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


def unavailable() -> Optional[str]:
    """Why the programs cannot load here, from a quick look (no compile), or None: --ebpf auto
    asks before it probes a second time for nothing."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (Debian package python3-bpfcc, for /usr/bin/python3)"
    if not os.path.exists(BTF_PATH):
        return f"no kernel BTF at {BTF_PATH}"
    if headers.find().kind == "none":  # fine if a compiled object was kept before
        cached = os.path.join(headers.CACHE, "bpf")
        if not (os.path.isdir(cached) and os.listdir(cached)):
            return "no kernel headers for bcc to compile with (install linux-headers-amd64)"
    return None


def kprobes_available() -> bool:
    return os.path.isdir(KPROBE_PMU)


@dataclass
class Loaded:
    bpf: Any  # bpfsys.Instance: this run's maps and attached programs
    source: str
    reasons: dict[int, str]
    compile_seconds: float  # render + compile (0 when cached) + load + attach
    cached: bool = False  # the compiled object came from the cache (no clang run)
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
    threading.Thread(target=_warm_symbols, name="fwtrace-ksym", daemon=True).start()
    formats = tracepoint_formats(tfs)
    table = reasons.from_format(formats.get("skb/kfree_skb", ""))
    offs = kernel_offsets()
    if not table:
        table = reasons.from_btf(kernel_btf())
    try:
        src = render.render_drops(render.template("drops.c"), offs, formats)
    except render.RenderError as e:
        raise EbpfUnavailable(str(e)) from e
    if print_source is not None:
        print_source("eBPF program probes/drops.c as rendered for this kernel", src)
    try:
        import bcc
        from bcc import BPF
    except ImportError as e:
        raise EbpfUnavailable("bcc is not importable (Debian package python3-bpfcc, for /usr/bin/python3)") from e
    t0 = time.monotonic()
    path = os.path.join(headers.CACHE, "bpf", objcache.key(src, platform.release(), getattr(bcc, "__version__", "")) + ".json")
    cached = _trusted(path)
    try:
        if cached:
            with open(path) as f:
                obj = objcache.loads(f.read())
        else:
            obj = _compile(BPF, src, path)
        inst = bpfsys.Instance(obj)
    except (Exception, bpfsys.LoadError) as e:
        raise EbpfUnavailable(f"could not compile or load probes/drops.c: {e}") from e
    loaded = Loaded(inst, src, table, time.monotonic() - t0, cached)
    if hooks:
        loaded.hooks, loaded.hooks_note = _load_hooks(BPF, offs, print_source)
    return loaded


def _trusted(path: str) -> bool:
    """A cached object is loaded into the kernel: only when it is root's and nobody else can
    write it or its directory (otherwise it is compiled afresh and the file replaced)."""
    try:
        for p in (path, os.path.dirname(path)):
            st = os.stat(p)
            if st.st_uid != 0 or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


def _compile(BPF: Any, src: str, path: str) -> objcache.Object:
    """Compile with bcc (clang), keep the result in the cache, and let go of bcc's own copy."""
    from bcc.libbcc import lib

    _point_bcc_at_headers()
    bpf = BPF(text=src.encode())
    try:
        mod = bpf.module
        programs = []
        for i in range(lib.bpf_num_functions(mod)):
            name = lib.bpf_function_name(mod, i)
            if name.startswith(b"tracepoint__"):
                programs.append(objcache.Program(name.decode(), bytes(bpf.dump_func(name))))
        # (libbcc has these two, bcc's Python does not declare them: without a restype a size_t
        # would be read as an int, and a char * return as one would crash)
        for fn in (lib.bpf_table_key_size_id, lib.bpf_table_leaf_size_id):
            fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_ulonglong]
        maps = []
        for name in DROPS_MAPS:
            tid = lib.bpf_table_id(mod, name.encode())
            maps.append(objcache.MapShape(name, lib.bpf_table_fd(mod, name.encode()), lib.bpf_table_type_id(mod, tid),
                                          lib.bpf_table_key_size_id(mod, tid), lib.bpf_table_leaf_size_id(mod, tid),
                                          lib.bpf_table_max_entries_id(mod, tid), lib.bpf_table_flags_id(mod, tid)))
        obj = objcache.Object(tuple(programs), tuple(maps), lib.bpf_module_license(mod).decode())
    finally:
        bpf.cleanup()
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w") as f:
        f.write(objcache.dumps(obj))
    os.replace(tmp, path)  # atomic: a concurrent run reads the old state or the whole new one
    return obj


def _point_bcc_at_headers() -> None:
    """Before each BPF(text=...): libbcc reads BCC_KERNEL_SOURCE when it compiles, and without it
    looks only in /lib/modules/RELEASE/build. Every compile needs it, not only the first: when
    drops.c comes from the object cache, nfhook.c is the process's only compile."""
    found = headers.find()
    if found.kind != "matching":
        os.environ["BCC_KERNEL_SOURCE"] = headers.prepare(found)


def _load_hooks(BPF: Any, offs: render.Offsets, print_source: Optional[Callable[[str, str], None]]) -> tuple[Any, str]:
    """The nf_hook_slow program through kprobes, else fentry; (None, why) when neither works."""
    refused = _refusal_path("fentry")
    if not kprobes_available() and os.path.exists(refused):  # tried since boot: the kernel said no
        with open(refused) as f:
            return None, f.read()
    _symbols_ready.wait()  # support_kfunc looks up a symbol: not beside the warm-up (bcc's cache is not thread-safe)
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
        _point_bcc_at_headers()
        return BPF(text=src.encode()), ""
    except Exception as e:
        if "compile" in str(e):  # our side (headers), not the kernel's: not remembered as a refusal
            return None, f"netfilter hook verdicts not traced: could not compile probes/nfhook.c ({e})"
        why = "EPERM" if "privilege" in str(e) or "not permitted" in str(e) else str(e)
        note = f"netfilter hook verdicts not traced: the kernel refused {attach} on nf_hook_slow ({why})"
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(refused), exist_ok=True)
            with open(refused, "w") as f:
                f.write(note)
        return None, note


_symbols_ready = threading.Event()


def _warm_symbols() -> None:
    """bcc reads /proc/kallsyms on its first symbol lookup (~0.3 s): done beside the load."""
    try:
        from bcc import BPF

        BPF.ksym(0)
    except Exception:
        pass
    finally:
        _symbols_ready.set()


def kernel_offsets() -> render.Offsets:
    """The fields' offsets from BTF, parsed once per boot (the kernel cannot change before a
    reboot) and kept in the cache: parsing 5 MB of BTF takes 0.15-0.5 s."""
    path = os.path.join(headers.CACHE, f"offsets-{platform.release()}-{bpfsys.boot_id()}.json")
    try:
        with open(path) as f:
            return render.Offsets(tuple((str(k), int(v)) for k, v in json.load(f)))
    except (OSError, ValueError):
        pass
    offs = render.offsets(kernel_btf())
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.tmp{os.getpid()}", "w") as f:
            json.dump(list(offs.values), f)
        os.replace(f"{path}.tmp{os.getpid()}", path)
    return offs


_refusal_path = bpfsys.refusal_path  # (the doctor reads the same markers)


class EbpfSource:
    """The programs' ring buffer as an event source of the run (opened in the target namespace,
    whose interface names it uses)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.raw: list[bytes] = []
        self.lost = False
        self._pending: list[bytes] = []
        self._seq = 0
        self._inst = loaded.bpf
        self._inst.open_ring("events", self._pending.append)
        self._hook_pending: list[bytes] = []
        if loaded.hooks is not None:
            loaded.hooks[b"hook_events"].open_ring_buffer(self._on_hook_record)
        self._syms: dict[int, str] = {}
        self._frames: dict[int, tuple[str, ...]] = {}
        self._watched: list[bytes] = []
        self.names = decode.Names(loaded.reasons, system.interface_names(), self._symbol, self._stack)
        self.netns = os.stat("/proc/thread-self/ns/net").st_ino  # the target's (opened there)

    def _on_hook_record(self, ctx: Any, data: Any, size: int) -> int:
        self._hook_pending.append(ctypes.string_at(data, size))
        return 0

    def _symbol(self, addr: int) -> str:
        if addr not in self._syms:
            from bcc import BPF

            _symbols_ready.wait(2.0)

            self._syms[addr] = BPF.ksym(addr).decode(errors="replace")
        return self._syms[addr]

    def _stack(self, stack_id: int) -> tuple[str, ...]:
        if stack_id not in self._frames:
            try:
                self._frames[stack_id] = tuple(self._symbol(a) for a in self._inst.stack("stacks", stack_id))
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
        for key, role in keys.keys(spec):
            self._inst.update("probes", key, bytes([role]))
            self._watched.append(key)
            if self.loaded.hooks is not None:
                table = self.loaded.hooks[b"probes"]
                table[table.Key.from_buffer_copy(key)] = table.Leaf(role)

    def fileno(self) -> int:
        return self._inst.maps["events"]  # a BPF ring buffer's fd polls readable when records wait

    def poll(self, until: float, on_event: Optional[Callable[[TraceEvent], None]] = None) -> list[TraceEvent]:
        """Read what arrives until the monotonic deadline `until` (returns at once when past it)."""
        events: list[TraceEvent] = []
        while True:
            self._inst.consume()
            if self.loaded.hooks is not None:
                self.loaded.hooks.ring_buffer_consume()
                for data in self._hook_pending:
                    events.append(decode.hook_event(data, self._seq))
                    self._seq += 1
                self._hook_pending.clear()
            for data in self._pending:
                self.raw.append(data)
                rec = decode.decode(data)
                if not decode.wanted(rec, self.netns, self._symbol, self._stack):
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
        """Detach and free everything. Each detach waits for the kernel's RCU grace period
        (~70 ms per tracepoint): done in the background, nothing after it depends on it (the
        programs are inert once the run's keys are gone, and the process's end closes their fds)."""
        for key in self._watched:
            with contextlib.suppress(bpfsys.LoadError):
                self._inst.delete("probes", key)
        threading.Thread(target=self._close_now, name="fwtrace-ebpf-close", daemon=True).start()

    def _close_now(self) -> None:
        self._inst.close()
        if self.loaded.hooks is not None:
            self.loaded.hooks.cleanup()
