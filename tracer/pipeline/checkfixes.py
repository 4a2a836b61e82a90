"""`probe --check-fixes`: every fix the report prints is tried in a shadow copy of the target's
firewall (tracer/system/shadow.py, the what-if's copy), and the sampled sources and ports are
probed before and after it (tracer/pipeline/whatif.py's sample), so each fix says whom else it
changes. One shadow serves the run: it is reset after each fix and the reset is checked against
the copy as built (its rules, sets, ipsets and xt_recent lists listed again); where it does not
match, that fix and the ones after it get a fresh copy each. The target is only read; the
shadow's namespaces are gone at the end (the report's cleanup proof says so). What counts as
collateral and when it contradicts a fix's scope: tracer/pipeline/collateral.py (pure).
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Callable, Optional

from tracer.errors import FwtraceError
from tracer.findings import Collateral
from tracer.model import ProbeRequest, Proto
from tracer.pipeline import collateral, whatif
from tracer.system.shadow import Shadow, capture, fingerprint

SHADOW_TIMEOUT = 0.3  # a reply over the copy's veth takes well under a millisecond


def check(report: Any, log: Any) -> Any:
    """The report with `collateral` on each fix (None and why, where it could not be checked)."""
    fixes = [x for x in collateral.to_check(report) if x.commands]
    if not fixes or not report.results:
        return report
    spec = report.results[0].spec
    if spec.proto not in (Proto.TCP, Proto.UDP):
        return collateral.not_checked(report, "only TCP and UDP probes are sampled in a copy")
    found: dict[tuple[str, ...], Collateral] = {}
    plans = []
    for x in fixes:
        argvs, note = collateral.plan(x)
        if argvs is None:
            found[x.commands] = Collateral(None, note)
        else:
            plans.append((x, argvs, note))
    if not plans:
        return collateral.with_collateral(report, found)
    req = report.request
    client, dport, proto = str(spec.src), spec.dport, spec.proto.value
    names: list[str] = []
    log = _Quiet(log)  # the shadow's probes' warnings (stateful matches) are about the copy, not the target
    try:
        host_before = fingerprint(req.netns)
        state = capture(req.netns)
        words = [w for _, argvs, _ in plans for a in argvs for w in a]
        probes = collateral.samples(whatif.plan_probes(dataclasses.replace(req, dport=dport, proto=spec.proto), state,
                                                       words, client), client, dport, proto)
        probes = collateral.with_neighbour(probes, client, dport, proto,
                                           {a for lk in state.links for a, _ in lk.addrs})
        base = ProbeRequest(dport=dport, proto=spec.proto, dst=spec.dst, timeout=min(req.timeout, SHADOW_TIMEOUT), ebpf="off")
        fresh = False
        with _shadow(state, log, probes, names) as sh:
            before = _round(sh, base, probes, log)
            built = sh.rules_listing()
            for i, (x, argvs, note) in enumerate(plans):
                if not fresh:  # the probes of the round before changed its state too (limits, meters)
                    sh.reset()
                    if sh.rules_listing() != built:
                        fresh = True  # the undo is not sound here: a fresh copy for this fix and the rest
                        log.info("shadow reset differs from the copy as built: a fresh copy per fix")
                if fresh:
                    with _shadow(state, log, probes, names) as one:
                        found[x.commands] = _try(one, x, argvs, note, base, probes, before, dport, proto, log)
                else:
                    found[x.commands] = _try(sh, x, argvs, note, base, probes, before, dport, proto, log)
        how = "one copy, reset before each fix" if not fresh else "a fresh copy for each fix (the reset was not exact)"
        notes = (f"--check-fixes: {len(plans)} fix(es) tried in a shadow copy of the firewall ({how}), "
                 f"{len(probes)} sampled source/port pair(s) probed before and after each; the target was only read",)
    except FwtraceError as e:
        for x, _, _ in plans:
            found.setdefault(x.commands, Collateral(None, f"no shadow copy of the firewall: {e.message}"))
        notes, host_before = (), None
    out = collateral.with_collateral(report, found)
    return _proof(out, names, req.netns, host_before, notes)


class _Quiet:
    """The run's logger for errors only: what the shadow's probes would warn about is their own."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def bind(self, **kw: Any) -> "_Quiet":
        return self

    def __getattr__(self, name: str) -> Any:
        if name in ("debug", "info", "warning", "warn", "msg"):
            return lambda *a, **kw: None
        return getattr(self._log, name)


def _shadow(state: Any, log: Any, probes: list[Any], names: list[str]) -> Any:
    sh = Shadow(state, log)
    names += sh.namespaces

    class _Built:
        def __enter__(self) -> Shadow:
            sh.__enter__()
            for a in dict.fromkeys(p.source.addr for p in probes):
                sh.reachable(a)
            return sh

        def __exit__(self, *exc: Any) -> None:
            sh.close()

    return _Built()


def _round(sh: Shadow, base: ProbeRequest, probes: list[Any], log: Any) -> tuple[str, ...]:
    return tuple(whatif.outcome(whatif.probe(sh, dataclasses.replace(
        base, src=ipaddress.ip_address(p.source.addr), dport=p.port, proto=Proto(p.proto)), log)) for p in probes)


def _try(sh: Shadow, fix: Any, argvs: Any, note: str, base: ProbeRequest, probes: list[Any], before: tuple[str, ...],
         dport: int, proto: str, log: Any) -> Collateral:
    for a in argvs:
        c = sh.run(list(a))
        if c.returncode != 0:
            first = (c.stderr.strip().splitlines() or [f"exit status {c.returncode}"])[0]
            return Collateral(None, f"its command failed in the copy: `{' '.join(a)}`: {first}")
    return collateral.result(fix, probes, before, _round(sh, base, probes, log), dport, proto, note)


def _proof(report: Any, names: list[str], netns: Optional[str], host_before: Optional[tuple[object, ...]],
           notes: tuple[str, ...], listed: Optional[Callable[[], list[str]]] = None) -> Any:
    """The cleanup proof covers the shadow: its namespaces are gone, the target lists as before."""
    from tracer.system import netns_list

    left = [n for n in names if n in (listed or netns_list)()]
    caveats: tuple[str, ...] = ()
    if host_before is not None and fingerprint(netns) != host_before:
        caveats = ("the target's firewall changed while --check-fixes ran (by someone else: the shadow only read "
                   "it): the fixes' collateral is that of the firewall as it was",)
    if left:
        return dataclasses.replace(report, cleanup_ok=False, notes=report.notes + notes, caveats=report.caveats + caveats,
                                   leftover=report.leftover + tuple(f"shadow namespace {n} (hint: `ip netns del {n}`)"
                                                                    for n in left))
    return dataclasses.replace(report, notes=report.notes + notes, caveats=report.caveats + caveats)
