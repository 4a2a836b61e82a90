"""Carries out the probe pipeline's commands (tracer/probe.py) on the system.

The target namespace is entered once, for the whole run; every change is journaled before it is
made (undo records take their namespace from here) and undone in its own `try`, newest first,
when the pipeline asks (`Finish`) or whatever happens in between.
"""
from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import sys
import time
from typing import Any, Callable, Optional

from tracer import commands as c
from tracer import listing, probe, system
from tracer.commands import drive
from tracer.drive import host, ruleset
from tracer.ebpf import commands as ec
from tracer.errors import CommandError, EnvironmentProblem
from tracer.model import ProbeRequest
from tracer.outcome import ProbeReport
from tracer.trace.events import EventSource, Sender
from tracer.undo import shared
from tracer.undo.cleanup import signals_blocked  # (also re-exported: one place holds the signals)
from tracer.undo.journal import Journal
from tracer.undo.records import ReleaseShared, Undo, from_json, in_netns

KILL_ENV = "FWTRACE_TEST_KILL_AT"
SIGINT_ENV = "FWTRACE_TEST_SIGINT_AT"


def checkpoint(phase: str) -> None:
    """Fault injection for the tests: die by SIGKILL at the named phase (no cleanup at all), or
    get a SIGINT there (as from a Ctrl-C at that moment; a comma-separated list of phases)."""
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
    if phase in os.environ.get(SIGINT_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGINT)


def new_run_id() -> str:
    return os.urandom(4).hex()


class Run:
    """The side effects of one probe run: each change journaled first, all undone at the end."""

    def __init__(self, req: ProbeRequest, log: Any, run_id: Optional[str] = None, log_events: bool = False,
                 full_snapshot: bool = False, extra: tuple[Any, ...] = (), on_extra: Optional[Callable[[], None]] = None) -> None:
        self.req = req
        # --prove-fix (tracer/provefix.py): narrowed fix rules (tracer.narrow.Narrowed) the pipeline puts
        # in for this run only, journaled and removed like the instrumentation; `on_extra` is called
        # once they are in (the tests check there that nothing else is let through).
        self.extra = extra
        self.on_extra = on_extra
        self.full_snapshot = full_snapshot  # list the whole ruleset first (evidence bundles)
        self.log = log
        self.run_id = run_id or new_run_id()
        self.rng = random.Random()
        self.log_events = log_events
        self.journal: Optional[Journal] = None
        self.changes = 0
        self.port_lock: Optional[int] = None  # simulated ingress: one run per namespace at a time
        self.port_plan: Any = None
        self.sources: list[EventSource] = []  # the trace socket first, then kmsg / NFLOG
        self.kmsg: Optional[EventSource] = None
        self.nflog: Optional[EventSource] = None
        self.inj: Optional[Sender] = None  # raw sockets, or the simulated-ingress port
        self.finished: Optional[c.Finished] = None
        self.stack = contextlib.ExitStack()
        self.undo_errors: Optional[list[str]] = None  # set once the undo ran (the interrupt message says it)
        self.ebpf: Any = None  # tracer.ebpf.phase.EbpfPhase, when the run loads the eBPF programs

    def execute(self) -> ProbeReport:
        system.require_root()
        system.require_tools("nft", "ip")
        from tracer.undo.cleanup import warn_stale

        warn_stale(self.log)
        with system.netns(self.req.netns), self.stack:
            try:
                steps = probe.probe(self.req, self.run_id, os.getpid(), self.rng, self.full_snapshot, self.extra)
                report = drive(steps, self.carry_out)
            finally:
                if self.finished is None:  # the pipeline failed before its Finish: undo here
                    self._finish()
        return self._ebpf_second_pass(report)

    def _ebpf_second_pass(self, report: ProbeReport) -> ProbeReport:
        """--ebpf auto: probe again with the eBPF programs when the first pass left a fate unexplained."""
        import dataclasses

        from tracer.ebpf.policy import unexplained

        why = unexplained(report.results) if self.req.ebpf == "auto" and report.cleanup_ok else None
        if why is None:
            return report
        from tracer.ebpf.loader import unavailable

        cannot = unavailable()
        if cannot is not None:
            note = f"--ebpf auto: the first pass left a fate unexplained ({why}), but eBPF cannot run here: {cannot}"
            return dataclasses.replace(report, notes=report.notes + (note,))
        self.log.info("probing again with eBPF", why=why)
        again = Run(dataclasses.replace(self.req, ebpf="on"), self.log, log_events=self.log_events,
                    full_snapshot=self.full_snapshot, extra=self.extra, on_extra=self.on_extra).execute()
        note = (f"--ebpf auto: the first pass (run {report.run_id}) left a fate unexplained ({why}); "
                "probed again with the eBPF programs loaded")
        return dataclasses.replace(again, notes=(note,) + again.notes)

    # --- eBPF (tracer/ebpf/phase.py) --------------------------------------------------------------
    def _start_ebpf(self, cmd: Any) -> None:
        from tracer.ebpf.phase import EbpfPhase

        self.ebpf = EbpfPhase("on", self.log, _print_bpf if cmd.print_source else None)
        self.ebpf.start()

    def _open_ebpf(self, cmd: Any) -> str:
        assert self.ebpf is not None, "StartEbpf comes first"
        src = self.ebpf.open(self.stack)
        if src is not None:
            self.sources.append(src)
        return str(self.ebpf.status)

    def _collect_ebpf(self, cmd: Any) -> Any:
        from tracer.ebpf.commands import EbpfOutcome

        e = self.ebpf
        return EbpfOutcome(e.status, tuple(e.notes), e.raw(), e.names()) if e is not None else EbpfOutcome()

    def checkpoint(self, phase: str) -> None:
        checkpoint(phase)
        if phase == probe.EXTRA_IN and self.on_extra is not None:
            self.on_extra()

    @property
    def sender(self) -> Sender:
        assert self.inj is not None, "the pipeline sends only after opening an injector"
        return self.inj

    def carry_out(self, cmd: c.Command) -> Any:
        return HANDLERS[type(cmd)](self, cmd)

    # --- changes ------------------------------------------------------------------------------
    def change(self, undo: Undo, apply: Callable[[], Any], atomic: bool = False) -> Any:
        """Make one change to the system: journal its undo first, then apply it.

        `atomic`: when apply fails, nothing was changed (one netlink request, one nft batch), so
        the undo must not run: the thing it would remove may be somebody else's, e.g. the clsact
        qdisc another program added between our look and our `tc qdisc add`.
        """
        assert self.journal is not None
        # The pipeline does not know namespaces: a change is the target's, a shared switch the machine's.
        undo = in_netns(undo, system.HOME_NETNS if isinstance(undo, ReleaseShared) else self.req.netns)
        index = self.journal.record(undo)
        self.log.info("change", what=undo.what, netns=undo.netns)
        # INT/TERM/HUP wait until the change is complete: an interrupt raised inside apply()
        # would leave it unknown whether the command (e.g. the nft batch, committed by a child
        # that keeps running) took effect (seen on a slow kernel: Ctrl-C during the first nft
        # change left `table inet fwtrace_<id>` behind). Raised after the block, it finds the
        # change journaled and pending, so the undo runs.
        with signals_blocked():
            try:
                result = apply()
                checkpoint(f"applied-{self.changes + 1}")
            except Exception as e:
                # Only a failure the tool itself reported means "nothing changed"; a tool killed
                # by a signal leaves the outcome unknown: the undo stays pending (every undo is
                # idempotent).
                if atomic and not _outcome_unknown(e):
                    self.journal.mark(index, "undone")
                raise
        self.changes += 1
        checkpoint(f"instrument-{self.changes}")
        return result

    def _change(self, cmd: c.Change) -> Any:
        return self.change(cmd.undo, lambda: _act(cmd.action), cmd.atomic)

    def _undo_all(self) -> list[str]:
        """Take every journaled change back, newest first, each in its own try."""
        try:
            return self._undo_pending()
        except KeyboardInterrupt:
            # It came before the signals were held (or is the held one, delivered after): the
            # undo still runs in full -- the signal handler ignores every later interrupt.
            self._undo_pending()
            raise

    def _undo_pending(self) -> list[str]:
        from tracer.undo.cleanup import undo_journal

        self.undo_errors = []
        if self.journal is None:
            return self.undo_errors
        self.undo_errors = undo_journal(self.journal, self.log, lambda: checkpoint("cleanup"))
        return self.undo_errors

    def _finish(self) -> c.Finished:
        self.finished = c.Finished()  # once, even when an undo raises
        port_left: list[str] = []
        try:
            errors = self._undo_all()
            if self.port_plan is not None:
                from tracer.inject.simulate import leftovers

                port_left = leftovers(self.port_plan, self.run_id)  # compared in the content proof
        finally:
            self._unlock()
            self.stack.close()  # the sources and the injector
        tsock = self.sources[0] if self.sources else None
        undos = tuple(from_json(e["undo"]) for e in self.journal.doc.entries) if self.journal else ()
        self.finished = c.Finished(
            tuple(errors), b"".join(tsock.raw) if tsock else b"", bool(tsock and tsock.lost),
            tuple(self.kmsg.raw) if self.kmsg else (), b"".join(self.nflog.raw) if self.nflog else b"",
            tuple(port_left), undos)
        return self.finished

    # --- sources and sending --------------------------------------------------------------------
    def _begin(self, cmd: c.Begin) -> None:
        from tracer.trace.collect import TraceSocket

        tsock = TraceSocket(system.interface_names())
        self.stack.callback(tsock.close)
        self.sources.insert(0, tsock)
        self.journal = Journal(self.run_id, list(sys.argv), netns=self.req.netns)

    def _open_injector(self, cmd: c.OpenInjector) -> Any:
        from tracer.inject.raw import Injector, source_address

        with system.netns(cmd.netns):
            src = source_address(cmd.towards) if cmd.towards is not None else None
            if cmd.towards is not None and src is None:
                raise EnvironmentProblem(f"no route to {cmd.towards} from the sending namespace",
                                         "check `ip route get` there, or give --src")
            inj = self.inj = Injector()
        self.stack.callback(inj.close)
        return src

    def _open_port(self, cmd: c.OpenPort) -> str:
        """"" with the injection port open, or why not when the kernel or the interfaces cannot."""
        from tracer.inject import simulate
        from tracer.inject.tcbpf import IngressUnavailable

        printer = _print_bpf if self.req.print_bpf else None
        try:
            self.port_lock = simulate.lock_namespace()
            self.port_plan = simulate.plan_port(cmd.via, cmd.back)
            port = self.inj = simulate.open_port(self.change, self.req.netns, self.run_id, list(cmd.specs),
                                                 self.port_plan, self.log, printer)
            self.stack.callback(port.close)
            return ""
        except (IngressUnavailable, CommandError, OSError) as e:
            reason = str(e)
        self.log.warning("simulated ingress unavailable; probing locally", via=cmd.via, reason=reason)
        errors = self._undo_all()  # whatever part of the port was made
        self._unlock()
        self.port_plan = None
        if errors:
            raise EnvironmentProblem("could not remove the partly built injection port: " + "; ".join(errors),
                                     "run `fwtrace cleanup`")
        return reason

    def _unlock(self) -> None:
        if self.port_lock is not None:
            os.close(self.port_lock)  # releases the flock
            self.port_lock = None

    def _kernel_sources(self, cmd: c.OpenKernelSources) -> None:
        """Opened in the target before any rule of the plan exists, closed at Finish."""
        from tracer.trace import kernlog

        kplan = cmd.plan
        ctx = kernlog.KernContext(self.run_id, kplan.ruleset, kplan.offsets, kplan.log_points)
        if kplan.kmsg:
            from tracer.trace.kmsg import KmsgSource

            ksrc = KmsgSource(ctx)  # from now on: nothing older than the run is read
            self.stack.callback(ksrc.close)
            self.sources.append(ksrc)
            self.kmsg = ksrc
        if kplan.nflog_group is not None:
            from tracer.trace.collect import NflogSocket

            nsrc = NflogSocket(kplan.nflog_group, ctx, system.interface_names())
            self.stack.callback(nsrc.close)
            self.sources.append(nsrc)
            self.nflog = nsrc

    def _send(self, cmd: c.Send) -> float:
        sent = self.sender.send(cmd.spec, cmd.data)
        self.log.debug("sent", packet=cmd.spec.summary())
        checkpoint("inject")
        return float(sent)

    def _wait(self, cmd: c.Wait) -> Optional[c.Polled]:
        now = time.monotonic()
        if now >= cmd.until:
            return None
        select.select([s.fileno() for s in self.sources] + [self.sender.fileno()], [], [], cmd.until - now)
        on_event = (lambda ev: self.log.debug("trace", **ev.to_json())) if self.log_events else None
        new = [ev for s in self.sources for ev in s.poll(0, on_event)]
        if new:
            checkpoint("collect")
        caps = tuple(c.Captured(x.headers, x.data, x.ifname) for x in self.sender.poll(0)) if cmd.replies else ()
        for cap in caps:
            self.log.debug("captured", ifname=cap.ifname)
        return c.Polled(time.monotonic(), tuple(new), caps)

    def _reset(self, cmd: c.Reset) -> None:
        """Answer the captured SYN-ACK with the RST a real client would send (see simulate)."""
        from tracer.inject.raw import build
        from tracer.inject.simulate import rst_for_synack

        rst, seq = rst_for_synack(cmd.spec)
        self.sender.send(rst, build(rst, seq))
        self.log.debug("sent", packet=rst.summary(), why="reset the half-open connection the probe made")


def _act(action: c.Action) -> Any:
    if isinstance(action, c.RunArgv):
        return system.run(list(action.argv), input=action.input)
    if isinstance(action, c.SetSysctl):
        return system.sysctl_set(action.key, action.value)
    from tracer.undo import shared

    with system.netns(system.HOME_NETNS):
        return shared.acquire(action.key, action.value, action.run_id, system.sysctl_get, system.sysctl_set)


def _build_packets(cmd: c.BuildPackets) -> tuple[bytes, ...]:
    from tracer.inject.raw import build

    return tuple(build(s) for s in cmd.specs)


def _describe(cmd: c.Describe) -> str:
    from tracer.inject.raw import describe

    return describe(cmd.data)


def _print_bpf(title: str, listing_: str) -> None:
    sys.stderr.write(f"# {title}\n{listing_}")


HANDLERS: dict[type, Callable[[Run, Any], Any]] = {
    c.TakeSnapshot: ruleset.take_snapshot,
    c.Checkpoint: lambda run, cmd: run.checkpoint(cmd.phase),
    c.SaveLegacy: ruleset.save_legacy,
    c.ListAddresses: host.list_addresses,
    c.ListBaseChains: ruleset.list_base_chains,
    c.RouteBack: host.route_back,
    c.BuildPackets: lambda run, cmd: _build_packets(cmd),
    c.IptSave: ruleset.ipt_save,
    c.ReadSysctl: host.read_sysctl,
    c.LoadModule: host.load_module,
    c.InInitialNetns: host.in_initial_netns,
    c.LegacyHasRaw: ruleset.legacy_has_raw,
    c.ListChains: ruleset.list_chains,
    c.Generation: ruleset.generation,
    c.MetChains: ruleset.met_chains,
    c.FilterView: ruleset.filter_view,
    c.NftTables: lambda run, cmd: listing.nft_tables(),
    c.ProofListing: lambda run, cmd: listing.proof_state(cmd.scope, cmd.legacy_saved),
    c.SharedHeld: lambda run, cmd: shared.held(cmd.key, cmd.run_id),
    c.Describe: lambda run, cmd: _describe(cmd),
    c.RpFilter: host.rp_filter,
    c.Listeners: host.listeners,
    c.Conntrack: host.conntrack,
    c.Change: Run._change,
    c.Begin: Run._begin,
    c.OpenPort: Run._open_port,
    c.OpenInjector: Run._open_injector,
    c.OpenKernelSources: Run._kernel_sources,
    c.Send: Run._send,
    c.Wait: Run._wait,
    c.Reset: Run._reset,
    c.Finish: lambda run, cmd: run._finish(),
    ec.StartEbpf: Run._start_ebpf,
    ec.OpenEbpf: Run._open_ebpf,
    ec.WatchEbpf: lambda run, cmd: run.ebpf.watch(cmd.spec),
    ec.CollectEbpf: Run._collect_ebpf,
}


def _outcome_unknown(e: BaseException) -> bool:
    """A tool killed by a signal (a Ctrl-C reaches the whole process group) may have committed."""
    return isinstance(e, CommandError) and e.returncode < 0
