"""One probe run as a pipeline of small steps: decide, instrument, send, wait, undo, explain.

Sans-io in the manner of mitmproxy's layers: each step is a generator that yields the commands it
needs (tracer/commands.py: read this, make that change and journal its undo, send, wait) and
receives their results; it never touches the system itself. tracer/driver.py carries the commands
out in the target namespace; the unit tests answer them from a script, so the sequence, the
simulated-ingress fallback and the waiting rules are tested without root.

    pipeline: snapshot -> address -> packets -> Begin -> injection (port, or fallback to local)
              -> instrument -> exchange per probe -> Finish (undo all, also when interrupted)
              -> verify cleanup -> analyse -> outcome.build_report
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional, TypeVar

from tracer import compare, correlate, diagnose
from tracer.commands import (
    AcquireShared,
    Apply,
    Begin,
    BuildPackets,
    Captured,
    Checkpoint,
    Command,
    Conntrack,
    Describe,
    Finish,
    Finished,
    Generation,
    InInitialNetns,
    IptSave,
    LegacyHasRaw,
    ListAddresses,
    ListChains,
    Listeners,
    MetChains,
    OpenInjector,
    OpenKernelSources,
    OpenPort,
    Polled,
    ReadSysctl,
    Reset,
    RouteBack,
    RpFilter,
    RunArgv,
    SaveLegacy,
    Send,
    SetSysctl,
    TableGone,
    TakeSnapshot,
    Wait,
)
from tracer.errors import UsageError
from tracer.model import EventKind, IPAddress, Mode, PacketSpec, ProbeRequest, Proto, Ruleset, TraceEvent
from tracer.outcome import Evidence, ProbeReport, build_report
from tracer.snapshot import Snapshot, legacy_listing, with_legacy
from tracer.trace import plan
from tracer.undo.journal import Undo, nft_undo, shared_undo, sysctl_undo

if TYPE_CHECKING:
    from tracer.inject.ingress import Route
    from tracer.trace.kernplan import KernPlan

T = TypeVar("T")
Steps = Generator[Command, Any, T]  # yields commands, is sent their results, returns T

# After a reply (or a drop) the rest of the trace is already queued: the kernel notifies
# synchronously while the packet is processed, so a short drain is enough.
DRAIN = 0.03
# A REJECT sends its reply right after the drop event; give it this long to arrive.
REJECT_GRACE = 0.25


@dataclass(frozen=True)
class Target:
    """Who talks to whom: the probe's addresses and, for simulated ingress, where it arrives."""

    src: IPAddress
    dst: IPAddress
    via: Optional[str] = None  # simulated ingress: the interface it arrives on
    back: Optional["Route"] = None  # the route from the target back to src


@dataclass(frozen=True)
class Sending:
    """The probes as they will be sent, and how."""

    mode: Mode
    target: Target
    specs: tuple[PacketSpec, ...]
    datas: tuple[bytes, ...]
    tplan: plan.TracePlan
    caveats: tuple[str, ...] = ()
    fallback: Optional[str] = None  # "eth0: why simulated ingress was not possible"

    @property
    def via(self) -> Optional[str]:
        return self.target.via if self.mode is Mode.INGRESS else None


@dataclass(frozen=True)
class Armed:
    """The instrumentation in place: what the analysis needs to know about it."""

    kplan: Optional["KernPlan"]
    generations: tuple[int, ...]  # before and after fwtrace's table was added
    own: frozenset[tuple[str, str, int]]  # (family, table, handle) of fwtrace's LOG/NFLOG rules in nf_tables
    tcp_loose: Optional[str]
    notes: tuple[str, ...] = ()
    own_commits: int = 0  # nft transactions of iptables-nft's --log rules, in and out


@dataclass(frozen=True)
class Exchange:
    """One probe sent, what the trace saw of it, and its reply."""

    spec: PacketSpec
    events: tuple[TraceEvent, ...]
    reply: Optional[Captured]
    conntrack: Optional[str] = None


# --- driving ------------------------------------------------------------------------------------
def drive(steps: Steps[T], execute: Callable[[Command], Any]) -> T:
    """Run a pipeline: carry out each command, send back its result, or throw its exception in
    (so the pipeline's `finally` can still ask for its cleanup). Returns the pipeline's value."""
    try:
        cmd = next(steps)
        while True:
            try:
                result = execute(cmd)
            except BaseException as e:
                cmd = steps.throw(e)
            else:
                cmd = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


# --- the run --------------------------------------------------------------------------------------
def probe(req: ProbeRequest, run_id: str, pid: int, rng: random.Random, full_snapshot: bool = False) -> Steps[ProbeReport]:
    """The whole run, step by step."""
    full: Optional[Snapshot] = (yield TakeSnapshot()) if full_snapshot else None
    yield Checkpoint("snapshot")
    target = yield from address(req)
    sending = yield from packets(req, run_id, pid, rng, target, req.mode)
    # Kernel-log work only when it can tell something: legacy rules (seen only through TRACE in
    # the kernel log) or --log. x_tables has no per-chain listing nor a generation, so its tables
    # are saved whole now and again after the run.
    legacy_saved: dict[str, str] = full.legacy_text if full else (yield SaveLegacy())
    yield Begin()
    try:
        if sending.mode is Mode.INGRESS:
            sending = yield from open_port(req, run_id, pid, rng, sending)
        armed = yield from instrument(req, run_id, sending, legacy_saved)
        exchanges = []
        for spec, data in zip(sending.specs, sending.datas):
            exchanges.append((yield from exchange(req, sending, armed, spec, data)))
    finally:
        finished: Finished = yield Finish()
    after = yield Generation()
    armed = dataclasses.replace(armed, generations=armed.generations + (after,))
    return (yield from analyse(req, run_id, full, legacy_saved, sending, armed, tuple(exchanges), finished))


def address(req: ProbeRequest) -> Steps[Target]:
    """The probe's addresses. Local and from-netns open their injector here: the sending
    namespace is entered once, for the socket and the source address it would use."""
    if req.mode is Mode.INGRESS:
        return (yield from ingress_target(req))
    dst = yield from destination(req)
    found = yield OpenInjector(req.from_netns, None if req.src else dst)
    return Target(req.src or found, dst)


def ingress_target(req: ProbeRequest) -> Steps[Target]:
    """Source, destination, the interface it arrives on and the route back, of a simulated ingress."""
    from tracer.inject import ingress

    version = req.dst.version if req.dst else (req.src.version if req.src else 6 if req.ipv6 else 4)
    src = req.src or ingress.default_source(version)
    if req.via is not None or req.dst is not None:
        dst = yield from destination(req, req.via)
        back = yield RouteBack(src, dst if req.dst is None else req.dst)
        return _checked(Target(src, dst, req.via or _arrives_on(back), back))
    back = yield RouteBack(src, None)
    via = _arrives_on(back)
    if via is None:
        return _checked(Target(src, src, None, back))
    # Without --dst: an address of the interface it arrives on, as a client there would use; the
    # route back is then asked again from that address (source-based policy routing).
    dst = yield from destination(req, via)
    return Target(src, dst, via, (yield RouteBack(src, dst)) or back)


def _arrives_on(back: Optional["Route"]) -> Optional[str]:
    return back.dev if back is not None and back.kind == "unicast" and back.dev != "lo" else None


def _checked(target: Target) -> Target:
    if target.via is None:
        raise UsageError(f"the target namespace has no route back to {target.src}, so no interface it would arrive on",
                         "name the interface with --via (e.g. --via eth0), or add the route")
    return target


def destination(req: ProbeRequest, via: Optional[str] = None) -> Steps[IPAddress]:
    if req.dst is not None:
        return req.dst
    version = 6 if req.ipv6 or (req.src is not None and req.src.version == 6) else 4
    text = yield ListAddresses()
    addr = (pick_address(text, version, via) if via else None) or pick_address(text, version)
    if addr is None:
        if req.mode is Mode.LOCAL:
            return ipaddress.ip_address("127.0.0.1" if version == 4 else "::1")
        raise UsageError(f"the target namespace has no global IPv{version} address to probe", "give the address with --dst")
    return addr


def packets(req: ProbeRequest, run_id: str, pid: int, rng: random.Random, target: Target, mode: Mode) -> Steps[Sending]:
    """The probe packets and the trace plan that matches exactly them."""
    if target.src.version != target.dst.version:
        raise UsageError(f"--src {target.src} and --dst {target.dst} are of different address families",
                         "give both as IPv4 or both as IPv6")
    specs = tuple(build_specs(req, target.src, target.dst, rng))
    tplan = plan.trace_plan(run_id, list(specs), pid)
    datas = yield BuildPackets(specs)  # built before anything is changed: bad input fails here
    return Sending(mode, target, specs, tuple(datas), tplan)


def open_port(req: ProbeRequest, run_id: str, pid: int, rng: random.Random, sending: Sending) -> Steps[Sending]:
    """The simulated-ingress port, or the fallback to a local probe when it cannot be built."""
    target = sending.target
    assert target.via is not None
    reason = yield OpenPort(sending.specs, target.via, target.back)
    if not reason:
        return sending
    # From a local address: a spoofed source's replies would leave the machine now that nothing
    # catches them.
    src = yield OpenInjector(None, target.dst)
    local = yield from packets(req, run_id, pid, rng, dataclasses.replace(target, src=src), Mode.LOCAL)
    caveat = f"simulated ingress on {target.via} is not possible here ({reason}); the probe was sent locally instead"
    return dataclasses.replace(local, target=dataclasses.replace(local.target, via=None, back=target.back),
                               caveats=(caveat,), fallback=f"{target.via}: {reason}")


def instrument(req: ProbeRequest, run_id: str, sending: Sending, legacy_saved: dict[str, str]) -> Steps[Armed]:
    """fwtrace's trace table, and the kernel-log rules and switches when the run needs them."""
    kplan = yield from kernel_plan(run_id, sending.specs, req.log, legacy_saved)
    if kplan is not None:
        yield OpenKernelSources(kplan)  # before any rule of the plan exists: nothing it logs is missed
    tplan = sending.tplan
    before = yield Generation()
    yield Apply(nft_undo(None, tplan.undo, f"table inet {tplan.table}"), RunArgv(("nft", "-f", "-"), tplan.batch),
                atomic=True)
    added = yield Generation()
    tcp_loose = yield ReadSysctl("net.netfilter.nf_conntrack_tcp_loose")
    armed = Armed(kplan, (before, added), frozenset(), tcp_loose)
    if kplan is not None:
        armed = yield from kernel_setup(run_id, kplan, armed)
    return armed


def kernel_plan(run_id: str, specs: tuple[PacketSpec, ...], log: str, legacy_saved: dict[str, str]) -> Steps[Optional["KernPlan"]]:
    """The kernel-log plan, or None on the default path (no x_tables rules, no --log).

    It needs the chains before the run: the legacy tables from their save, and with --log the
    iptables-nft tables of the probe's family from iptables-nft-save (--log is opt-in; the
    default path lists nothing in full)."""
    if not log and not legacy_saved:
        return None
    from tracer.ruleset import parse_iptables_save
    from tracer.trace import kernplan

    tables = with_legacy(Ruleset(), legacy_saved).tables
    if not log and not tables:
        return None  # only empty x_tables tables (e.g. the raw table an earlier TRACE left)
    if log:
        family = specs[0].nfproto
        saved = yield IptSave(family)
        tables = kernplan.iptables_nft_tables(family, parse_iptables_save(saved)) + tables
    return kernplan.kern_plan(run_id, list(specs), Ruleset(tables), log)


def kernel_setup(run_id: str, kplan: "KernPlan", armed: Armed) -> Steps[Armed]:
    """The kernel log's prerequisites and the legacy TRACE / LOG / NFLOG rules, each journaled;
    then the handles of the LOG rules iptables-nft put into nf_tables, so their trace events are
    not taken for the user's rules."""
    from tracer.trace import kernplan

    notes = list((yield from kmsg_setup(run_id, kplan)) if kplan.kmsg else ())
    for family in kplan.families:
        if (yield LegacyHasRaw(family)) is False and any(c.apply[3:5] == ("raw", "-I") for c in kplan.changes):
            notes.append(f"the legacy TRACE rules instantiated an x_tables raw table ({family}); it stays, "
                         "empty (x_tables cannot unregister a table) and changes no packet")
    commits = 0
    for c in kplan.changes:
        yield Apply(Undo("cmd", c.what, None, c.undo, gone=kernplan.IPT_GONE), RunArgv(tuple(c.apply)))
        if c.apply[0] in kernplan.NFT_IPT_CMD.values():
            commits += 2  # one nft transaction in, one out: the generations count them
    # From their chains only (no full listing).
    nft_points = tuple(sorted({(p.family, p.table, p.chain) for p in kplan.log_points.values() if not p.legacy}))
    own = kernplan.own_handles((yield ListChains(nft_points)), run_id) if nft_points else frozenset()
    return dataclasses.replace(armed, own=own, notes=tuple(notes), own_commits=commits)


def kmsg_setup(run_id: str, kplan: "KernPlan") -> Steps[list[str]]:
    """Make the kernel log print the plan's LOG/TRACE lines; returns notes for the report."""
    from tracer.trace import kernplan

    notes = []
    for family in kplan.families:
        # nf_log sends TRACE and LOG to the logger bound for the family in this namespace;
        # with none bound (NONE) they vanish silently.
        key = kernplan.NF_LOG_SYSCTL[family]
        old = yield ReadSysctl(key)
        if old == "NONE":
            logger = kernplan.NF_LOGGER[family]
            yield Apply(sysctl_undo(None, key, old), SetSysctl(key, logger))
            notes.append(f"bound the {logger} kernel logger ({key}) for the run; restored to NONE after")
    old = yield ReadSysctl(kernplan.LOG_INVALID)
    if old is not None and old != "255":
        yield Apply(sysctl_undo(None, kernplan.LOG_INVALID, old), SetSysctl(kernplan.LOG_INVALID, "255"))
    if (yield InInitialNetns()):
        return notes
    # nf_log_syslog prints nothing for a non-initial namespace unless this GLOBAL switch is on
    # (net/netfilter/nf_log_syslog.c: nf_log_allowed()).
    key = kernplan.ALL_NETNS
    if (yield ReadSysctl(key, home=True)) is None:
        notes.append(f"fwtrace runs outside the initial namespace, so it cannot set {key}: "
                     "the kernel log may show nothing of the target namespace")
        return notes
    # One switch for the whole machine: concurrent runs share it (tracer/undo/shared.py), so one
    # run's cleanup cannot turn it off under another's feet.
    orig = yield Apply(shared_undo(None, key, run_id), AcquireShared(key, "1", run_id))
    if orig is not None and orig != "1":
        notes.append(f"set the global sysctl {key}=1 for the run (the target is a namespace, whose LOG/TRACE lines "
                     f"the kernel log drops otherwise); restored to {orig} after, once no other fwtrace run needs it")
    elif orig is None:
        notes.append(f"the global sysctl {key}=1 was already set by another running fwtrace probe; the last run to "
                     "finish restores it")
    return notes


class Waiter:
    """The waiting rules of one probe: until its timeout, or shortly after the answer is known
    (DRAIN after a reply, REJECT_GRACE after a drop for the REJECT's reply to arrive)."""

    def __init__(self, spec: PacketSpec, roles: plan.Roles, deadline: float) -> None:
        self.spec = spec
        self.roles = roles
        self.deadline = deadline
        self.settle: Optional[float] = None  # once known, stop at this time
        self.events: list[TraceEvent] = []
        self.reply: Optional[Captured] = None

    @property
    def until(self) -> float:
        return min(self.deadline, self.settle) if self.settle is not None else self.deadline

    def feed(self, polled: Polled) -> None:
        self.events.extend(polled.events)
        if self.reply is None:
            self.reply = next((c for c in polled.captures if correlate.is_reply(c.headers, self.spec)), None)
        if self.reply is not None:
            self.settle = min(self.settle or self.deadline, polled.at + DRAIN)
        elif self.settle is None and dropped(self.events, self.spec, self.roles):
            self.settle = polled.at + REJECT_GRACE


def dropped(events: list[TraceEvent], spec: PacketSpec, roles: plan.Roles) -> bool:
    probe_events, _ = correlate.split_events(events, spec, roles)
    return any(e.verdict == "drop" for e in probe_events if not e.table.startswith(plan.TABLE_PREFIX))


def exchange(req: ProbeRequest, sending: Sending, armed: Armed, spec: PacketSpec, data: bytes) -> Steps[Exchange]:
    """Send one probe; wait for its reply and trace (or the timeout)."""
    roles = plan.roles(sending.tplan)
    sent = yield Send(spec, data)
    waiter = Waiter(spec, roles, sent + req.timeout)
    while True:
        polled = yield Wait(waiter.until, replies=waiter.reply is None)
        if polled is None:
            break
        waiter.feed(polled)
    events = tuple(correlate.without_handles(waiter.events, armed.own))
    conntrack = None
    if armed.kplan is not None or (spec.proto is Proto.TCP and "S" not in spec.flags):
        conntrack = yield Conntrack(spec)  # now, while the flow's entry is fresh
    reply = waiter.reply
    if sending.mode is Mode.INGRESS and correlate.reply_kind(spec, list(events), reply.headers if reply else None,
                                                             roles) == "syn-ack":
        yield Reset(spec)
    return Exchange(spec, events, reply, conntrack)


def verify(full: Optional[Snapshot], legacy_saved: dict[str, str], sending: Sending, armed: Armed,
           finished: Finished) -> Steps[tuple[list[str], Optional[tuple[str, ...]], Optional[bool]]]:
    """After the undos, prove the firewall is as before: (what is left over, the full listings'
    diff when there was a full snapshot, whether the legacy tables are unchanged when measured)."""
    # With a full snapshot (evidence bundles) the listings are compared too, counters aside.
    diff = tuple(compare.leftover(full.nft_text, (yield TakeSnapshot()).nft_text)) if full else None
    table = sending.tplan.table
    left = list(finished.errors) + ([] if (yield TableGone(table)) else [f"table inet {table} still present"])
    legacy_unchanged: Optional[bool] = None
    if legacy_saved or (armed.kplan is not None and armed.kplan.legacy_changes):
        before = legacy_listing(with_legacy(Ruleset(), legacy_saved))
        after = legacy_listing(with_legacy(Ruleset(), (yield SaveLegacy())))
        legacy_diff = compare.leftover(before, after)
        legacy_unchanged = not legacy_diff
        left += legacy_diff
    return left, diff, legacy_unchanged


def analyse(req: ProbeRequest, run_id: str, full: Optional[Snapshot], legacy_saved: dict[str, str], sending: Sending,
            armed: Armed, exchanges: tuple[Exchange, ...], finished: Finished) -> Steps[ProbeReport]:
    """Read the chains the probes met, correlate, explain: the report."""
    left, diff, legacy_unchanged = yield from verify(full, legacy_saved, sending, armed, finished)
    # The rules are read now, chain by chain, for the chains the probes met: handles do not
    # change, and the generations prove whether anything else changed meanwhile. Legacy tables
    # come from their save before the run (the kernel log's rule numbers count those).
    met = {(e.family, e.table, e.chain) for x in exchanges for e in x.events
           if not e.table.startswith(plan.TABLE_PREFIX) and not e.legacy and e.kind is not EventKind.CONNTRACK}
    snap: Snapshot = yield MetChains(tuple(sorted(met)), legacy_saved)
    roles = plan.roles(sending.tplan)
    results = []
    for x in exchanges:
        said = (yield Describe(x.reply.data)) if x.reply else ""
        r = correlate.packet_result(x.spec, list(x.events), snap.ruleset, x.reply.headers if x.reply else None, said, roles)
        results.append(dataclasses.replace(r, conntrack=x.conntrack) if x.conntrack is not None else r)
    target, mode, via = sending.target, sending.mode, sending.via
    rp = (yield RpFilter(via, target.back)) if mode is Mode.INGRESS and via is not None and target.dst.version == 4 else False
    tcp_loose = armed.tcp_loose
    ctx = diagnose.Context(snap.ruleset, (yield Listeners()), local=mode is Mode.LOCAL,
                           tcp_loose=int(tcp_loose) if tcp_loose and tcp_loose.isdigit() else None,
                           mode=mode, via=via, src=sending.specs[0].src if sending.specs else None,
                           route_dev=target.back.dev if target.back is not None else None, rp_filter_drops=rp,
                           fallback=sending.fallback)
    kplan = armed.kplan
    evidence = Evidence(
        full.nft_text if full else snap.nft_text, full.ipt_text if full else snap.ipt_text, sending.tplan.batch,
        finished.trace, tuple(x.reply.data if x.reply else b"" for x in exchanges), diff, legacy_saved,
        finished.kmsg, finished.nflog, tuple(sorted(armed.own)), kernplan_json(kplan))
    return build_report(
        req, run_id, results, ctx, leftover=left, generations=armed.generations,
        instrumentation=tuple(sending.tplan.rules) + (tuple(kplan.rules) if kplan is not None else ()),
        lost_events=finished.lost, evidence=evidence, mode=mode, via=via, caveats=sending.caveats,
        notes=armed.notes, own_commits=armed.own_commits, legacy_unchanged=legacy_unchanged)


def kernplan_json(kplan: Optional["KernPlan"]) -> Optional[dict[str, object]]:
    if kplan is None:
        return None
    from tracer.trace import kernplan

    return kernplan.plan_to_json(kplan)


def build_specs(req: ProbeRequest, src: IPAddress, dst: IPAddress, rng: random.Random) -> list[PacketSpec]:
    specs = []
    base = req.sport if req.sport is not None else rng.randrange(33000, 60000)
    for i in range(req.count):
        sport = base if req.sport is not None else base + i
        ident = rng.randrange(1, 0xFFFF if dst.version == 4 else 0xFFFFF)
        dport = req.dport if req.proto is not Proto.ICMP else i + 1  # echo sequence number
        specs.append(PacketSpec(req.proto, src, dst, sport, dport, req.flags, ident))
    return specs


def pick_address(addr_json: str, version: int, ifname: Optional[str] = None) -> Optional[IPAddress]:
    """The first global address of an up interface (of `ifname` if given) in `ip -j addr` output."""
    try:
        links = json.loads(addr_json)
    except ValueError:
        return None
    for link in links:
        if "UP" not in link.get("flags", []) or link.get("ifname") == "lo":
            continue
        if ifname is not None and link.get("ifname") != ifname:
            continue
        for a in link.get("addr_info", []):
            if a.get("scope") != "global":
                continue
            ip = ipaddress.ip_address(a["local"])
            if ip.version == version:
                return ip
    return None
