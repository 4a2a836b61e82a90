"""Carries out the probe pipeline's commands (tracer/pipeline/probe.py) on the system.

The target namespace is entered once, for the whole run; every change is journaled before it is
made (undo records take their namespace from here) and undone in its own `try`, newest first,
when the pipeline asks (`Finish`) or whatever happens in between.

`Run` holds the run's state; the handlers that carry out each command live in tracer/pipeline/drive/, one
module per area, and `HANDLERS` at the end of this module says which handler takes which command.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from typing import Any, Callable, Optional

from tracer.plan import commands as c
from tracer.pipeline import probe
from tracer import system
from tracer.system import console
from tracer.plan.commands import drive
from tracer.pipeline.drive import KILL_ENV, SIGINT_ENV, checkpoint  # noqa: F401  (the tests set these, by these names)
from tracer.pipeline.drive import app, ebpf, host, inject, ruleset, sources, undo
from tracer.plan import ebpf_commands as ec
from tracer.plan.target_commands import QueueBindings
from tracer.errors import CommandError
from tracer.model import ProbeRequest
from tracer.report.outcome import ProbeReport
from tracer.collect.events import EventSource, Sender
from tracer.system.cleanup import signals_blocked  # (also re-exported: one place holds the signals)
from tracer.system.journal import Journal
from tracer.plan.records import ReleaseShared, Undo, in_netns


def new_run_id() -> str:
    return os.urandom(4).hex()


class Run:
    """The side effects of one probe run: each change journaled first, all undone at the end."""

    def __init__(self, req: ProbeRequest, log: Any, run_id: Optional[str] = None, log_events: bool = False,
                 full_snapshot: bool = False, extra: tuple[Any, ...] = (), on_extra: Optional[Callable[[], None]] = None) -> None:
        self.req = req
        # --prove-fix (tracer/pipeline/provefix.py): narrowed fix rules (tracer.plan.narrow.Narrowed) the pipeline puts
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
        self.ebpf: Any = None  # tracer.system.ebpf_phase.EbpfPhase, when the run loads the eBPF programs
        self.app: Any = None  # --app ftp: the open control session (tracer/system/ftpclient.py)
        self.addresses_seen: dict[Optional[str], str] = {}  # `ip -j addr show` per namespace, until Begin (drive/host.py)

    def execute(self) -> ProbeReport:
        system.require_root()
        system.require_tools("nft", "ip")
        from tracer.system.cleanup import warn_stale

        warn_stale(self.log)
        with system.netns(self.req.netns), self.stack:
            try:
                steps = probe.probe(self.req, self.run_id, os.getpid(), self.rng, self.full_snapshot, self.extra)
                report = drive(steps, self.carry_out)
            finally:
                if self.finished is None:  # the pipeline failed before its Finish: undo here
                    undo.finish(self, c.Finish())
        return second_pass(self, report)

    def carry_out(self, cmd: c.Command) -> Any:
        # The run's safe point for a signal (tracer/system/console.py): between two commands, never
        # inside one. Once the run's undo began (Finish), the rest of the run is its cleanup
        # proof and report: a signal then no longer stops it.
        if self.finished is None:
            console.check()
        return HANDLERS[type(cmd)](self, cmd)

    def checkpoint(self, phase: str) -> None:
        checkpoint(phase)
        if phase == probe.EXTRA_IN and self.on_extra is not None:
            self.on_extra()

    @property
    def sender(self) -> Sender:
        assert self.inj is not None, "the pipeline sends only after opening an injector"
        return self.inj

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

    def unlock(self) -> None:
        """Release the simulated-ingress lock on the namespace, if this run holds it."""
        if self.port_lock is not None:
            os.close(self.port_lock)  # releases the flock
            self.port_lock = None


def second_pass(run: Run, report: ProbeReport) -> ProbeReport:
    """--ebpf auto: probe again with the eBPF programs when the first pass left a fate unexplained."""
    from tracer.plan.ebpf_policy import unexplained

    why = unexplained(report.results) if run.req.ebpf == "auto" and report.cleanup_ok else None
    if why is None:
        return report
    from tracer.system.ebpf_loader import unavailable

    cannot = unavailable()
    if cannot is not None:
        note = f"--ebpf auto: the first pass left a fate unexplained ({why}), but eBPF cannot run here: {cannot}"
        return dataclasses.replace(report, notes=report.notes + (note,))
    run.log.info("probing again with eBPF", why=why)
    again = Run(dataclasses.replace(run.req, ebpf="on"), run.log, log_events=run.log_events,
                full_snapshot=run.full_snapshot, extra=run.extra, on_extra=run.on_extra).execute()
    note = (f"--ebpf auto: the first pass (run {report.run_id}) left a fate unexplained ({why}); "
            "probed again with the eBPF programs loaded")
    return dataclasses.replace(again, notes=(note,) + again.notes)


def _outcome_unknown(e: BaseException) -> bool:
    """A tool killed by a signal (a Ctrl-C reaches the whole process group) may have committed."""
    return isinstance(e, CommandError) and e.returncode < 0


def _checkpoint(run: Run, cmd: c.Checkpoint) -> None:
    run.checkpoint(cmd.phase)


# Every command the pipeline can yield, and the handler that carries it out (tracer/pipeline/drive/).
HANDLERS: dict[type, Callable[[Run, Any], Any]] = {
    # reading the ruleset
    c.TakeSnapshot: ruleset.take_snapshot,
    c.SaveLegacy: ruleset.save_legacy,
    c.ListBaseChains: ruleset.list_base_chains,
    c.IptSave: ruleset.ipt_save,
    c.LegacyHasRaw: ruleset.legacy_has_raw,
    c.ListChains: ruleset.list_chains,
    c.Generation: ruleset.generation,
    c.MetChains: ruleset.met_chains,
    c.FilterView: ruleset.filter_view,
    # facts of the host (module loading, sysctls, routes, sockets, conntrack)
    c.ListAddresses: host.list_addresses,
    c.RouteBack: host.route_back,
    c.Neighbour: host.neighbour,
    c.StatefulFacts: host.stateful_facts,
    c.Notice: host.notice,
    c.ReadSysctl: host.read_sysctl,
    c.LoadModule: host.load_module,
    c.InInitialNetns: host.in_initial_netns,
    c.RpFilter: host.rp_filter,
    c.Listeners: host.listeners,
    c.Conntrack: host.conntrack,
    c.ReadCounters: host.read_counters,
    c.ConnectCheck: host.connect_check,
    c.ProcessFacts: host.process_facts,
    c.SelinuxFacts: host.selinux_facts,
    c.KernelChecks: host.kernel_checks,
    QueueBindings: host.queue_bindings,
    # changes, their undo, the cleanup proof's listings
    c.Change: undo.change,
    c.Finish: undo.finish,
    c.NftTables: undo.nft_tables,
    c.ProofListing: undo.proof_listing,
    c.SharedHeld: undo.shared_held,
    # event sources and waiting
    c.Begin: sources.begin,
    c.OpenKernelSources: sources.open_kernel_sources,
    c.Wait: sources.wait,
    # building and sending the probes
    c.BuildPackets: inject.build_packets,
    c.Describe: inject.describe,
    c.OpenInjector: inject.open_injector,
    c.OpenRemote: inject.open_remote,
    c.RemoteRoute: inject.remote_route,
    c.ClientSaw: inject.client_saw,
    c.OpenPort: inject.open_port,
    c.Send: inject.send,
    c.Reset: inject.reset,
    # eBPF (tracer/system/ebpf_phase.py)
    ec.StartEbpf: ebpf.start,
    ec.OpenEbpf: ebpf.open_,
    ec.WatchEbpf: ebpf.watch,
    ec.CollectEbpf: ebpf.collect,
    # fault injection for the tests
    c.Checkpoint: _checkpoint,
    **app.HANDLERS,  # --app ftp (tracer/plan/app_commands.py)
}
