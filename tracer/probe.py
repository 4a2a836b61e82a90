"""One probe run: snapshot, instrument, send, collect, clean up, explain.

The pure parts (plan, correlation, diagnosis) decide; this module carries their decisions out in
the right namespaces and undoes every change in its own `try`, whatever happens in between.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

from . import compare, correlate, diagnose, plan, snapshot, system
from .errors import EnvironmentProblem, UsageError
from .journal import Journal, Undo, nft_undo
from .model import Finding, IPAddress, Listener, PacketResult, PacketSpec, ProbeRequest, Proto, TraceEvent
from .nftrace import Headers
from .sockets import parse_proc_net

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

    @property
    def ruleset_unchanged(self) -> Optional[bool]:
        """True when the generations show exactly fwtrace's two transactions: its add, then its
        delete of the same table, so the ruleset is the one from before. False when other
        writers committed meanwhile (nothing can then be said), None when not measured."""
        g = self.generations
        if len(g) != 3:
            return None
        return self.cleanup_ok and g[1] == g[0] + 1 and g[2] == g[1] + 1

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
            "packets": [r.to_json() for r in self.results],
            "findings": [f.to_json() for f in self.findings],
            "conclusion": " ".join(dict.fromkeys(self.conclusions)),
            "instrumentation": list(self.instrumentation),
            "events_lost": self.lost_events,
            "cleanup": {"ok": self.cleanup_ok, "leftover": list(self.leftover),
                        "ruleset_unchanged": self.ruleset_unchanged, "generations": list(self.generations)},
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
        from .inject import Injector, build, describe

        datas = [build(s) for s in specs]  # built before anything is changed: bad input fails here
        exchanges: list[tuple[PacketSpec, list[TraceEvent], Optional[tuple[Headers, bytes]]]] = []
        cleanup_errors: list[str] = []
        gens: list[int] = []
        port_plan: Any = None
        with contextlib.ExitStack() as stack:
            tsock = TraceSocket(system.interface_names())
            stack.callback(tsock.close)
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
                gens.append(ruleset_generation())
                undo = nft_undo(req.netns, tplan.undo, f"table inet {tplan.table}")
                self.change(undo, lambda: system.run(["nft", "-f", "-"], input=tplan.batch), atomic=True)
                gens.append(ruleset_generation())
                on_event = (lambda ev: self.log.debug("trace", **ev.to_json())) if self.log_events else None
                for spec, data in zip(specs, datas):
                    reply, evs = self._exchange(tsock, inj, spec, data, on_event, roles)
                    exchanges.append((spec, evs, reply))
                    if mode == "ingress" and correlate.reply_kind(spec, evs, reply[0] if reply else None, roles) == "syn-ack":
                        self._reset(inj, spec)
            finally:
                cleanup_errors = self._undo_all()
                if port_plan is not None:
                    from .simulate import leftovers

                    cleanup_errors += leftovers(port_plan, self.run_id)
                self._unlock()
        gens.append(ruleset_generation())
        # With a full snapshot (evidence bundles) the listings are compared too, counters aside.
        diff = compare.leftover(full.nft_text, snapshot.take().nft_text) if full else []
        gone = system.run(["nft", "list", "table", "inet", tplan.table], check=False).returncode != 0
        left = cleanup_errors + ([] if gone else [f"table inet {tplan.table} still present"])

        # The rules are read now, chain by chain, for the chains the probes met: handles do not
        # change, and the generations prove whether anything else changed meanwhile.
        met = {(e.family, e.table, e.chain) for _, evs, _ in exchanges for e in evs if not e.table.startswith(plan.TABLE_PREFIX)}
        snap = snapshot.chains(met)
        results = [
            correlate.packet_result(spec, evs, snap.ruleset, reply[0] if reply else None,
                                    describe(reply[1]) if reply else "", roles)
            for spec, evs, reply in exchanges
        ]
        rp = self._rp_filter(via, back) if mode == "ingress" and via is not None and dst.version == 4 else False
        ctx = diagnose.Context(snap.ruleset, listeners(), local=mode == "local", mode=mode, via=via,
                               src=specs[0].src if specs else None,
                               route_dev=back.dev if back is not None else None, rp_filter_drops=rp,
                               fallback=fallback)
        findings: list[Finding] = []
        conclusions = []
        for r in results:
            fs = diagnose.diagnose(r, ctx)
            conclusions.append(diagnose.conclusion(r, fs))
            findings.extend(f for f in fs if f not in findings)
        return ProbeReport(
            req, self.run_id, tuple(results), tuple(findings), not left, tuple(left),
            tuple(tplan.rules), tsock.lost, tuple(conclusions),
            Evidence(full.nft_text if full else snap.nft_text, full.ipt_text if full else snap.ipt_text,
                     tplan.batch, b"".join(tsock.raw), tuple(reply[1] if reply else b"" for _, _, reply in exchanges),
                     tuple(diff) if full else None),
            tuple(gens), mode, via, tuple(caveats),
        )

    def _open_port(self, specs: list[PacketSpec], via: str, back: Any) -> tuple[Any, Any, str]:
        """(injection port, its plan, ""), or (None, None, why not) when the kernel or the interfaces cannot."""
        from .errors import CommandError
        from .tcbpf import IngressUnavailable
        from . import simulate

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

    def _exchange(
        self, tsock: Any, inj: Any, spec: PacketSpec, data: bytes, on_event: Any, roles: plan.Roles
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
            select.select([tsock.fileno(), inj.fileno()], [], [], stop - now)
            new = tsock.poll(0, on_event)
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


def _source_for(dst: IPAddress) -> IPAddress:
    from .inject import source_address

    src = source_address(dst)
    if src is None:
        raise EnvironmentProblem(f"no route to {dst} from the sending namespace", "check `ip route get` there, or give --src")
    return src


def _print_bpf(title: str, listing: str) -> None:
    sys.stderr.write(f"# {title}\n{listing}")
