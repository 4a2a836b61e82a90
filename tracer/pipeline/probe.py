"""One probe run as a pipeline of small steps: decide, instrument, send, wait, undo, explain.

Sans-io in the manner of mitmproxy's layers: each step is a generator that yields the commands it
needs (tracer/plan/commands.py: read this, make that change and journal its undo, send, wait) and
receives their results; it never touches the system itself. tracer/pipeline/driver.py carries the commands
out in the target namespace; the unit tests answer them from a script, so the sequence, the
simulated-ingress fallback and the waiting rules are tested without root.

    pipeline: snapshot -> address -> packets -> Begin -> injection (port, or fallback to local)
              -> instrument -> exchange per probe -> Finish (undo all, also when interrupted)
              -> verify cleanup -> analyse -> outcome.build_report

    with --ebpf on (tracer/plan/ebpf_commands.py): StartEbpf first (the programs load beside the rest),
    OpenEbpf before the trace table, WatchEbpf before each Send, CollectEbpf after Finish.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from typing import TYPE_CHECKING, Optional

from tracer.pipeline import analysis, appsteps
from tracer import correlate
from tracer.diagnose import kernverdict
from tracer.plan import kernsteps, modes, stateful
from tracer.plan.commands import (
    Begin,
    BuildPackets,
    Captured,
    ClientSaw,
    Change,
    Checkpoint,
    Conntrack,
    Finish,
    Finished,
    Generation,
    ListAddresses,
    Neighbour,
    Notice,
    ProbesSent,
    StatefulFacts,
    ListBaseChains,
    OpenInjector,
    OpenKernelSources,
    OpenPort,
    OpenRemote,
    Polled,
    ReadCounters,
    ReadSysctl,
    RemoteRoute,
    Reset,
    RouteBack,
    RunArgv,
    SaveLegacy,
    Send,
    Steps,
    TakeSnapshot,
    Wait,
)
from tracer.plan.ebpf_commands import CollectEbpf, EbpfOutcome, OpenEbpf, StartEbpf, WatchEbpf
from tracer.errors import UsageError
from tracer.model import (
    Action,
    EventKind,
    IPAddress,
    Mode,
    PacketSpec,
    ProbeRequest,
    Proto,
    TraceEvent,
)
from tracer.report.outcome import ProbeReport
from tracer.ruleset.snapshot import Snapshot
from tracer.plan import plan
from tracer.plan import verify
from tracer.plan.records import ForgetProbes, RunCommand, nft_undo
from tracer.pipeline.state import Armed, Exchange, Sending, Target  # noqa: F401  (re-exported)
from tracer.pipeline.probe_specs import (  # noqa: F401  (issue 19: no module over 400 lines)
    _seen_as, answered, build_specs, dropped, learned, pick_address)

if TYPE_CHECKING:
    from tracer.inject.ingress import Route
    from tracer.plan.narrow import Narrowed

# After a reply (or a drop) the rest of the trace is already queued: the kernel notifies
# synchronously while the packet is processed: a short drain (none once both ended: `answered`).
DRAIN = 0.03
# A REJECT sends its reply right after the drop event; give it this long to arrive.
REJECT_GRACE = 0.25


# --- the run --------------------------------------------------------------------------------------
def probe(req: ProbeRequest, run_id: str, pid: int, rng: random.Random, full_snapshot: bool = False,
          extra: tuple["Narrowed", ...] = ()) -> Steps[ProbeReport]:
    """The whole run, step by step."""
    if req.ebpf == "on":
        yield StartEbpf(req.print_bpf)  # bcc and the kernel take a while: beside the rest of the set-up
    full: Optional[Snapshot] = (yield TakeSnapshot()) if full_snapshot else None
    yield Checkpoint("snapshot")
    target = yield from address(req)
    if req.mode is Mode.INGRESS:
        target = yield from next_hop_answers(target)
    sending = yield from packets(req, run_id, pid, rng, target, req.mode)
    # Kernel-log work only when it can tell something: legacy rules (seen only through TRACE in
    # the kernel log) or --log. x_tables has no per-chain listing nor a generation, so its tables
    # are saved whole now and again after the run.
    legacy_saved: dict[str, str] = full.legacy_text if full else (yield SaveLegacy())
    yield Begin()
    try:
        if sending.mode is Mode.INGRESS:
            sending = yield from open_port(req, run_id, pid, rng, sending)
        found, warned = yield from stateful_matches(req, sending, legacy_saved)
        if warned:
            sending = dataclasses.replace(sending, caveats=sending.caveats + (warned,))
        if sending.mode is Mode.INGRESS and sending.target.silent_hop is not None:
            hop, how = sending.target.silent_hop, "ARP" if sending.target.silent_hop.version == 4 else "neighbour solicitation"
            sending = dataclasses.replace(sending, caveats=sending.caveats + (
                f"no host answers {how} for {hop} on {sending.via}: the reply was given a temporary neighbour "
                "entry (removed after the run) so that it could be caught; a real client there would get no "
                "answer until one does",))
        armed = yield from instrument(req, run_id, sending, legacy_saved, extra, found)
        exchanges = []
        for spec, data in zip(sending.specs, sending.datas):
            exchanges.append((yield from exchange(req, sending, armed, spec, data)))
        app, more = (yield from appsteps.ftp_session(req, sending, armed, exchange)) if req.app else (None, [])
        exchanges += more
    finally:
        finished: Finished = yield Finish()
    if sending.mode is Mode.FROM_SSH:
        sending = learned(sending, exchanges)
    ebpf: EbpfOutcome = (yield CollectEbpf()) if req.ebpf == "on" else EbpfOutcome()
    after = yield Generation()
    armed = dataclasses.replace(armed, generations=armed.generations + (after,))
    return (yield from analysis.analyse(req, run_id, full, legacy_saved, sending, armed, tuple(exchanges), finished,
                                        ebpf, app))


def address(req: ProbeRequest) -> Steps[Target]:
    """The probe's addresses. Local and from-netns open their injector here: the sending
    namespace is entered once, for the socket and the source address it would use."""
    if req.mode is Mode.INGRESS:
        return (yield from ingress_target(req))
    if req.mode is Mode.FROM_SSH:
        assert req.from_ssh is not None
        client_addrs = yield OpenRemote(req.from_ssh, req.timeout)
        dst = yield from destination(req, sender=client_addrs)
        return Target(req.src or (yield RemoteRoute(dst)), dst)
    dst = yield from destination(req)
    if req.mode is Mode.FROM_NETNS:
        text = yield ListAddresses()
        if req.src is not None:
            modes.check_source(req.src, text, "from-netns")
        yield from for_the_target(dst, text)
        assert req.from_netns is not None
        route = yield RouteBack(dst, None, req.from_netns)
        dev = route.dev if route is not None and route.kind == "unicast" else None
        hop = (route.gateway or dst) if route is not None and dev is not None else None
        answered = (yield Neighbour(hop, dev, req.from_netns)) if hop is not None and dev is not None else None
        modes.check_link(req.from_netns, dst, dev, hop, answered, text)
    found = yield OpenInjector(req.from_netns, None if req.src else dst)
    return Target(req.src or found, dst)


def for_the_target(dst: IPAddress, target_json: str) -> Steps[None]:
    """A probe from outside is for one of the target's addresses, or one it forwards."""
    if dst in modes.own_addresses(target_json):
        return
    key = "net.ipv4.ip_forward" if dst.version == 4 else "net.ipv6.conf.all.forwarding"
    modes.check_destination(dst, target_json, (yield ReadSysctl(key)) == "1")


def ingress_target(req: ProbeRequest) -> Steps[Target]:
    """Source, destination, the interface it arrives on and the route back, of a simulated ingress."""
    from tracer.inject import ingress

    version = req.dst.version if req.dst else (req.src.version if req.src else 6 if req.ipv6 else 4)
    src = req.src or ingress.default_source(version)
    # Checked before the route back, which would say "none" for each of them.
    text = yield ListAddresses()
    if req.src is not None:
        modes.check_source(req.src, text, "ingress")
    if req.dst is not None:
        yield from for_the_target(req.dst, text)
    if req.via is not None or req.dst is not None:
        dst = yield from destination(req, req.via)
        back = yield RouteBack(src, dst if req.dst is None else req.dst)
        return _checked(Target(src, dst, req.via or _arrives_on(back), back))
    if pick_address(text, version) is None:  # -6 on a host without global IPv6
        raise UsageError(f"the target namespace has no global IPv{version} address to probe", "give the address with --dst")
    back = yield RouteBack(src, None)
    via = _arrives_on(back)
    if via is None:
        return _checked(Target(src, src, None, back))
    # Without --dst: an address of the interface it arrives on, as a client there would use; the
    # route back is then asked again from that address (source-based policy routing).
    dst = yield from destination(req, via)
    return Target(src, dst, via, (yield RouteBack(src, dst)) or back)


def next_hop_answers(target: Target) -> Steps[Target]:
    """Simulated ingress: does a host answer for the next hop of the route back? Asked before
    anything is changed (the neighbour entry, else one ARP request / neighbour solicitation)."""
    back = target.back
    if target.via is None or back is None or back.kind != "unicast" or back.dev != target.via:
        return target  # the reply leaves by another way: no neighbour of via's is needed
    hop = back.gateway or target.src
    answered = yield Neighbour(hop, target.via)
    return target if answered is not None else dataclasses.replace(target, silent_hop=hop)


def neighbour_entry(run_id: str, hop: IPAddress, dev: str) -> Change:
    """A permanent neighbour entry for the reply, journaled: its MAC is locally administered and
    carries the run id (the reply is caught at the interface's egress before it is sent)."""
    mac = "02:00:" + ":".join(run_id[i:i + 2] for i in range(0, 8, 2))
    undo = RunCommand(f"neighbour {hop} dev {dev} (temporary, for the reply)", ("ip", "neigh", "del", str(hop), "dev", dev),
                      gone=("No such file or directory", "Cannot find device"))
    return Change(undo, RunArgv(("ip", "neigh", "replace", str(hop), "lladdr", mac, "dev", dev, "nud", "permanent")),
                  atomic=True)


def _arrives_on(back: Optional["Route"]) -> Optional[str]:
    return back.dev if back is not None and back.kind == "unicast" and back.dev != "lo" else None


def _checked(target: Target) -> Target:
    if target.via is None:
        raise UsageError(f"the target namespace has no route back to {target.src}, so no interface it would arrive on",
                         "name the interface with --via (e.g. --via eth0), or add the route")
    return target


def destination(req: ProbeRequest, via: Optional[str] = None, sender: str = "") -> Steps[IPAddress]:
    if req.dst is not None:
        return req.dst
    version = 6 if req.ipv6 or (req.src is not None and req.src.version == 6) else 4
    text = yield ListAddresses()
    if req.mode is Mode.FROM_NETNS:
        sender = yield ListAddresses(req.from_netns)
    # --from-netns: the target's address on a subnet the sender shares, not the first (docker0)
    addr = (pick_address(text, version, via) if via else None) or modes.reachable_dst(text, sender, version) \
        or pick_address(text, version)
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
    modes.check_addresses(target.src, target.dst, (yield ListAddresses()), mode is Mode.INGRESS)
    specs = tuple(build_specs(req, target.src, target.dst, rng))
    app_specs = appsteps.data_specs(req, specs, rng)  # --app ftp: traced too, their ports learnt later
    # Below every chain of the ruleset on each hook, and on each device's ingress.
    tplan = plan.trace_plan(run_id, list(specs + app_specs), pid, plan.floors((yield ListBaseChains())))
    datas = yield BuildPackets(specs)  # built before anything is changed: bad input fails here
    return Sending(mode, target, specs, tuple(datas), tplan, app_specs=app_specs)


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


EXTRA_IN = "prove-fix-rules-in"  # the checkpoint after --prove-fix's narrowed rules went in


def stateful_matches(req: ProbeRequest, sending: Sending,
                     legacy_saved: dict[str, str]) -> Steps[tuple[stateful.Found, Optional[str]]]:
    """The stateful matches the probes may use up; before a real client's address goes through
    them (--src given, or the sender's own with --local / --from-netns), say what it uses up."""
    facts = yield StatefulFacts()
    found = stateful.Found(facts.recent, tuple(stateful.dynamic_sets(facts.sets)),
                           stateful.spent([facts.sets, *legacy_saved.values()], facts.spent))
    real = req.src is not None or sending.mode is not Mode.INGRESS
    text = stateful.warning(found, str(sending.specs[0].src)) if real else None
    if text:
        text += f" (--count {req.count}: each probe does)" if req.count > 1 else ""
        yield Notice(text)
    return found, text


def instrument(req: ProbeRequest, run_id: str, sending: Sending, legacy_saved: dict[str, str],
               extra: tuple["Narrowed", ...] = (), found: Optional[stateful.Found] = None) -> Steps[Armed]:
    """fwtrace's trace table, and the kernel-log rules and switches when the run needs them; with
    --prove-fix, the narrowed fix rules (tracer/pipeline/provefix.py) after the table, so they are traced."""
    tplan = sending.tplan
    # The cleanup proof lists what the run may touch first; with --log its listing also says
    # which chains nf_tables really holds (a --log rule into a missing one would create it). The
    # tables --prove-fix's rules go into are listed in full too.
    hop = sending.target.silent_hop if sending.mode is Mode.INGRESS else None
    neighbours = ((str(hop), sending.via or ""),) if hop is not None else ()
    addr = str(sending.specs[0].src)
    restorable = (addr, found.recent, found.dynsets) if found is not None and (found.recent or found.dynsets) else None
    start = yield from verify.before(tplan.table, sending.specs[0].nfproto if req.log else None, legacy_saved,
                                     tuple(x.table for x in extra if x.table is not None), neighbours, restorable)
    if restorable is not None:  # journaled before the first probe is sent: what it leaves is taken back
        keep = tuple(k for k in start.state if k.startswith(("xt_recent ", "element ")))
        yield Change(ForgetProbes(addr, restorable[1], restorable[2], keep), ProbesSent())
    if hop is not None and sending.via is not None:
        yield neighbour_entry(run_id, hop, sending.via)
    kplan = yield from kernsteps.kernel_plan(run_id, sending.specs, req.log, legacy_saved, start.nft_chains)
    if kplan is not None:
        yield OpenKernelSources(kplan)  # before any rule of the plan exists: nothing it logs is missed
    if req.ebpf == "on":
        yield OpenEbpf()  # after the injection port exists: its interface names are known
    before = yield Generation()
    yield Change(nft_undo(tplan.undo, f"table inet {tplan.table}"), RunArgv(("nft", "-f", "-"), tplan.batch),
                atomic=True)
    added = yield Generation()
    tcp_loose = yield ReadSysctl("net.netfilter.nf_conntrack_tcp_loose")
    armed = Armed(kplan, (before, added), frozenset(), tcp_loose, proof=start)
    # The fix rules go in before the kernel-log rules: their positions (`-I INPUT 7`) count the
    # user's rules only, as the fix was written.
    for x in extra:
        # One iptables or nft command is one transaction: refused, it changed nothing, and its undo
        # (the same rule with -D) would be refused as well and keep the journal for ever.
        yield Change(x.undo, RunArgv(x.argv), atomic=True)
    if extra:
        yield Checkpoint(EXTRA_IN)
    extra_commits = sum(x.nft_commits for x in extra)  # each one's add and delete
    armed = dataclasses.replace(armed, own_commits=extra_commits)
    if kplan is not None:
        own, notes, commits = yield from kernsteps.kernel_setup(run_id, kplan)
        armed = dataclasses.replace(armed, own=own, notes=notes, own_commits=commits + extra_commits)
    return armed


class Waiter:
    """The waiting rules of one probe: until its timeout, or shortly after the answer is known
    (DRAIN after a reply, REJECT_GRACE after a drop for the REJECT's reply to arrive)."""

    def __init__(self, spec: PacketSpec, roles: plan.Roles, deadline: float, early: bool = False) -> None:
        self.spec, self.roles, self.early = spec, roles, early  # early: only the trace has events to come
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
            done = self.early and answered(self.events, self.spec, self.roles)  # nothing more to come
            self.settle = min(self.settle or self.deadline, polled.at + (0 if done else DRAIN))
        elif self.settle is None and dropped(self.events, self.spec, self.roles):
            self.settle = polled.at + REJECT_GRACE


def exchange(req: ProbeRequest, sending: Sending, armed: Armed, spec: PacketSpec, data: bytes) -> Steps[Exchange]:
    """Send one probe; wait for its reply and trace (or the timeout)."""
    roles = plan.roles(sending.tplan)
    before = kernverdict.parse_counters((yield ReadCounters()) or {})
    if req.ebpf == "on":
        yield WatchEbpf(spec)
    sent = yield Send(spec, data)
    waiter = Waiter(spec, roles, sent + req.timeout, armed.kplan is None and req.ebpf != "on" and sending.mode is not Mode.FROM_SSH)
    while True:
        polled = yield Wait(waiter.until, replies=waiter.reply is None)
        if polled is None:
            break
        waiter.feed(polled)
    after = kernverdict.parse_counters((yield ReadCounters()) or {})
    moved = kernverdict.deltas(before, after) if before and after else None
    events = tuple(correlate.without_handles(waiter.events, armed.own))
    conntrack = None
    if armed.kplan is not None or (spec.proto is Proto.TCP and "S" not in spec.flags):
        conntrack = yield Conntrack(spec)  # now, while the flow's entry is fresh
    reply = waiter.reply
    client = (yield ClientSaw(spec)) if sending.mode is Mode.FROM_SSH else None
    if client is not None:
        spec = _seen_as(spec, events, roles)
    if sending.mode is Mode.INGRESS and correlate.reply_kind(spec, list(events), reply.headers if reply else None,
                                                             roles) == "syn-ack":
        yield Reset(spec)
    return Exchange(spec, events, reply, conntrack, moved, client)
