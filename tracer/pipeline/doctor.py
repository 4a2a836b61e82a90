"""`fwtrace doctor`: what this machine supports, and what fwtrace will therefore do.

`gather()` is the thin system layer (reads files, asks the tools, optionally loads the eBPF
programs to prove they work); `render()` and `verdict()` are pure, over the frozen `Facts`.
The same facts (without the load) go into every evidence bundle.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Facts:
    kernel: str
    root: bool
    nft: Optional[str]  # `nft --version`, None when missing
    iptables: Optional[str]  # `iptables -V`: "(nf_tables)" or "(legacy)"
    nftables_works: bool  # `nft list tables` succeeded here
    nf_log: dict[str, str]  # net.netfilter.nf_log.<pf> -> bound logger ("NONE" when none)
    nf_log_all_netns: Optional[str]
    btf: Optional[int]  # size of /sys/kernel/btf/vmlinux, None when absent
    tracefs: Optional[str]  # where tracefs is mounted, None when not
    tracepoints: dict[str, bool]  # the tracepoints the eBPF programs use
    drop_reasons: int  # names the kernel lists for skb:kfree_skb
    kprobes: bool
    fentry: str  # "available", "refused (...)", "absent", "untried"
    bcc: Optional[str]  # bcc version, None when not importable
    headers: str  # headers.find() detail
    headers_kind: str  # "matching", "debian", "none"
    netdev_hooks: bool  # nf_tables netdev family (ingress/egress chains)
    ebpf_load: Optional[str] = None  # "loaded in 1.6 s" / "failed: why" / None when not tried
    hook_verdicts: str = ""  # the nf_hook_slow program: "kprobe", "fentry" or why not
    notes: tuple[str, ...] = field(default_factory=tuple)
    nft_tables: tuple[str, ...] = ()  # `nft list tables` here: "ip filter", "inet fw", ...
    legacy_tables: tuple[str, ...] = ()  # x_tables (iptables-legacy) tables: "ip filter", "ip6 raw"


def verdict(f: Facts) -> bool:
    """Probing works: root, nft, and nf_tables answering (nftrace needs nothing more)."""
    return f.root and f.nft is not None and f.nftables_works


def plan(f: Facts) -> list[str]:
    """What fwtrace will do on this machine, given the facts (pure)."""
    out = []
    if verdict(f):
        out.append("probe: trace the probe packets with nftrace (nfnetlink), per namespace")
    else:
        out.append("probe: NOT possible here (needs root, the nft tool and nf_tables)")
    log = "bound" if any(v != "NONE" for v in f.nf_log.values()) else "unbound: fwtrace binds nf_log_ipv4/6 for a run"
    out.append(f"--log kmsg: LOG lines through nf_log ({log})")
    ebpf_ok = f.bcc is not None and f.btf is not None and f.headers_kind != "none" and f.tracepoints.get("skb/kfree_skb")
    if f.ebpf_load is not None and f.ebpf_load.startswith("failed"):
        ebpf_ok = False
    if ebpf_ok:
        out.append(f"--ebpf: drop reasons ({f.drop_reasons} names from this kernel), the stack's RST/ICMP, socket "
                   "states; auto (default) loads them when a first pass leaves a fate unexplained")
    else:
        missing = [n for n, ok in (("bcc", f.bcc), ("BTF", f.btf), ("kernel headers", f.headers_kind != "none"),
                                   ("skb:kfree_skb", f.tracepoints.get("skb/kfree_skb"))) if not ok]
        out.append("--ebpf: unavailable" + (f" (missing: {', '.join(missing)})" if missing else f" ({f.ebpf_load})")
                   + "; runs use the netfilter sources only")
    out.append("netfilter hook verdicts (nf_hook_slow): " + (f.hook_verdicts or _hook_plan(f)))
    return out


def _hook_plan(f: Facts) -> str:
    if f.kprobes:
        return "through kprobe/kretprobe"
    if f.fentry == "available":
        return "through fentry/fexit"
    return f"not traced (kprobes absent, fentry {f.fentry})"


def backends(f: Facts) -> str:
    """Which firewalls hold tables here (iptables-nft tables are nf_tables tables)."""
    parts = []
    if f.nft_tables:
        parts.append(f"nf_tables ({', '.join(f.nft_tables)})")
    if f.legacy_tables:
        parts.append(f"iptables-legacy ({', '.join(f.legacy_tables)})")
    return "; ".join(parts) or "none (no tables)"


def render(f: Facts) -> str:
    yes = {True: "yes", False: "no"}
    rows = [
        ("kernel", f.kernel),
        ("root", yes[f.root]),
        ("nft", f.nft or "missing"),
        ("iptables", f.iptables or "missing"),
        ("nf_tables", "works" if f.nftables_works else "does not answer"),
        ("backends in use", backends(f)),
        ("nftrace", "per namespace over nfnetlink" if f.nftables_works else "unavailable"),
        ("nf_log binding", ", ".join(f"{k}={v}" for k, v in sorted(f.nf_log.items())) or "unknown"),
        ("nf_log_all_netns", f.nf_log_all_netns or "absent"),
        ("netdev hooks", yes[f.netdev_hooks]),
        ("BTF", f"/sys/kernel/btf/vmlinux ({f.btf} bytes)" if f.btf else "absent"),
        ("tracefs", f.tracefs or "not mounted (fwtrace mounts it when it loads eBPF)"),
        ("tracepoints", ", ".join(f"{k}{'' if v else ' (absent)'}" for k, v in f.tracepoints.items()) or "unknown"),
        ("drop reasons", f"{f.drop_reasons} names (skb:kfree_skb format)" if f.drop_reasons else "unknown"),
        ("kprobes", "available" if f.kprobes else "absent (CONFIG_KPROBES not set)"),
        ("fentry", f.fentry),
        ("bcc", f.bcc or "not importable (Debian: python3-bpfcc)"),
        ("kernel headers", f.headers),
        ("eBPF programs", f.ebpf_load or "not loaded (fwtrace doctor --no-load)"),
    ]
    out = ["fwtrace doctor: what this machine supports", ""]
    out += [f"  {k:<17} {v}" for k, v in rows]
    out += ["", "so fwtrace will:"] + [f"  {line}" for line in plan(f)]
    out += [f"note: {n}" for n in f.notes]
    out.append("")
    out.append("probing works" if verdict(f) else "probing does NOT work here")
    return "\n".join(out) + "\n"


def to_json(f: Facts) -> dict[str, Any]:
    d = asdict(f)
    d["notes"] = list(f.notes)
    d["plan"] = plan(f)
    d["probing_works"] = verdict(f)
    return d


def dumps(f: Facts) -> str:
    return json.dumps(to_json(f), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# The system side


def gather(load: bool = True) -> Facts:
    from tracer import system
    from tracer.system import ebpf_headers as headers, ebpf_loader as loader
    from tracer.collect import ebpf_reasons as reasons

    def out(argv: list[str]) -> Optional[str]:
        if shutil.which(argv[0]) is None:
            return None
        try:
            p = system.run(argv, check=False)
        except Exception:
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    nft = out(["nft", "--version"])
    tfs = loader.tracefs(mount=False)
    formats = loader.tracepoint_formats(tfs) if tfs else {}
    tps = {tp: tp in formats for tp in loader.render.TRACEPOINTS} if tfs else {}
    found = headers.find()
    btf = os.path.getsize(loader.BTF_PATH) if os.path.exists(loader.BTF_PATH) else None
    facts = dict(
        kernel=platform.release(), root=os.geteuid() == 0, nft=nft, iptables=out(["iptables", "-V"]),
        nftables_works=nft is not None and out(["nft", "list", "tables"]) is not None,
        nf_log={pf: system.sysctl_get(f"net.netfilter.nf_log.{pf}") or "absent" for pf in ("2", "10")},
        nf_log_all_netns=system.sysctl_get("net.netfilter.nf_log_all_netns"), btf=btf, tracefs=tfs,
        tracepoints=tps, drop_reasons=len(reasons.from_format(formats.get("skb/kfree_skb", ""))),
        kprobes=loader.kprobes_available(), fentry=_fentry(), bcc=_bcc_version(), headers=found.detail,
        headers_kind=found.kind, netdev_hooks=_kallsyms_has("nft_do_chain_netdev"),
        nft_tables=tuple(line.split(None, 1)[1] for line in (out(["nft", "list", "tables"]) or "").splitlines()
                         if line.startswith("table ")),
        legacy_tables=tuple(f"{fam} {name}" for fam, proc in (("ip", "ip_tables_names"), ("ip6", "ip6_tables_names"))
                            for name in system.proc_net(proc).split()),
    )
    if load and facts["bcc"] is not None:
        facts.update(_try_load())
    return Facts(**facts)  # type: ignore[arg-type]


def _try_load() -> dict[str, Any]:
    """Compile and load the programs for real, then unload them: the proof that --ebpf works."""
    from tracer.system import ebpf_loader as loader

    try:
        loaded = loader.build()
    except loader.EbpfUnavailable as e:
        return {"ebpf_load": f"failed: {e}"}
    try:
        how = "kprobe" if loader.kprobes_available() else "fentry"
        hooks = f"traced through {how}" if loaded.hooks is not None else "not traced: " + loaded.hooks_note.split(": ", 1)[-1]
        fentry = {}
        if not loader.kprobes_available() and loaded.hooks is None:
            fentry = {"fentry": "refused: " + loaded.hooks_note.rsplit("(", 1)[-1].rstrip(")")}
        how_long = f"{loaded.compile_seconds:.2f} s" + (" (compiled before: from the cache)" if loaded.cached
                                                          else " (compiled now)")
        return {"ebpf_load": f"compiled and loaded in {how_long}", "hook_verdicts": hooks, **fentry}
    finally:
        loaded.bpf.close()
        if loaded.hooks is not None:
            loaded.hooks.cleanup()


def _fentry() -> str:
    from tracer.system.bpfsys import fentry_support

    return fentry_support()


def _bcc_version() -> Optional[str]:
    from tracer.system.bpfsys import bcc_version

    return bcc_version()


def _kallsyms_has(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(" " + name) for line in f)
    except OSError:
        return False
