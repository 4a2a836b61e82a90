"""Handlers that read facts of the host around the ruleset: addresses, routes, sysctls, kernel
modules, listening sockets, conntrack entries."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from tracer.plan import commands as c
from tracer import system
from tracer.errors import EnvironmentProblem
from tracer.model import Listener, PacketSpec, Proto
from tracer.collect.sockets import parse_proc_net

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def list_addresses(run: RunState, cmd: c.ListAddresses) -> str:
    with system.netns(cmd.netns):
        return system.run(["ip", "-j", "addr", "show"]).stdout


def route_back(run: RunState, cmd: c.RouteBack) -> Any:
    from tracer.system import simulate

    return simulate.route_to(cmd.to, cmd.local)


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
    return tuple(out)


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
