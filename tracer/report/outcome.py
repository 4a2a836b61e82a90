"""What a probe run found, as one value: the report, its evidence, and the exit status it maps to.

Pure: the live run (tracer/pipeline/driver.py), the offline replay of a bundle (tracer/pipeline/evidence.py) and the
tests all make a `ProbeReport` through `build_report`, the one place its parts are put together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from tracer import diagnose
from tracer.diagnose.ftp import FtpSession
from tracer.errors import ExitStatus
from tracer.model import Finding, Mode, PacketResult, ProbeRequest


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
    ebpf: tuple[bytes, ...] = ()  # the eBPF ring buffer's records as read (tracer/collect/ebpf_decode.py)
    ebpf_names: Optional[dict[str, object]] = None  # what their addresses, stacks, ifindexes meant


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
    evidence: Optional[Evidence] = field(default=None, repr=False)
    generations: tuple[int, ...] = ()  # nft ruleset generation before, after adding, after removing
    mode: Optional[Mode] = None  # how the probe was sent in the end (None: as the request says)
    via: Optional[str] = None  # simulated ingress: the interface it arrived on
    caveats: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the run did beyond its own table (sysctls set for the run, ...)
    # nft transactions fwtrace itself committed between its add and its delete: iptables-nft
    # inserting and deleting the --log rules, one each
    own_commits: int = 0
    legacy_unchanged: Optional[bool] = None  # the x_tables part of the content proof (None: no x_tables tables)
    unchanged: Optional[bool] = None  # the content proof (tracer/plan/proof.py): no object differs
    checked: tuple[str, ...] = ()  # what the content proof compared
    ebpf: str = ""  # "" not used, "loaded", "unavailable: why"
    refused: tuple[str, ...] = ()  # fix commands their own tool refused (tracer/pipeline/fixcheck.py): never printed
    # --from ssh://: what the client host's sockets saw of each probe: (sport, kind, text), kind one
    # of syn-ack, refused, icmp, reply, timeout, local, error, unknown
    client: tuple[tuple[int, str, str], ...] = ()
    app: Optional[FtpSession] = None  # --app ftp: the control session and its passive data ports

    @property
    def ruleset_unchanged(self) -> Optional[bool]:
        """The content proof alone: every object fwtrace touched (tables, chains, sets, rules
        with handles, x_tables tables, sysctls, tc state) equals its listing before the run."""
        return self.unchanged

    @property
    def other_writers(self) -> Optional[bool]:
        """Did anybody but fwtrace commit to nf_tables during the run? The generations must show
        exactly fwtrace's own transactions: its add, its --log rules in and out, its delete."""
        g = self.generations
        if len(g) != 3:
            return None
        return not (g[1] == g[0] + 1 and g[2] == g[1] + 1 + self.own_commits)

    @property
    def reached(self) -> bool:
        return bool(self.results) and all(diagnose.reached(r, list(self.findings)) for r in self.results)

    def to_json(self) -> dict[str, Any]:
        req = self.request
        return {
            "run_id": self.run_id,
            "target_netns": req.netns,
            "from_netns": req.from_netns,
            "mode": str(self.mode or req.mode),
            "via": self.via,
            "caveats": list(self.caveats),
            "log": req.log,
            "packets": [r.to_json() for r in self.results],
            "findings": [f.to_json() for f in self.findings],
            "conclusion": " ".join(dict.fromkeys(self.conclusions)),
            "reached": self.reached,  # as tracer.diagnose.reached defines it; the exit status follows it
            "instrumentation": list(self.instrumentation),
            "events_lost": self.lost_events,
            "notes": list(self.notes),
            "ebpf": {"mode": req.ebpf, "status": self.ebpf or "not used"},
            "cleanup": {"ok": self.cleanup_ok, "leftover": list(self.leftover),
                        "ruleset_unchanged": self.ruleset_unchanged, "generations": list(self.generations),
                        "other_writers": self.other_writers, "legacy_unchanged": self.legacy_unchanged,
                        "checked": list(self.checked)},
        } | ({"from_ssh": req.from_ssh, "client_saw": [{"sport": p, "saw": k, "text": t} for p, k, t in self.client]}
             if req.from_ssh is not None else {}) | ({"app": self.app.to_json()} if self.app is not None else {})

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def explain(results: Sequence[PacketResult], ctx: diagnose.Context) -> tuple[tuple[Finding, ...], tuple[str, ...]]:
    """The findings of all packets (each once, in order) and one conclusion for the run, which
    says so when the packets fared differently (--count N)."""
    findings: list[Finding] = []
    conclusions = []
    reached = []
    for r in results:
        fs = diagnose.diagnose(r, ctx)
        conclusions.append(diagnose.conclusion(r, fs))
        reached.append(diagnose.reached(r, fs))
        findings.extend(f for f in fs if f not in findings)
    return tuple(findings), (diagnose.overall(conclusions, reached),)


def build_report(request: ProbeRequest, run_id: str, results: Sequence[PacketResult], ctx: diagnose.Context, *,
                 leftover: Sequence[str] = (), generations: Sequence[int] = (), instrumentation: Sequence[str] = (),
                 lost_events: bool = False, evidence: Optional[Evidence] = None, mode: Optional[Mode] = None,
                 via: Optional[str] = None, caveats: Sequence[str] = (), notes: Sequence[str] = (),
                 own_commits: int = 0, legacy_unchanged: Optional[bool] = None,
                 unchanged: Optional[bool] = None, checked: Sequence[str] = (), ebpf: str = "",
                 client: Sequence[tuple[int, str, str]] = (), app: Optional[FtpSession] = None,
                 app_findings: Sequence[Finding] = ()) -> ProbeReport:
    """The one place a report is put together: the packets explained, the cleanup proof beside."""
    findings, conclusions = explain(results, ctx)
    findings += tuple(f for f in app_findings if f not in findings)
    return ProbeReport(
        request=request, run_id=run_id, results=tuple(results), findings=findings, cleanup_ok=not leftover,
        leftover=tuple(leftover), instrumentation=tuple(instrumentation), lost_events=lost_events,
        conclusions=conclusions, evidence=evidence, generations=tuple(generations), mode=mode, via=via,
        caveats=tuple(caveats), notes=tuple(notes), own_commits=own_commits, legacy_unchanged=legacy_unchanged,
        unchanged=unchanged, checked=tuple(checked), ebpf=ebpf, client=tuple(client), app=app,
    )


def exit_status(report: ProbeReport) -> ExitStatus:
    """httpie-style: the status a finished probe exits with (errors map theirs in cli.main)."""
    if not report.cleanup_ok:
        return ExitStatus.LEFTOVER  # the report names what is left and the command that removes it
    if report.app is not None and report.app.connected and report.app.error is not None:
        return ExitStatus.APP_PROTOCOL  # --app ftp: the service accepted the connection but speaks no FTP
    return ExitStatus.OK if report.reached else ExitStatus.BLOCKED
