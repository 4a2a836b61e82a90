"""Simulated ingress, carried out: build the injection port, attach the tc programs, send, capture.

`tracer.inject.ingress` decides (pure); this module makes the changes through `Run.change`, so every
one of them is journaled before it is made and taken back at the end or by `fwtrace cleanup`.
Everything here runs in the target namespace (the calling thread is already in it).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tracer import system
from tracer.errors import UsageError
from tracer.inject import bpfasm, ingress
from tracer.system.raw import ETH_P_ALL, Injector
from tracer.system.tcbpf import (
    IngressUnavailable,
    attach_filter,
    load_sched_cls,
    tcx_attach,
    tcx_count,
)
from tracer.model import IPAddress, PacketSpec, Proto
from tracer.plan.records import RemoveClsact, RunCommand

Change = Callable[..., Any]  # driver.Run.change(undo, apply, atomic=False): journals the undo in the run's namespace


# Seconds another run's simulated ingress may keep us waiting. A run holds the lock for its
# whole exchange: well under a second here, but tens of seconds on a slow or loaded machine
# (a stock kernel under software emulation runs ~20x slower; 5 s failed there). The lock dies
# with its holder, so a long wait only ever waits for a live run.
LOCK_WAIT = 60.0


def lock_namespace() -> int:
    """Take the calling thread's namespace for one simulated ingress at a time; returns the fd.

    Two runs at once would each see the other's clsact qdisc and filter at the front of eth0,
    and one's undo could remove the other's reply catcher. The lock is a flock on the namespace
    itself (its nsfs inode, the same by whatever name or pid it is reached): no lock file to
    leave behind, and it dies with the process, SIGKILL included.
    """
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise IngressUnavailable(f"another fwtrace run kept simulating ingress in this namespace for {LOCK_WAIT:.0f} s") from None
            time.sleep(0.01)


def route_to(addr: IPAddress, local: Optional[IPAddress] = None) -> Optional[ingress.Route]:
    """The route the target namespace would send a reply to addr by (None: none at all).

    Asked `from` the local address the reply comes from when known, so source-based policy
    routing (`ip rule from ...`) is taken into account; iproute2 refuses a non-local `from`,
    and then the plain lookup is the best answer there is.
    """
    if local is not None:
        done = system.run(["ip", "-j", "route", "get", str(addr), "from", str(local)], check=False)
        if done.returncode == 0:
            return ingress.parse_route_get(done.stdout)
    done = system.run(["ip", "-j", "route", "get", str(addr)], check=False)
    return ingress.parse_route_get(done.stdout) if done.returncode == 0 else None


def rp_filter(dev: str) -> tuple[Optional[int], Optional[int]]:
    """(net.ipv4.conf.all.rp_filter, net.ipv4.conf.DEV.rp_filter) of the calling thread's netns."""
    def get(key: str) -> Optional[int]:
        v = system.sysctl_get(key)
        return int(v) if v is not None and v.lstrip("-").isdigit() else None

    return get("net.ipv4.conf.all.rp_filter"), get(f"net.ipv4.conf.{dev}.rp_filter")


@dataclass(frozen=True)
class Egress:
    """An interface a reply could leave by, and how fwtrace's reply catcher goes on it."""

    link: ingress.Link
    l2: int  # bytes of link header before the IP header
    tcx: bool = False  # tcx programs are there: attach ours through tcx, in front of them
    add_clsact: bool = False  # classic: no clsact qdisc yet, fwtrace adds (and removes) one
    pref: int = ingress.PREF_WANTED  # classic: the filter preference, before every other filter


@dataclass(frozen=True)
class Plan:
    """Where the probe enters and which interfaces its replies could leave by."""

    via: ingress.Link
    egress: tuple[Egress, ...]
    tc_before: str = ""  # tc's view of those interfaces before the run: compared after it

    @property
    def devices(self) -> list[str]:
        return [e.link.name for e in self.egress]


def plan_port(via: str, back: Optional[ingress.Route]) -> Plan:
    """Check the interfaces (read-only); IngressUnavailable when tc cannot be used safely there."""
    links = ingress.parse_links(system.run(["ip", "-j", "link", "show"]).stdout)
    link = links.get(via)
    if link is None:
        raise UsageError(f"no interface {via} in the target namespace", "see `ip link` there, or drop --via")
    if link.mac is None:
        raise IngressUnavailable(f"{via} is not an Ethernet interface ({link.link_type}): its receive path cannot be fed from a veth")
    if not link.up:
        raise UsageError(f"{via} is down: nothing can arrive on it", "bring it up, or choose another with --via")
    names = [via] + ([back.dev] if back is not None and back.dev and back.dev not in (via, "lo") else [])
    egress = []
    seen = []
    for name in names:
        out = links.get(name)
        if out is None:
            continue
        l2 = ingress.link_header_len(out)
        if l2 is None:
            raise IngressUnavailable(f"replies would leave by {name} ({out.link_type}), whose frames fwtrace cannot match")
        qdiscs = system.run(["tc", "-j", "qdisc", "show", "dev", name]).stdout
        filters = system.run(["tc", "-j", "filter", "show", "dev", name, "egress"], check=False).stdout
        seen.append(_tc_text(name, qdiscs, filters))
        catcher = ingress.choose_catcher(name, ingress.parse_tc_state(qdiscs, filters), tcx_count(out.ifindex, "egress"))
        if catcher.how == "none":
            raise IngressUnavailable(catcher.reason)
        egress.append(Egress(out, l2, tcx=catcher.how == "tcx", add_clsact=catcher.add_clsact, pref=catcher.pref))
    return Plan(link, tuple(egress), "".join(seen))


def _tc_text(name: str, qdiscs: str, filters: str) -> str:
    return f"{name} qdisc {qdiscs.strip()}\n{name} egress {filters.strip()}\n"


def leftovers(plan: Plan, run_id: str) -> list[str]:
    """What of the port is still there after the undos (for the report's cleanup line)."""
    left = []
    inj, _ = ingress.port_names(run_id)
    try:
        socket.if_nametoindex(inj)
        left.append(f"injection port {inj} still present")
    except OSError:
        pass
    after = "".join(_tc_text(name, system.run(["tc", "-j", "qdisc", "show", "dev", name], check=False).stdout,
                             system.run(["tc", "-j", "filter", "show", "dev", name, "egress"], check=False).stdout)
                    for name in plan.devices)
    if after != plan.tc_before:
        left.append(f"tc qdiscs/egress filters of {', '.join(plan.devices)} differ from before the run")
    return left


class IngressPort(Injector):
    """The run's end of the injection veth: frames written here enter `via`'s receive path, and
    the probe's replies, redirected here by the egress programs, are read here."""

    def __init__(self, ifname: str, via_mac: bytes, links: list[int]) -> None:  # not Injector's IP sockets
        self.links = links  # tcx link fds: closing them detaches the programs
        ifindex = socket.if_nametoindex(ifname)
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: sends only
        self.tx.bind((ifname, 0))
        self.recv = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.recv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.recv.bind((ifname, ETH_P_ALL))
        self.ifindex = ifindex
        self.src_mac = self.tx.getsockname()[4][:6]
        self.via_mac = via_mac

    def send(self, spec: PacketSpec, data: bytes) -> float:
        self.tx.send(ingress.frame(self.via_mac, self.src_mac, data))
        return time.monotonic()

    def close(self) -> None:
        for s in (self.tx, self.recv):
            s.close()
        _close_all(self.links)


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def open_port(change: Change, netns: Optional[str], run_id: str, specs: list[PacketSpec], plan: Plan,
              log: Any, print_bpf: Optional[Callable[[str, str], None]] = None) -> IngressPort:
    """Make the injection port and attach the programs, each change journaled first."""
    inj, peer = ingress.port_names(run_id)
    change(RunCommand(f"veth {inj} (injection port)", ingress.undo_port(inj), gone=ingress.GONE),
           lambda: _make_veth(inj, peer))
    inj_index, peer_index = socket.if_nametoindex(inj), socket.if_nametoindex(peer)
    via = plan.via
    assert via.mac is not None
    links: list[int] = []
    try:
        for e in plan.egress:
            name = e.link.name
            prog = ingress.reply_program(specs, inj_index, e.l2)
            if e.tcx:
                _show(log, print_bpf, f"reply catcher, tcx egress of {name} (first)", prog)
                links.append(_tcx(e.link.ifindex, prog, f"fwtrace_r{run_id}"))
                log.info("change", what=f"tcx egress program on {name} (detached when fwtrace exits)", netns=netns)
                continue
            _show(log, print_bpf, f"reply catcher, tc egress of {name} (pref {e.pref})", prog)
            if e.add_clsact:
                change(RemoveClsact(name),
                       lambda name=name: system.run(["tc", "qdisc", "add", "dev", name, "clsact"]), atomic=True)
            # NLM_F_EXCL: if the preference was taken meanwhile, the request fails and changes nothing.
            change(RunCommand(f"tc egress filter pref {e.pref} on {name}",
                              ingress.undo_filter(name, "egress", e.pref), gone=ingress.GONE),
                   lambda e=e, prog=prog: _attach(e.link.ifindex, "egress", e.pref, prog, f"fwtrace_r{run_id}"),
                   atomic=True)
    except BaseException:
        _close_all(links)
        raise
    prog = ingress.inject_program(via.ifindex, via.mac)
    _show(log, print_bpf, f"injector, tc ingress of {peer} -> {via.name}", prog)
    # The qdisc and filter on our own veth go with it: the veth's undo above covers them.
    try:
        system.run(["tc", "qdisc", "add", "dev", peer, "clsact"])
        _attach(peer_index, "ingress", ingress.PREF_WANTED, prog, f"fwtrace_i{run_id}")
        return IngressPort(inj, via.mac, links)
    except BaseException:
        _close_all(links)
        raise


def _show(log: Any, print_bpf: Optional[Callable[[str, str], None]], title: str, prog: list[bpfasm.Insn]) -> None:
    listing = bpfasm.disassemble(prog)
    log.debug("bpf program", what=title, insns=len(prog), listing=listing)
    if print_bpf is not None:
        print_bpf(title, listing)


def _make_veth(inj: str, peer: str) -> None:
    system.run(["ip", "link", "add", inj, "type", "veth", "peer", "name", peer])
    for dev in (inj, peer):
        # No IPv6 on the port: its own router solicitations or MLD reports must never be sent
        # (and the peer's program would drop them anyway). The setting dies with the device.
        if system.sysctl_get(f"net.ipv6.conf.{dev}.disable_ipv6") is not None:
            system.sysctl_set(f"net.ipv6.conf.{dev}.disable_ipv6", "1")
    system.run(["ip", "-batch", "-"], input=f"link set {inj} up\nlink set {peer} up\n")


def _tcx(ifindex: int, prog: list[bpfasm.Insn], name: str) -> int:
    fd = load_sched_cls(prog, name)
    try:
        return tcx_attach(ifindex, "egress", fd)
    finally:
        os.close(fd)  # the link holds its own reference to the program


def _attach(ifindex: int, direction: str, pref: int, prog: list[bpfasm.Insn], name: str) -> None:
    fd = load_sched_cls(prog, name)
    try:
        attach_filter(ifindex, direction, pref, fd, name)
    finally:
        os.close(fd)  # the filter holds its own reference to the program


def rst_for_synack(spec: PacketSpec) -> tuple[PacketSpec, int]:
    """The RST (and its sequence number) a real client's stack sends when a SYN-ACK answers.

    Without it the server's request socket retransmits the SYN-ACK for a minute, after
    fwtrace's reply catcher is gone: toward the real address. The SYN-ACK acknowledged the
    probe's sequence number plus one; IPv4 id / flow label 0 keeps it out of the probe's trace.
    """
    from tracer.system.raw import tcp_seq

    return PacketSpec(Proto.TCP, spec.src, spec.dst, spec.sport, spec.dport, "R", 0), (tcp_seq(spec) + 1) & 0xFFFFFFFF
