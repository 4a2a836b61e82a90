"""One probe run: snapshot, instrument, send, collect, clean up, explain.

The pure parts (plan, correlation, diagnosis) decide; this module carries their decisions out in
the right namespaces and undoes every change in its own `try`, whatever happens in between.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

from . import compare, correlate, diagnose, plan, snapshot, system
from .errors import EnvironmentProblem, UsageError
from .journal import Journal, Undo, nft_undo, shared_undo, sysctl_undo
from .model import EventKind, Finding, IPAddress, Listener, PacketResult, PacketSpec, ProbeRequest, Proto, Ruleset, TraceEvent
from .nftrace import Headers
from .sockets import parse_proc_net

if TYPE_CHECKING:
    from . import kernplan

T = TypeVar("T")

# After a reply (or a drop) the rest of the trace is already queued: the kernel notifies
# synchronously while the packet is processed, so a short drain is enough.
DRAIN = 0.03
# A REJECT sends its reply right after the drop event; give it this long to arrive.
REJECT_GRACE = 0.25


@dataclass(frozen=True)
class Evidence:
    """The raw material a report was made from: enough to replay the correlation offline."""

    nft_rules: str  # nft's listing: the whole ruleset before the run, or the chains the probes met
    ipt_rules: dict[str, str]  # "ip"/"ip6" -> iptables-save style text for the same
    batch: str
    trace: bytes  # the nfnetlink datagrams as read, concatenated (each holds whole messages)
    replies: tuple[bytes, ...]  # per probe packet, b"" when nothing came back
    ruleset_diff: Optional[tuple[str, ...]] = None  # full listings before/after compared (bundles only)
    legacy_rules: dict[str, str] = field(default_factory=dict)  # iptables-legacy-save output per family
    kmsg: tuple[bytes, ...] = ()  # /dev/kmsg records read during the run (kernel-log evidence)
    nflog: bytes = b""  # the nfnetlink_log datagrams of the NFLOG rules, concatenated
    own_handles: tuple[tuple[str, str, int], ...] = ()  # nf_tables handles of fwtrace's LOG/NFLOG rules
    kern_plan: Optional[dict[str, object]] = None  # kernplan.plan_to_json of the run's kernel-log plan


@dataclass(frozen=True)
class ProbeReport:
    request: ProbeRequest
    run_id: str
    results: tuple[PacketResult, ...]
    findings: tuple[Finding, ...]
    cleanup_ok: bool
    leftover: tuple[str, ...]
    instrumentation: tuple[str, ...]
    lost_events: bool = False
    conclusions: tuple[str, ...] = ()
    evidence: Optional["Evidence"] = field(default=None, repr=False)
    generations: tuple[int, ...] = ()  # nft ruleset generation before, after adding, after removing
    mode: str = ""  # how the probe was sent in the end: "ingress", "local", "from-netns"
    via: Optional[str] = None  # simulated ingress: the interface it arrived on
    caveats: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the run did beyond its own table (sysctls set for the run, ...)
    # nft transactions fwtrace itself committed between its add and its delete: iptables-nft
    # inserting and deleting the --log rules, one each
    own_commits: int = 0
    legacy_unchanged: Optional[bool] = None  # iptables-legacy tables listed before and after: equal?

    @property
    def ruleset_unchanged(self) -> Optional[bool]:
        """True when the generations show exactly fwtrace's own transactions: its add, its
        --log rules in and out, then its delete of the same table, so the ruleset is the one from
        before. False when other writers committed meanwhile (nothing can then be said), None
        when not measured. (x_tables has no generation: legacy_unchanged compares listings.)"""
        g = self.generations
        if len(g) != 3:
            return None
        return self.cleanup_ok and g[1] == g[0] + 1 and g[2] == g[1] + 1 + self.own_commits

    @property
    def reached(self) -> bool:
        return bool(self.results) and all(diagnose.reached(r, list(self.findings)) for r in self.results)

    def to_json(self) -> dict[str, Any]:
        req = self.request
        return {
            "run_id": self.run_id,
            "target_netns": req.netns,
            "from_netns": req.from_netns,
            "mode": self.mode or req.mode,
            "via": self.via,
            "caveats": list(self.caveats),
            "log": req.log,
            "packets": [r.to_json() for r in self.results],
            "findings": [f.to_json() for f in self.findings],
            "conclusion": " ".join(dict.fromkeys(self.conclusions)),
            "instrumentation": list(self.instrumentation),
            "events_lost": self.lost_events,
            "notes": list(self.notes),
            "cleanup": {"ok": self.cleanup_ok, "leftover": list(self.leftover),
                        "ruleset_unchanged": self.ruleset_unchanged, "generations": list(self.generations),
                        "legacy_unchanged": self.legacy_unchanged},
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def new_run_id() -> str:
    return os.urandom(4).hex()


def pick_address(addr_json: str, version: int, ifname: Optional[str] = None) -> Optional[IPAddress]:
    """The first global address of an up interface (of `ifname` if given) in `ip -j addr` output (pure)."""
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


def listeners() -> tuple[Listener, ...]:
    out: list[Listener] = []
    for name, proto in (("tcp", Proto.TCP), ("tcp6", Proto.TCP), ("udp", Proto.UDP), ("udp6", Proto.UDP)):
        out.extend(parse_proc_net(system.proc_net(name), proto))
    return tuple(out)


def build_specs(req: ProbeRequest, src: IPAddress, dst: IPAddress, rng: random.Random) -> list[PacketSpec]:
    specs = []
    base = req.sport if req.sport is not None else rng.randrange(33000, 60000)
    for i in range(req.count):
        sport = base if req.sport is not None else base + i
        ident = rng.randrange(1, 0xFFFF if dst.version == 4 else 0xFFFFF)
        dport = req.dport if req.proto is not Proto.ICMP else i + 1  # echo sequence number
        specs.append(PacketSpec(req.proto, src, dst, sport, dport, req.flags, ident))
    return specs


def _resolve_dst(req: ProbeRequest, via: Optional[str] = None) -> IPAddress:
    if req.dst is not None:
        return req.dst
    version = 6 if req.ipv6 or (req.src is not None and req.src.version == 6) else 4
    text = system.run(["ip", "-j", "addr", "show"]).stdout
    addr = (pick_address(text, version, via) if via else None) or pick_address(text, version)
    if addr is None:
        if req.mode == "local":
            return ipaddress.ip_address("127.0.0.1" if version == 4 else "::1")
        raise UsageError(
            f"the target namespace has no global IPv{version} address to probe",
            "give the address with --dst",
        )
    return addr


KILL_ENV = "FWTRACE_TEST_KILL_AT"


def checkpoint(phase: str) -> None:
    """Fault injection for the tests: die by SIGKILL at the named phase (no cleanup at all)."""
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Cleanup must not be cut short by a second Ctrl-C: hold INT/TERM/HUP until it is done."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


Exchange = tuple[PacketSpec, list[TraceEvent], Optional[tuple[Headers, bytes]]]  # probe, its events, its reply


@dataclass(frozen=True)
class _Live:
    """What the live phase of a run leaves for the analysis: raw material, nothing decided."""

    full: Optional[snapshot.Snapshot]
    mode: str
    via: Optional[str]
    back: Any  # the route back to the source (simulated ingress)
    caveats: tuple[str, ...]
    fallback: Optional[str]
    specs: tuple[PacketSpec, ...]
    dst: IPAddress
    tplan: plan.TracePlan
    roles: plan.Roles
    kplan: Optional["kernplan.KernPlan"]
    legacy_saved: dict[str, str]
    exchanges: tuple[Exchange, ...]
    conntrack: dict[int, str]
    cleanup_errors: tuple[str, ...]
    generations: tuple[int, ...]
    kmsg_raw: tuple[bytes, ...]
    nflog_raw: bytes
    own: frozenset[tuple[str, str, int]]
    tcp_loose: Optional[str]
    trace: bytes
    trace_lost: bool


class Run:
    """The side effects of one probe run: each change journaled first, all undone at the end."""

    def __init__(self, req: ProbeRequest, log: Any, run_id: Optional[str] = None, log_events: bool = False,
                 full_snapshot: bool = False) -> None:
        self.req = req
        self.full_snapshot = full_snapshot  # list the whole ruleset first (evidence bundles)
        self.log = log
        self.run_id = run_id or new_run_id()
        self.rng = random.Random()
        self.log_events = log_events
        self.journal: Optional[Journal] = None
        self.changes = 0
        self.notes: list[str] = []
        self.nft_log_rules = 0  # --log rules iptables-nft put into nf_tables
        self.port_lock: Optional[int] = None  # simulated ingress: one run per namespace at a time

    def execute(self) -> ProbeReport:
        system.require_root()
        system.require_tools("nft", "ip")
        from .cleanup import warn_stale

        warn_stale(self.log)
        with system.netns(self.req.netns):
            return self._in_target()

    def change(self, undo: Undo, apply: Callable[[], T], atomic: bool = False) -> T:
        """Make one change to the system: journal its undo first, then apply it.

        `atomic`: when apply fails, nothing was changed (one netlink request, one nft batch), so
        the undo must not run: the thing it would remove may be somebody else's, e.g. the clsact
        qdisc another program added between our look and our `tc qdisc add`.
        """
        assert self.journal is not None
        index = self.journal.record(undo)
        self.log.info("change", what=undo.what, netns=undo.netns)
        # INT/TERM/HUP wait until the change is complete: an interrupt raised inside apply()
        # would leave it unknown whether the command (e.g. the nft batch, committed by a child
        # that keeps running) took effect, and an atomic change would be marked undone although
        # its table exists (seen on a slow kernel: Ctrl-C during the first nft change left
        # `table inet fwtrace_<id>` behind). Raised after the block, the change is undone.
        with signals_blocked():
            try:
                result = apply()
            except BaseException:
                if atomic:
                    self.journal.mark(index, "undone")
                raise
        self.changes += 1
        checkpoint(f"instrument-{self.changes}")
        return result

    def _undo_all(self) -> list[str]:
        """Take every journaled change back, newest first, each in its own try."""
        from .cleanup import apply_undo

        errors: list[str] = []
        if self.journal is None:
            return errors
        with signals_blocked():
            for index, undo in self.journal.pending():
                err = apply_undo(undo)
                if err is None:
                    self.journal.mark(index, "undone")
                    self.log.info("undone", what=undo.what, netns=undo.netns)
                else:
                    errors.append(f"{undo.what}: {err}")
                checkpoint("cleanup")
            if not errors:
                self.journal.remove()
        return errors

    def _in_target(self) -> ProbeReport:
        return self._analyse(self._live())

    def _live(self) -> "_Live":
        """Everything that touches the system: instrument, send, collect, undo."""
        req = self.req
        full = snapshot.take() if self.full_snapshot else None
        checkpoint("snapshot")
        mode = req.mode
        via: Optional[str] = None
        back = None
        caveats: list[str] = []
        fallback: Optional[str] = None  # "eth0: why simulated ingress was not possible"
        if mode == "ingress":
            src, dst, via, back = _resolve_ingress(req)
        else:
            dst = _resolve_dst(req)
            with system.netns(req.from_netns):
                src = req.src or _source_for(dst)
        if src.version != dst.version:
            raise UsageError(f"--src {src} and --dst {dst} are of different address families", "give both as IPv4 or both as IPv6")
        specs = build_specs(req, src, dst, self.rng)
        tplan = plan.trace_plan(self.run_id, specs, os.getpid())

        from .collect import TraceSocket, ruleset_generation
        from .inject import Injector, build

        datas = [build(s) for s in specs]  # built before anything is changed: bad input fails here
        # Kernel-log work only when it can tell something: legacy rules (seen only through TRACE
        # in the kernel log) or --log. The default nft-only path never opens /dev/kmsg and runs no
        # iptables tool: whether x_tables has tables is read from /proc. x_tables has no per-chain
        # listing nor a generation, so its tables are saved whole now and again after the run.
        # The plan itself is made once the specs are final (a fallback from simulated ingress
        # remakes them).
        legacy_saved = full.legacy_text if full else snapshot.legacy()
        exchanges: list[Exchange] = []
        conntrack: dict[int, str] = {}
        cleanup_errors: list[str] = []
        gens: list[int] = []
        kmsg_raw: list[bytes] = []
        nflog_raw: list[bytes] = []
        own: frozenset[tuple[str, str, int]] = frozenset()
        tcp_loose: Optional[str] = None
        port_plan: Any = None
        kplan: Optional[kernplan.KernPlan] = None
        ksrc: Any = None
        nsrc: Any = None
        with contextlib.ExitStack() as stack:
            tsock = TraceSocket(system.interface_names())
            stack.callback(tsock.close)
            sources: list[Any] = [tsock]
            self.journal = Journal(self.run_id, list(sys.argv))
            try:
                inj: Any = None
                if mode == "ingress":
                    assert via is not None
                    inj, port_plan, reason = self._open_port(specs, via, back)
                    if inj is None:
                        # Fall back to a local probe, from a local address: a spoofed source's
                        # replies would leave the machine now that nothing catches them.
                        fallback = f"{via}: {reason}"
                        caveats.append(f"simulated ingress on {via} is not possible here ({reason}); "
                                       "the probe was sent locally instead")
                        mode, via = "local", None
                        specs = build_specs(req, _source_for(dst), dst, self.rng)
                        datas = [build(s) for s in specs]
                        tplan = plan.trace_plan(self.run_id, specs, os.getpid())
                if inj is None:
                    with system.netns(req.from_netns):
                        inj = Injector()
                stack.callback(inj.close)
                roles = plan.roles(tplan)
                kplan = kernel_plan(self.run_id, specs, req.log, legacy_saved)
                if kplan is not None:
                    ksrc, nsrc = self._kernel_sources(kplan, stack)
                    sources += [src for src in (ksrc, nsrc) if src is not None]
                gens.append(ruleset_generation())
                undo = nft_undo(req.netns, tplan.undo, f"table inet {tplan.table}")
                self.change(undo, lambda: system.run(["nft", "-f", "-"], input=tplan.batch), atomic=True)
                gens.append(ruleset_generation())
                tcp_loose = system.sysctl_get("net.netfilter.nf_conntrack_tcp_loose")
                if kplan is not None:
                    own = self._kernel_setup(kplan)
                on_event = (lambda ev: self.log.debug("trace", **ev.to_json())) if self.log_events else None
                for i, (spec, data) in enumerate(zip(specs, datas)):
                    reply, evs = self._exchange(sources, inj, spec, data, on_event, roles)
                    evs = correlate.without_handles(evs, own)
                    exchanges.append((spec, evs, reply))
                    if kplan is not None or (spec.proto is Proto.TCP and "S" not in spec.flags):
                        conntrack[i] = _conntrack_entry(spec)  # now, while the flow's entry is fresh
                    if mode == "ingress" and correlate.reply_kind(spec, evs, reply[0] if reply else None, roles) == "syn-ack":
                        self._reset(inj, spec)
            finally:
                cleanup_errors = self._undo_all()
                if port_plan is not None:
                    from .simulate import leftovers

                    cleanup_errors += leftovers(port_plan, self.run_id)
                self._unlock()
                if ksrc is not None:
                    kmsg_raw = list(ksrc.raw)
                if nsrc is not None:
                    nflog_raw = list(nsrc.raw)
        gens.append(ruleset_generation())
        return _Live(full, mode, via, back, tuple(caveats), fallback, tuple(specs), dst, tplan, roles, kplan,
                     legacy_saved, tuple(exchanges), conntrack, tuple(cleanup_errors), tuple(gens), tuple(kmsg_raw),
                     b"".join(nflog_raw), own, tcp_loose, b"".join(tsock.raw), tsock.lost)

    def _analyse(self, live: "_Live") -> ProbeReport:
        """After the undos: prove the firewall is as before, read the met chains, explain."""
        from .inject import describe

        full, tplan, kplan, legacy_saved, mode, via = live.full, live.tplan, live.kplan, live.legacy_saved, live.mode, live.via
        # With a full snapshot (evidence bundles) the listings are compared too, counters aside.
        diff = compare.leftover(full.nft_text, snapshot.take().nft_text) if full else []
        gone = system.run(["nft", "list", "table", "inet", tplan.table], check=False).returncode != 0
        left = list(live.cleanup_errors) + ([] if gone else [f"table inet {tplan.table} still present"])
        legacy_unchanged: Optional[bool] = None
        if legacy_saved or (kplan is not None and kplan.legacy_changes):
            before_legacy = snapshot.legacy_listing(snapshot.with_legacy(Ruleset(), legacy_saved))
            after_legacy = snapshot.legacy_listing(snapshot.with_legacy(Ruleset(), snapshot.legacy()))
            legacy_diff = compare.leftover(before_legacy, after_legacy)
            legacy_unchanged = not legacy_diff
            left += legacy_diff

        # The rules are read now, chain by chain, for the chains the probes met: handles do not
        # change, and the generations prove whether anything else changed meanwhile. Legacy
        # tables come from their save before the run (the kernel log's rule numbers count those).
        met = {(e.family, e.table, e.chain) for _, evs, _ in live.exchanges for e in evs
               if not e.table.startswith(plan.TABLE_PREFIX) and not e.legacy and e.kind is not EventKind.CONNTRACK}
        snap = snapshot.chains(met, legacy_saved)
        results = []
        for i, (spec, evs, reply) in enumerate(live.exchanges):
            r = correlate.packet_result(spec, evs, snap.ruleset, reply[0] if reply else None,
                                        describe(reply[1]) if reply else "", live.roles)
            results.append(dataclasses.replace(r, conntrack=live.conntrack[i]) if i in live.conntrack else r)
        back = live.back
        rp = self._rp_filter(via, back) if mode == "ingress" and via is not None and live.dst.version == 4 else False
        tcp_loose = live.tcp_loose
        ctx_d = diagnose.Context(snap.ruleset, listeners(), local=mode == "local",
                                 tcp_loose=int(tcp_loose) if tcp_loose and tcp_loose.isdigit() else None,
                                 mode=mode, via=via, src=live.specs[0].src if live.specs else None,
                                 route_dev=back.dev if back is not None else None, rp_filter_drops=rp,
                                 fallback=live.fallback)
        findings: list[Finding] = []
        conclusions = []
        for r in results:
            fs = diagnose.diagnose(r, ctx_d)
            conclusions.append(diagnose.conclusion(r, fs))
            findings.extend(f for f in fs if f not in findings)
        instrumentation = tuple(tplan.rules) + (tuple(kplan.rules) if kplan is not None else ())
        return ProbeReport(
            self.req, self.run_id, tuple(results), tuple(findings), not left, tuple(left),
            instrumentation, live.trace_lost, tuple(conclusions),
            Evidence(full.nft_text if full else snap.nft_text, full.ipt_text if full else snap.ipt_text,
                     tplan.batch, live.trace, tuple(reply[1] if reply else b"" for _, _, reply in live.exchanges),
                     tuple(diff) if full else None, legacy_saved, live.kmsg_raw, live.nflog_raw,
                     tuple(sorted(live.own)), kernplan_json(kplan)),
            live.generations, mode, via, live.caveats, tuple(self.notes), 2 * self.nft_log_rules, legacy_unchanged,
        )

    def _open_port(self, specs: list[PacketSpec], via: str, back: Any) -> tuple[Any, Any, str]:
        """(injection port, its plan, ""), or (None, None, why not) when the kernel or the interfaces cannot."""
        from . import simulate
        from .errors import CommandError
        from .tcbpf import IngressUnavailable

        printer = _print_bpf if self.req.print_bpf else None
        try:
            self.port_lock = simulate.lock_namespace()
            port_plan = simulate.plan_port(via, back)
            port = simulate.open_port(self.change, self.req.netns, self.run_id, specs, port_plan, self.log, printer)
            return port, port_plan, ""
        except (IngressUnavailable, CommandError, OSError) as e:
            reason = str(e)
        self.log.warning("simulated ingress unavailable; probing locally", via=via, reason=reason)
        errors = self._undo_all()  # whatever part of the port was made
        self._unlock()
        if errors:
            raise EnvironmentProblem("could not remove the partly built injection port: " + "; ".join(errors),
                                     "run `fwtrace cleanup`")
        return None, None, reason

    def _unlock(self) -> None:
        if self.port_lock is not None:
            os.close(self.port_lock)  # releases the flock
            self.port_lock = None

    def _reset(self, inj: Any, spec: PacketSpec) -> None:
        """Answer the captured SYN-ACK with the RST a real client would send (see simulate)."""
        from .inject import build
        from .simulate import rst_for_synack

        rst, seq = rst_for_synack(spec)
        inj.send(rst, build(rst, seq))
        self.log.debug("sent", packet=rst.summary(), why="reset the half-open connection the probe made")

    def _rp_filter(self, via: str, back: Any) -> bool:
        from . import ingress, simulate

        rp_all, rp_dev = simulate.rp_filter(via)
        return ingress.rp_filter_drops(rp_all, rp_dev, via, back)

    def _kernel_sources(self, kplan: kernplan.KernPlan, stack: contextlib.ExitStack) -> tuple[Any, Any]:
        """The /dev/kmsg reader and the NFLOG socket the plan needs, opened in the target before
        any rule of the plan exists (so nothing it logs is missed), closed with `stack`."""
        from . import kernlog

        ctx = kernlog.KernContext(self.run_id, kplan.ruleset, kplan.offsets, kplan.log_points)
        ksrc: Any = None
        nsrc: Any = None
        if kplan.kmsg:
            from .kmsg import KmsgSource

            ksrc = KmsgSource(ctx)  # from now on: nothing older than the run is read
            stack.callback(ksrc.close)
        if kplan.nflog_group is not None:
            from .collect import NflogSocket

            nsrc = NflogSocket(kplan.nflog_group, ctx, system.interface_names())
            stack.callback(nsrc.close)
        return ksrc, nsrc

    def _kernel_setup(self, kplan: kernplan.KernPlan) -> frozenset[tuple[str, str, int]]:
        """The kernel log's prerequisites and the legacy TRACE / LOG / NFLOG rules, each journaled.

        Returns the (family, table, handle) of LOG rules iptables-nft put into nf_tables, so their
        trace events are not taken for the user's rules.
        """
        from . import kernplan

        ns = self.req.netns
        if kplan.kmsg:
            self._kmsg_setup(kplan)
        for family in kplan.families:
            if before_has_raw(family) is False and any(c.apply[3:5] == ("raw", "-I") for c in kplan.changes):
                self.notes.append(f"the legacy TRACE rules instantiated an x_tables raw table ({family}); it stays, "
                                  "empty (x_tables cannot unregister a table) and changes no packet")
        for c in kplan.changes:
            self.change(Undo("cmd", c.what, ns, c.undo, gone=kernplan.IPT_GONE), functools.partial(system.run, list(c.apply)))
            if c.apply[0] in kernplan.NFT_IPT_CMD.values():
                self.nft_log_rules += 1  # one nft transaction in, one out: the generations count them
        # The handles of the LOG rules iptables-nft made, from their chains only (no full listing).
        nft_points = sorted({(p.family, p.table, p.chain) for p in kplan.log_points.values() if not p.legacy})
        listed = "".join(system.run(["nft", "-a", "list", "chain", *key]).stdout for key in nft_points)
        return kernplan.own_handles(listed, self.run_id) if nft_points else frozenset()

    def _kmsg_setup(self, kplan: kernplan.KernPlan) -> None:
        from . import kernplan

        ns = self.req.netns
        for family in kplan.families:
            # nf_log sends TRACE and LOG to the logger bound for the family in this namespace;
            # with none bound (NONE) they vanish silently.
            key = kernplan.NF_LOG_SYSCTL[family]
            old = system.sysctl_get(key)
            if old == "NONE":
                logger = kernplan.NF_LOGGER[family]
                # Binding a logger whose module is not loaded fails (ENOENT): stock kernels
                # load nf_log_syslog only when a LOG rule asks for it, never for TRACE.
                if system.load_module(kernplan.LOGGER_MODULE, keep=tuple(kernplan.NF_LOG_SYSCTL.values())):
                    self.notes.append(f"loaded the kernel module {kernplan.LOGGER_MODULE} (the kernel logger TRACE "
                                      "lines need; it stays loaded); it binds itself as the logger of every namespace "
                                      "that has none: put back to NONE here and in the initial namespace")
                self.change(sysctl_undo(ns, key, old), functools.partial(system.sysctl_set, key, logger))
                self.notes.append(f"bound the {logger} kernel logger ({key}) for the run; restored to NONE after")
        old = system.sysctl_get(kernplan.LOG_INVALID)
        if old is not None and old != "255":
            self.change(sysctl_undo(ns, kernplan.LOG_INVALID, old), lambda: system.sysctl_set(kernplan.LOG_INVALID, "255"))
        if not system.in_initial_netns():
            # nf_log_syslog prints nothing for a non-initial namespace unless this GLOBAL switch
            # is on (net/netfilter/nf_log_syslog.c: nf_log_allowed()).
            with system.netns(system.HOME_NETNS):
                current = system.sysctl_get(kernplan.ALL_NETNS)
            if current is None:
                self.notes.append(f"fwtrace runs outside the initial namespace, so it cannot set {kernplan.ALL_NETNS}: "
                                  "the kernel log may show nothing of the target namespace")
                return
            # One switch for the whole machine: concurrent runs share it (tracer/shared.py), so
            # one run's cleanup cannot turn it off under another's feet.
            orig: list[Optional[str]] = []

            def on() -> None:
                from . import shared

                with system.netns(system.HOME_NETNS):
                    orig.append(shared.acquire(kernplan.ALL_NETNS, "1", self.run_id, system.sysctl_get, system.sysctl_set))

            self.change(shared_undo(system.HOME_NETNS, kernplan.ALL_NETNS, self.run_id), on)
            if orig and orig[0] is not None and orig[0] != "1":
                self.notes.append(f"set the global sysctl {kernplan.ALL_NETNS}=1 for the run (the target is a "
                                  f"namespace, whose LOG/TRACE lines the kernel log drops otherwise); restored to "
                                  f"{orig[0]} after, once no other fwtrace run needs it")
            elif orig and orig[0] is None:
                self.notes.append(f"the global sysctl {kernplan.ALL_NETNS}=1 was already set by another running fwtrace "
                                  "probe; the last run to finish restores it")

    def _exchange(
        self, sources: list[Any], inj: Any, spec: PacketSpec, data: bytes, on_event: Any, roles: plan.Roles
    ) -> tuple[Optional[tuple[Headers, bytes]], list[TraceEvent]]:
        """Send one probe; wait for its reply and trace (or the timeout)."""
        events: list[TraceEvent] = []
        reply: Optional[tuple[Headers, bytes]] = None
        sent = inj.send(spec, data)
        self.log.debug("sent", packet=spec.summary())
        checkpoint("inject")
        deadline = sent + self.req.timeout
        settle: Optional[float] = None  # once known, stop at this time
        while True:
            now = time.monotonic()
            stop = min(deadline, settle) if settle is not None else deadline
            if now >= stop:
                break
            select.select([src.fileno() for src in sources] + [inj.fileno()], [], [], stop - now)
            new = [ev for src in sources for ev in src.poll(0, on_event)]
            if new:
                events.extend(new)
                checkpoint("collect")
            if reply is None:
                for cap in inj.poll(0):
                    if correlate.is_reply(cap.headers, spec):
                        reply = (cap.headers, cap.data)
                        self.log.debug("reply", ifname=cap.ifname)
                        break
            if reply is not None:
                settle = min(settle or deadline, time.monotonic() + DRAIN)
            elif settle is None and _dropped(events, spec, roles):
                settle = time.monotonic() + REJECT_GRACE
        return reply, events


def _dropped(events: list[TraceEvent], spec: PacketSpec, roles: plan.Roles) -> bool:
    probe, _ = correlate.split_events(events, spec, roles)
    return any(e.verdict == "drop" for e in probe if not e.table.startswith(plan.TABLE_PREFIX))


def _resolve_ingress(req: ProbeRequest) -> tuple[IPAddress, IPAddress, str, Any]:
    """(source, destination, via interface, route back to the source) of a simulated ingress."""
    from . import ingress, simulate

    version = req.dst.version if req.dst else (req.src.version if req.src else 6 if req.ipv6 else 4)
    src = req.src or ingress.default_source(version)
    back = simulate.route_to(src, req.dst)
    via = req.via or (back.dev if back is not None and back.kind == "unicast" and back.dev != "lo" else None)
    if via is None:
        raise UsageError(f"the target namespace has no route back to {src}, so no interface it would arrive on",
                         "name the interface with --via (e.g. --via eth0), or add the route")
    # Without --dst: an address of the interface it arrives on, as a client there would use; the
    # route back is then asked again from that address (source-based policy routing).
    dst = _resolve_dst(req, via)
    if req.dst is None:
        back = simulate.route_to(src, dst) or back
    return src, dst, via, back


def kernel_plan(run_id: str, specs: list[PacketSpec], log: str, legacy_saved: dict[str, str]) -> Optional[kernplan.KernPlan]:
    """The kernel-log plan, or None on the default path (no x_tables rules, no --log).

    It needs the chains before the run: the legacy tables from their save, and with --log the
    iptables-nft tables of the probe's family from iptables-nft-save (--log is opt-in; the
    default path lists nothing in full)."""
    if not log and not legacy_saved:
        return None
    from . import kernplan
    from .ruleset import parse_iptables_save

    tables = snapshot.with_legacy(Ruleset(), legacy_saved).tables
    if not log and not tables:
        return None  # only empty x_tables tables (e.g. the raw table an earlier TRACE left)
    if log:
        family = specs[0].nfproto
        saved = system.run([snapshot.IPT_SAVE[family]], check=False).stdout
        tables = kernplan.iptables_nft_tables(family, parse_iptables_save(saved)) + tables
    return kernplan.kern_plan(run_id, specs, Ruleset(tables), log)


def kernplan_json(kplan: Optional[kernplan.KernPlan]) -> Optional[dict[str, object]]:
    if kplan is None:
        return None
    from . import kernplan

    return kernplan.plan_to_json(kplan)


def before_has_raw(family: str) -> bool:
    return "raw" in system.proc_net(snapshot.LEGACY_NAMES[family]).split()


def _conntrack_entry(spec: PacketSpec) -> str:
    """The probe flow's conntrack entry in the calling thread's namespace, or "none"."""
    from . import kernlog

    argv = ["conntrack", "-L", "-f", "ipv6" if spec.family == 6 else "ipv4",
            "-p", spec.proto.value if spec.proto is not Proto.ICMP else ("icmp" if spec.family == 4 else "icmpv6"),
            "-s", str(spec.src)]
    if spec.proto is not Proto.ICMP:
        argv += ["--sport", str(spec.sport)]
    try:
        out = system.run(argv, check=False).stdout
    except EnvironmentProblem:
        return "unknown (conntrack tool not installed)"
    for e in kernlog.parse_conntrack(out):
        if e.orig.src == spec.src and e.orig.sport == spec.sport:
            return e.describe()
    return "none"


def _source_for(dst: IPAddress) -> IPAddress:
    from .inject import source_address

    src = source_address(dst)
    if src is None:
        raise EnvironmentProblem(f"no route to {dst} from the sending namespace", "check `ip route get` there, or give --src")
    return src


def _print_bpf(title: str, listing: str) -> None:
    sys.stderr.write(f"# {title}\n{listing}")
