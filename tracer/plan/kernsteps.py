"""The kernel-log part of a run, as pipeline steps (pure; see tracer/pipeline/probe.py): which LOG/TRACE/NFLOG
rules and switches the run needs, and how they are put in place, each change journaled."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from tracer.plan.commands import (
    AcquireShared,
    Change,
    InInitialNetns,
    IptSave,
    LegacyHasRaw,
    ListChains,
    LoadModule,
    ReadSysctl,
    RunArgv,
    SetSysctl,
    Steps,
)
from tracer.model import PacketSpec, Ruleset
from tracer.ruleset.snapshot import with_legacy
from tracer.plan.records import ReleaseShared, RestoreSysctl, RunCommand

if TYPE_CHECKING:
    from tracer.plan.kernplan import KernPlan


def kernel_plan(run_id: str, specs: tuple[PacketSpec, ...], log: str, legacy_saved: dict[str, str],
                nft_chains: Optional[frozenset[tuple[str, str, str]]] = None) -> Steps[Optional["KernPlan"]]:
    """The kernel-log plan, or None on the default path (no x_tables rules, no --log).

    It needs the chains before the run: the legacy tables from their save, and with --log the
    iptables-nft tables of the probe's family from iptables-nft-save (--log is opt-in; the
    default path lists nothing in full). `nft_chains`: the chains nf_tables holds in those tables
    (iptables-nft would create a missing built-in chain for a --log rule, and keep it); None: unknown."""
    if not log and not legacy_saved:
        return None
    from tracer.ruleset import parse_iptables_save
    from tracer.plan import kernplan

    tables = with_legacy(Ruleset(), legacy_saved).tables
    if not log and not tables:
        return None  # only empty x_tables tables (e.g. the raw table an earlier TRACE left)
    if log:
        family = specs[0].nfproto
        saved = yield IptSave(family)
        tables = kernplan.iptables_nft_tables(family, parse_iptables_save(saved)) + tables
    # Legacy chains are traced by the trace bit fwtrace's nft chain sets: no TRACE rule, so no
    # x_tables raw table is ever instantiated (kernplan.kern_plan).
    has_raw = yield LegacyHasRaw(specs[0].nfproto)
    return kernplan.kern_plan(run_id, list(specs), Ruleset(tables), log, nft_chains if log else None,
                              legacy_raw=bool(has_raw))


def kernel_setup(run_id: str, kplan: "KernPlan") -> Steps[tuple[frozenset[tuple[str, str, int]], tuple[str, ...], int]]:
    """The kernel log's prerequisites and the legacy TRACE / LOG / NFLOG rules, each journaled;
    then the handles of the LOG rules iptables-nft put into nf_tables, so their trace events are
    not taken for the user's rules."""
    from tracer.plan import kernplan

    notes = list((yield from kmsg_setup(run_id, kplan)) if kplan.kmsg else ())
    commits = 0
    for c in kplan.edits:
        yield Change(RunCommand(c.what, tuple(c.undo), gone=kernplan.IPT_GONE), RunArgv(tuple(c.apply)))
        if c.apply[0] in kernplan.NFT_IPT_CMD.values():
            commits += 2  # one nft transaction in, one out: the generations count them
    # From their chains only (no full listing).
    nft_points = tuple(sorted({(p.family, p.table, p.chain) for p in kplan.log_points.values() if not p.legacy}))
    own = kernplan.own_handles((yield ListChains(nft_points)), run_id) if nft_points else frozenset()
    return own, tuple(notes), commits  # fwtrace's own handles, notes for the report, own nft commits


def kmsg_setup(run_id: str, kplan: "KernPlan") -> Steps[list[str]]:
    """Make the kernel log print the plan's LOG/TRACE lines; returns notes for the report."""
    from tracer.plan import kernplan

    notes = []
    for family in kplan.families:
        # nf_log sends TRACE and LOG to the logger bound for the family in this namespace;
        # with none bound (NONE) they vanish silently.
        key = kernplan.NF_LOG_SYSCTL[family]
        old = yield ReadSysctl(key)
        if old == "NONE":
            logger = kernplan.NF_LOGGER[family]
            # Binding a logger whose module is not loaded fails (ENOENT): stock kernels load
            # nf_log_syslog only when a LOG rule asks for it, never for TRACE.
            if (yield LoadModule(kernplan.LOGGER_MODULE, tuple(kernplan.NF_LOG_SYSCTL.values()))):
                notes.append(f"loaded the kernel module {kernplan.LOGGER_MODULE} (the kernel logger TRACE lines "
                             "need; it stays loaded); it binds itself as the logger of every namespace that has "
                             "none: put back to NONE here and in the initial namespace")
            yield Change(RestoreSysctl(key, old), SetSysctl(key, logger))
            notes.append(f"bound the {logger} kernel logger ({key}) for the run; restored to NONE after")
    old = yield ReadSysctl(kernplan.LOG_INVALID)
    if old is not None and old != "255":
        yield Change(RestoreSysctl(kernplan.LOG_INVALID, old), SetSysctl(kernplan.LOG_INVALID, "255"))
    if (yield InInitialNetns()):
        return notes
    # nf_log_syslog prints nothing for a non-initial namespace unless this GLOBAL switch is on
    # (net/netfilter/nf_log_syslog.c: nf_log_allowed()).
    key = kernplan.ALL_NETNS
    if (yield ReadSysctl(key, home=True)) is None:
        notes.append(f"fwtrace runs outside the initial namespace, so it cannot set {key}: "
                     "the kernel log may show nothing of the target namespace")
        return notes
    # One switch for the whole machine: concurrent runs share it (tracer/system/shared.py), so one
    # run's cleanup cannot turn it off under another's feet.
    orig = yield Change(ReleaseShared(key, run_id), AcquireShared(key, "1", run_id))
    if orig is not None and orig != "1":
        notes.append(f"set the global sysctl {key}=1 for the run (the target is a namespace, whose LOG/TRACE lines "
                     f"the kernel log drops otherwise); restored to {orig} after, once no other fwtrace run needs it")
    elif orig is None:
        notes.append(f"the global sysctl {key}=1 was already set by another running fwtrace probe; the last run to "
                     "finish restores it")
    return notes


def kernplan_json(kplan: Optional["KernPlan"]) -> Optional[dict[str, object]]:
    if kplan is None:
        return None
    from tracer.plan import kernplan

    return kernplan.plan_to_json(kplan)
