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
            "accept-overridden")


@dataclass(frozen=True)
class ProofStep:
    finding: Finding  # the finding whose fix was tried, as its run reported it
    narrowed: str  # the rule tried: the fix plus the probe's source address and port
    reached: bool
    blocked_by: str = ""  # not enough: what blocked the probe next ("ip filter FORWARD policy DROP")
    error: str = ""  # the fix could not be put in
    generations: tuple[int, ...] = ()  # the proving run's nft generations: before, after its adds, after all removed
    unchanged: Optional[bool] = None  # the proving run's ruleset_unchanged: only its own changes, all undone

    def to_json(self) -> dict[str, object]:
        return {"code": self.finding.code, "fix": self.finding.fix, "narrowed": self.narrowed, "proven": self.reached,
                "blocked_by": self.blocked_by or None, "error": self.error or None,
                "cleanup": {"ruleset_unchanged": self.unchanged, "generations": list(self.generations)}}


# The admin's own rules first: one that matches but is never reached, one that almost matched;
# then the rules fwtrace composes (policy, blocked-by-rule, ...) in report order.
_PREFERENCE = {"shadowed-rule": 0, "near-miss": 1}


def first_fix(findings: tuple[Finding, ...]) -> Optional[tuple[Finding, str]]:
    """The first blocking finding with a fix fwtrace can apply, and that fix as one command."""
    for f in sorted(findings, key=lambda f: _PREFERENCE.get(f.code, 2)):
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
        steps.append(ProofStep(finding, n.command, after.reached, block, generations=tuple(after.generations),
                               unchanged=after.ruleset_unchanged))
        if after.reached:
            break
        applied.append((finding.code, cmd))
        current = after
    first = _mark(report, steps)
    return first, tuple(steps)


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
        from tracer.pipeline.driver import Run

        return Run(req, log, run_id=run_id, extra=extra, on_extra=on_extra).execute()

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
        if s.unchanged and len(s.generations) == 3:
            out.append(f"     removed: the ruleset is the one from before (its cleanup proof; generation "
                       f"{s.generations[0]} -> {s.generations[2]})")
        elif s.unchanged is False:
            out.append("     removed, but its cleanup proof found a difference: see `fwtrace cleanup`")
    return "\n".join(out) + "\n"
