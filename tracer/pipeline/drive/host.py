"""Handlers that read facts of the host around the ruleset: addresses, routes, sysctls, kernel
modules, listening sockets, conntrack entries."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Optional

from tracer.plan import commands as c
from tracer import system
from tracer.errors import EnvironmentProblem
from tracer.model import Listener, PacketSpec, Proto
from tracer.collect.sockets import parse_proc_net

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def list_addresses(run: RunState, cmd: c.ListAddresses) -> str:
    """Read once per namespace until the run's first change (Begin): the pipeline asks for the
    target's addresses at each of its checks before it (three times on a probe from a namespace),
    and until then nothing of this run can have changed them. Never kept past the run."""
    seen: Optional[dict[Optional[str], str]] = getattr(run, "addresses_seen", None)
    if run.journal is None and seen is not None and cmd.netns in seen:
        return seen[cmd.netns]
    with system.netns(cmd.netns):
        text = system.run(["ip", "-j", "addr", "show"]).stdout
    if run.journal is None and seen is not None:
        seen[cmd.netns] = text
    return text


def route_back(run: RunState, cmd: c.RouteBack) -> Any:
    from tracer.system import simulate

    with system.netns(cmd.netns):
        return simulate.route_to(cmd.to, cmd.local)


def neighbour(run: RunState, cmd: c.Neighbour) -> Optional[str]:
    from tracer.system import neigh

    with system.netns(cmd.netns):
        return neigh.resolve(cmd.addr, cmd.dev)


def read_sysctl(run: RunState, cmd: c.ReadSysctl) -> Optional[str]:
    with system.netns(system.HOME_NETNS if cmd.home else None):
        return system.sysctl_get(cmd.key)


def load_module(run: RunState, cmd: c.LoadModule) -> bool:
    return system.load_module(cmd.name, cmd.keep)


def in_initial_netns(run: RunState, cmd: c.InInitialNetns) -> bool:
    return system.in_initial_netns()


def rp_filter(run: RunState, cmd: c.RpFilter) -> bool:
    from tracer.inject import ingress
    from tracer.system import simulate

    rp_all, rp_dev = simulate.rp_filter(cmd.via)
    return ingress.rp_filter_drops(rp_all, rp_dev, cmd.via, cmd.back)


def listeners(run: RunState, cmd: c.Listeners) -> tuple[Listener, ...]:
    out: list[Listener] = []
    for name, proto in (("tcp", Proto.TCP), ("tcp6", Proto.TCP), ("udp", Proto.UDP), ("udp6", Proto.UDP)):
        out.extend(parse_proc_net(system.proc_net(name), proto))
    wanted = {s.inode for s in out if s.port in cmd.ports and s.inode}
    if not wanted:
        return tuple(out)
    owners = socket_owners(wanted)
    return tuple(dataclasses.replace(s, process=owners[s.inode]) if s.inode in owners else s for s in out)


def socket_owners(inodes: set[int]) -> dict[int, str]:
    """inode -> "pid N (comm)" for the processes holding those sockets (the first found each),
    from /proc/PID/fd: what `ss -p` reads too."""
    import os

    from tracer.collect.sockets import socket_inode

    found: dict[int, str] = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                ino = socket_inode(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if ino in inodes and ino not in found:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                found[ino] = f"pid {pid} ({comm})"
        if len(found) == len(inodes):
            break
    return found


def queue_bindings(run: RunState, cmd: Any) -> dict[int, str]:
    """tracer.plan.target_commands.QueueBindings: the bound queues and the processes holding their
    netlink sockets (portid -> inode in /proc/net/netlink -> /proc/PID/fd)."""
    from tracer.diagnose import targets

    bound = targets.parse_queue_bindings(system.proc_net("netfilter/nfnetlink_queue"))
    inodes = targets.netlink_inodes(system.proc_net("netlink"), set(bound.values()))
    owners = socket_owners(set(inodes.values())) if inodes else {}
    return {q: owners.get(inodes.get(pid, -1), f"netlink portid {pid}") for q, pid in bound.items()}


def conntrack(run: RunState, cmd: c.Conntrack) -> str:
    return conntrack_entry(cmd.spec)


def conntrack_entry(spec: PacketSpec) -> str:
    """The probe flow's conntrack entry in the calling thread's namespace, or "none"."""
    from tracer.collect import conntrack as ct

    argv = ["conntrack", "-L", "-f", "ipv6" if spec.family == 6 else "ipv4",
            "-p", spec.proto.value if spec.proto is not Proto.ICMP else ("icmp" if spec.family == 4 else "icmpv6"),
            "-s", str(spec.src)]
    if spec.proto is not Proto.ICMP:
        argv += ["--sport", str(spec.sport)]
    try:
        out = system.run(argv, check=False).stdout
    except EnvironmentProblem:
        return "unknown (conntrack tool not installed)"
    for e in ct.parse_conntrack(out):
        if e.orig.src == spec.src and e.orig.sport == spec.sport:
            return e.describe()
    return "none"


def stateful_facts(run: Run, cmd: c.StatefulFacts) -> c.StatefulTexts:
    from tracer.system.listing import RECENT_DIR

    recent = tuple(sorted(os.listdir(RECENT_DIR))) if os.path.isdir(RECENT_DIR) else ()
    from tracer.plan import stateful
    from tracer.system import nlrules

    try:  # `list meters` fetches every rule (~1 s per 50k); without a dynamic set it lists none
        lists = ("sets", "meters") if nlrules.dynamic_set_exists() else ("sets",)
    except OSError:
        lists = ("sets", "meters")
    sets = "".join(system.run(["nft", "-t", "list", what], check=False).stdout for what in lists)
    try:  # the rules' expressions over netlink, not the whole ruleset rendered (0.3 s per 20k rules)
        spent = tuple(sorted(nlrules.expressions_used(stateful.SPENT_EXPRESSIONS)))
    except OSError:  # netlink refused: nft's listing says the same, slower
        spent = stateful.spent([system.run(["nft", "-t", "list", "ruleset"], check=False).stdout])
    return c.StatefulTexts(recent, sets, spent)


def notice(run: Run, cmd: c.Notice) -> None:
    run.log.warning(cmd.text)


def read_counters(run: Run, cmd: c.ReadCounters) -> dict[str, str]:
    from tracer.diagnose.kernverdict import COUNTER_FILES

    out = {}
    for name in COUNTER_FILES:
        text = system.proc_net(name)
        if text:
            out[name] = text
    return out


def kernel_checks(run: Run, cmd: c.KernelChecks) -> Any:
    from tracer.system import hostfacts

    values = {k: system.sysctl_get(k) for k in cmd.keys}
    return (values,) + hostfacts.route_lookups(cmd.src, cmd.dst, cmd.iif)


def connect_check(run: Run, cmd: c.ConnectCheck) -> str:
    from tracer.system import hostfacts

    return hostfacts.connect_check(cmd.netns, cmd.dst, cmd.dport, cmd.wait)


def process_facts(run: Run, cmd: c.ProcessFacts) -> tuple[tuple[str, ...], Optional[bool], str, str]:
    """The process's names, whether libwrap is mapped into it, and the TCP wrappers files as its
    own root sees them (a container's /etc, not the host's)."""
    import os

    base = f"/proc/{cmd.pid}"
    names: list[str] = []
    try:
        with open(f"{base}/comm") as f:
            names.append(f.read().strip())
        with open(f"{base}/cmdline", "rb") as fb:
            argv0 = fb.read().split(b"\0")[0].decode(errors="replace")
        if argv0:
            names.append(os.path.basename(argv0))
    except OSError:
        pass
    try:
        with open(f"{base}/maps") as f:
            libwrap: Optional[bool] = any("libwrap.so" in line for line in f)
    except OSError:
        libwrap = None

    def read(name: str) -> str:
        try:
            with open(f"{base}/root/etc/{name}") as f:
                return f.read()
        except OSError:
            return ""

    return tuple(dict.fromkeys(names)), libwrap, read("hosts.allow"), read("hosts.deny")


AUDIT_LOG = "/var/log/audit/audit.log"


def selinux_facts(run: Run, cmd: c.SelinuxFacts) -> tuple[Optional[str], str, str, str]:
    """Where /sys/fs/selinux/enforce reads 1 (SELinux enforcing; it is one for the machine, not per
    network namespace): `semanage port -l`, and the AVC denials from `ausearch -m AVC` or the end
    of the audit log. Elsewhere nothing is run and nothing read but that file."""
    try:
        with open("/sys/fs/selinux/enforce") as f:
            enforce: Optional[str] = f.read().strip()
    except OSError:
        return None, "", "", ""
    if enforce != "1":
        return enforce, "", "", ""

    def out(argv: list[str]) -> str:
        try:
            return system.run(argv, check=False).stdout
        except EnvironmentProblem:  # the tool is not installed
            return ""

    labels = out(["semanage", "port", "-l"])
    avc = out(["ausearch", "-m", "AVC", "-ts", "today"])
    if avc.strip() and "avc:" in avc:
        return enforce, labels, avc, "ausearch -m AVC -ts today"
    try:
        with open(AUDIT_LOG, "rb") as fb:
            fb.seek(0, os.SEEK_END)
            fb.seek(max(0, fb.tell() - (1 << 20)))  # the last MiB: recent denials
            tail = fb.read().decode(errors="replace")
        return enforce, labels, "\n".join(x for x in tail.splitlines() if "avc:" in x), AUDIT_LOG
    except OSError:
        return enforce, labels, "", ""
