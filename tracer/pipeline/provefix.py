"""--prove-fix: try the first fix of a blocking finding, narrowed to the probe's own flow, and probe again.

A loop around the probe run: the fix (tracer/plan/narrow.py) is put in for one more run as part of
its plan (tracer/pipeline/probe.py `Run(extra=...)`), journaled and removed like the instrumentation, and
the run's verdict says whether it was enough. When it was not, the next block the probe met is
explained by that run's own findings, and its fix is tried on top, up to MAX_STEPS.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tracer.errors import CommandError
from tracer.model import Finding, ProbeRequest
from tracer.plan.narrow import Narrowed, narrow

MAX_STEPS = 3
# Findings whose fix opens the way for the probe (the others explain, or fix something else).
BLOCKING = ("near-miss", "shadowed-rule", "policy", "blocked-by-rule", "forwarded", "reply-dropped",
            "accept-overridden", "source-blocked", "rate-limited", "source-restricted")


@dataclass(frozen=True)
class ProofStep:
    finding: Finding  # the finding whose fix was tried, as its run reported it
    narrowed: str  # the rule tried: the fix plus the probe's source address and port
    reached: bool
    blocked_by: str = ""  # not enough: what blocked the probe next ("ip filter FORWARD policy DROP")
    error: str = ""  # the fix could not be put in
    generations: tuple[int, ...] = ()  # the proving run's nft generations: before, after its adds, after all removed
    unchanged: Optional[bool] = None  # the proving run's ruleset_unchanged: only its own changes, all undone
    # A fix scoped to the client: a probe from a second source with the fix in place (its own
    # source condition kept) -- None: not tried; True: the fix did not let that source in (it
    # was blocked, or let in by a rule of the ruleset, as a per-source limit lets a fresh source in)
    other_src: Optional[str] = None
    other_blocked: Optional[bool] = None
    other_by: str = ""  # what decided the second source's probe

    def to_json(self) -> dict[str, object]:
        return {"code": self.finding.code, "fix": self.finding.fix, "narrowed": self.narrowed, "proven": self.reached,
                "blocked_by": self.blocked_by or None, "error": self.error or None,
                "cleanup": {"ruleset_unchanged": self.unchanged, "generations": list(self.generations)},
                "other_source": None if self.other_src is None else
                {"src": self.other_src, "blocked": self.other_blocked, "decided_by": self.other_by or None}}


# The admin's own rules first: one that matches but is never reached, one that almost matched;
# then the rules fwtrace composes (policy, blocked-by-rule, ...) in report order.
# A targeted block's client fix comes before a near miss that would let in more than the client.
_PREFERENCE = {"shadowed-rule": 0, "near-miss": 2, "source-blocked": 1, "rate-limited": 1, "source-restricted": 1}


def _rank(f: Finding) -> int:
    if f.code == "near-miss" and f.scope == "client":
        return 0  # the admin's own rule, changed for this client only
    return _PREFERENCE.get(f.code, 3)


def first_fix(findings: tuple[Finding, ...]) -> Optional[tuple[Finding, str]]:
    """The first blocking finding with a fix fwtrace can apply, and that fix as one command."""
    for f in sorted(findings, key=_rank):
        if f.code not in BLOCKING:
            continue
        for cmd in (f.proof_rule, *f.commands):
            if cmd and cmd.split()[0] in ("nft", "iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
                return f, cmd
    return None


def prove(report: Any, log: Any, run: Callable[..., Any], on_extra: Optional[Callable[[], None]] = None,
          rng: Optional[random.Random] = None) -> tuple[Any, tuple[ProofStep, ...]]:
    """(the first report with `proven` set on the finding tried, the steps taken).

    `run(req, run_id, extra, on_extra)` executes one probe run and returns its report."""
    from tracer.pipeline.driver import new_run_id

    rng = rng or random.Random()
    if report.reached or not report.results:
        return report, ()
    spec = report.results[0].spec
    steps: list[ProofStep] = []
    applied: list[tuple[str, str]] = []  # (code, fix) found not enough, kept (narrowed anew each run) under the next
    current = report
    for _ in range(MAX_STEPS):
        picked = first_fix(current.findings)
        if picked is None:
            break
        finding, cmd = picked
        if any(s.finding.fix == finding.fix and s.finding.commands == finding.commands for s in steps):
            break  # the same fix again: it changed nothing, trying it twice proves nothing more
        run_id = new_run_id()
        sport = rng.randrange(33000, 60000)
        narrowed = [narrow(c, spec.src, sport, spec.proto, run_id, report.request.netns, code == "reply-dropped")
                    for code, c in applied + [(finding.code, cmd)]]
        n = narrowed[-1]
        if n is None or None in narrowed:
            break
        # No --log rules in a proving run: they would sit among the fix's own positions.
        req: ProbeRequest = dataclasses.replace(report.request, src=spec.src, dst=spec.dst, count=1, log="",
                                                sport=sport if spec.proto.value != "icmp" else None,
                                                via=report.via if report.mode == "ingress" else None)
        log.info("prove-fix", step=len(steps) + 1, rule=n.command)
        try:
            after = run(req, run_id, tuple(x for x in narrowed if x is not None), on_extra)
        except CommandError as e:  # the rule was refused (syntax this nft lacks, ...): say so; the run undid itself
            steps.append(ProofStep(finding, n.command, False, error=str(e)))
            break
        if not after.cleanup_ok:
            from tracer.errors import EnvironmentProblem

            raise EnvironmentProblem("the --prove-fix run could not remove everything: " + "; ".join(after.leftover),
                                     "run `fwtrace cleanup`")
        block = _block(after)
        step = ProofStep(finding, n.command, after.reached, block, generations=tuple(after.generations),
                         unchanged=after.ruleset_unchanged)
        if after.reached and finding.scope == "client" and not applied:
            step = _other_source(report, after, log, run, on_extra, rng, finding, cmd, step)
        steps.append(step)
        if after.reached:
            break
        applied.append((finding.code, cmd))
        current = after
    first = _mark(report, steps)
    return first, tuple(steps)


def other_source(src: Any, avoid: tuple[Any, ...]) -> Any:
    """A second source next to the client (its neighbour address), not the target's own."""
    import ipaddress

    for k in (1, 2, 3, -1, -2):
        cand = ipaddress.ip_address(int(src) + k)
        if cand not in avoid and not (cand.is_loopback or cand.is_multicast or cand.is_unspecified):
            return cand
    return None


def _other_source(report: Any, proved: Any, log: Any, run: Callable[..., Any], on_extra: Optional[Callable[[], None]],
                  rng: random.Random, finding: Finding, cmd: str, step: ProofStep) -> ProofStep:
    """With the client fix in place (narrowed to a source port only, its own source condition
    kept), a probe from a second address, simulated as arriving where the client's did, must
    still be blocked: the fix lets in the client, not its neighbours."""
    from tracer.pipeline.driver import new_run_id

    first = report.results[0]
    spec = first.spec
    if finding.intent == "limit":
        # A fresh source is not over the limit, and its probe would use up part of it (a meter
        # entry, an xt_recent hit): nothing to learn, state to leave.
        return dataclasses.replace(step, other_by="not tried: a limit, not a ban; a second source's probe "
                                   "would only use up its own share of it")
    # The interface the client's probe arrived on (a chain that only drops may trace none: then
    # the proving run's, where the packet went on).
    iif = next((s.event.iif for r in (first, *proved.results) for s in r.steps if s.event.iif), None)
    other = other_source(spec.src, (spec.dst,))
    if iif is None or other is None:
        return step
    run_id = new_run_id()
    sport = rng.randrange(33000, 60000)
    n = narrow(cmd, other, sport, spec.proto, run_id, report.request.netns, keep_source=True)
    if n is None:
        return step
    req: ProbeRequest = dataclasses.replace(report.request, src=other, dst=spec.dst, count=1, log="", sport=sport,
                                            from_netns=None, local=False, via=iif)
    log.info("prove-fix", step="second source", src=str(other), rule=n.command)
    try:
        after = run(req, run_id, (n,), on_extra)
    except CommandError as e:
        return dataclasses.replace(step, other_src=str(other), other_by=f"could not be tried: {e}")
    if not after.cleanup_ok:
        from tracer.errors import EnvironmentProblem

        raise EnvironmentProblem("the --prove-fix run could not remove everything: " + "; ".join(after.leftover),
                                 "run `fwtrace cleanup`")
    from tracer.plan.narrow import marker

    # Let in by the fix: the fix's own rule decided the second source's probe.
    let_in = any(r.decided_by is not None and r.decided_by.rule is not None and marker(run_id) in r.decided_by.rule.text
                 for r in after.results)
    return dataclasses.replace(step, other_src=str(other), other_blocked=not let_in and bool(after.results),
                               other_by=_block(after) or "accepted by another rule",
                               unchanged=step.unchanged and after.ruleset_unchanged)


def _block(report: Any) -> str:
    for r in report.results:
        ref = r.decided_by
        if r.verdict.value in ("drop", "reject") and ref is not None:
            what = f"rule {ref.rule.number} `{ref.rule.display}`" if ref.rule else f"policy {(ref.policy or '?').upper()}"
            return f"{ref.family} {ref.table} {ref.chain} {what}"
        if r.verdict.value in ("drop", "reject", "unknown"):
            return f"verdict {r.verdict.value} (reply {r.reply.kind})"
    return "" if report.reached else "the service did not answer"


def _mark(report: Any, steps: list[ProofStep]) -> Any:
    if not steps:
        return report
    tried = steps[0]
    findings = tuple(dataclasses.replace(f, proven=tried.reached if not tried.error else None, proven_with=tried.narrowed)
                     if f == tried.finding else f for f in report.findings)
    return dataclasses.replace(report, findings=findings)


def runner(log: Any) -> Callable[..., Any]:
    """The probe run --prove-fix calls: tracer/pipeline/probe.py's, with the narrowed rules in its plan."""
    def run(req: ProbeRequest, run_id: str, extra: tuple[Narrowed, ...], on_extra: Optional[Callable[[], None]]) -> Any:
        from tracer.pipeline import cmdcheck
        from tracer.pipeline.driver import Run

        # The next step's fix comes from this run's findings: checked by its tool like the first.
        return cmdcheck.check(Run(req, log, run_id=run_id, extra=extra, on_extra=on_extra).execute(), req.netns)

    return run


def to_json(doc: dict[str, Any], steps: tuple[ProofStep, ...]) -> dict[str, Any]:
    return {**doc, "prove_fix": [s.to_json() for s in steps]}


def render(steps: tuple[ProofStep, ...], reached: bool = False) -> str:
    """The --prove-fix part of the text report."""
    if not steps:
        return ("prove-fix: nothing to try, the probe reached the service\n" if reached else
                "prove-fix: no finding has a fix fwtrace can apply narrowed to the probe (iptables or nft)\n")
    out = ["prove-fix (each rule narrowed to the probe's own source address and port, removed after):"]
    for i, s in enumerate(steps, 1):
        out.append(f"  {i}. [{s.finding.code}] tried: {s.narrowed}")
        if s.error:
            out.append(f"     could not be put in: {s.error}")
        elif s.reached:
            out.append("     proven: with this rule the probe reached the service")
        else:
            out.append(f"     not enough: next it is blocked by {s.blocked_by}")
        if s.other_src is not None and s.other_blocked is not None:
            out.append(f"     second source {s.other_src} with the same fix: "
                       + (f"not let in by it ({s.other_by or 'accepted by the ruleset itself'}): the fix lets in "
                          "only the client" if s.other_blocked
                          else "LET IN by the fix: it lets in more than the client"))
        elif s.other_by:
            out.append(f"     second source{' ' + s.other_src if s.other_src else ''}: {s.other_by}")
        if s.unchanged and len(s.generations) == 3:
            out.append(f"     removed: the ruleset is the one from before (its cleanup proof; generation "
                       f"{s.generations[0]} -> {s.generations[2]})")
        elif s.unchanged is False:
            out.append("     removed, but its cleanup proof found a difference: see `fwtrace cleanup`")
    return "\n".join(out) + "\n"
