"""`probe --check-fixes`, the pure part: which of a fix's commands a shadow copy runs, which
samples count as collateral, when that contradicts the fix's scope, and the report with each
fix's collateral in it. No I/O: tracer/pipeline/checkfixes.py builds the shadow and probes it.

Collateral is every sampled (source, port) but the probed client on the probed service whose
verdict the fix changed. A fix whose scope is `client` must have none that gains; `service` none
that gains on another port (or protocol); `wider` says others gain. A contradiction is a bug in
the fix fwtrace built: the report says so, loudly, and never prints the fix as safe.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from typing import Any, Iterable, Optional, Sequence

from tracer.findings import Collateral, Fix, Sampled

# The tools the shadow runs a fix's command with (the owners' tools change a daemon's state too).
RUNNABLE = ("iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy", "nft",
            "ipset")
XT_RECENT = re.compile(r"echo [-+/][0-9a-fA-F.:]* > /proc/net/xt_recent/[\w.-]+")


def argv(command: str) -> Optional[list[str]]:
    """The command as the shadow runs it; None when its tool is not one the shadow runs."""
    if XT_RECENT.fullmatch(command.strip()):
        return ["sh", "-c", command.strip()]  # /proc/net is the shell's own namespace's (the shadow's)
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    # run as argv, never by a shell; a line a shell would split or redirect is not one of fwtrace's fixes
    if not words or words[0] not in RUNNABLE or any(ch in command for ch in ";|&<>`$"):
        return None
    return ["nft", command.split(None, 1)[1]] if words[0] == "nft" else words


def plan(fix: Fix) -> tuple[Optional[tuple[tuple[str, ...], ...]], str]:
    """(the argvs to run in the shadow, how it is checked) or (None, why it cannot be)."""
    if not fix.commands:
        return None, "it has no command (it changes no rule)"
    runs = {c: argv(c) for c in fix.commands}
    other = [c for c, a in runs.items() if a is None]
    ok = tuple(tuple(a) for a in runs.values() if a is not None)
    if not other:
        return ok, ""
    tool = other[0].split()[0]
    if fix.raw is not None and argv(fix.raw) is not None:
        if tuple(argv(fix.raw) or ()) not in ok:
            ok += (tuple(argv(fix.raw) or ()),)
        return ok, f"tried as its raw equivalent ({tool} is not run in the copy)"
    return None, f"{tool} is not run in a copy of the firewall (it changes {tool}'s own state too)"


def samples(probes: Iterable[Any], client: str, dport: int, proto: str) -> list[Any]:
    """The probes that count: all but the probed client on the probed service."""
    return [p for p in probes if not (p.source.addr == client and p.port == dport and p.proto == proto)]


NEIGHBOUR = "neighbour of the client"


def with_neighbour(probes: list[Any], client: str, dport: int, proto: str, local: set[str]) -> list[Any]:
    """The probes and, first, the client's neighbour on the probed service (192.0.2.2 -> 192.0.2.3):
    a fix written for the client's network instead of its address lets it in."""
    from tracer.plan.shadow_result import Probe, Source

    ip = ipaddress.ip_address(client)
    taken = local | {client} | {p.source.addr for p in probes}
    for cand in (int(ip) ^ 1, int(ip) + 1, int(ip) - 1, int(ip) + 2):
        try:
            a = ipaddress.ip_address(cand) if ip.version == 4 else ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        last = int(a) & 0xFF
        if str(a) not in taken and a.is_global == ip.is_global and (ip.version == 6 or last not in (0, 255)):
            return [Probe(Source(str(a), NEIGHBOUR), dport, proto), *probes]
    return probes


def contradicts(scope: str, changes: Sequence[Sampled], dport: int, proto: str) -> bool:
    gains = [c for c in changes if c.gains]
    if scope == "client":
        return bool(gains)
    if scope == "service":
        return any(c.port != dport or c.proto != proto for c in gains)
    return False


def result(fix: Fix, probes: Sequence[Any], before: Sequence[str], after: Sequence[str], dport: int, proto: str,
           note: str = "") -> Collateral:
    changes = tuple(Sampled(p.source.addr, p.source.label, p.port, p.proto, b, a)
                    for p, b, a in zip(probes, before, after) if b != a)
    return Collateral(changes, note, len({p.source.addr for p in probes}), len({(p.proto, p.port) for p in probes}),
                      contradicts(fix.scope, changes, dport, proto))


def to_check(report: Any) -> list[Fix]:
    """Each distinct fix the report prints (by its commands), in the report's order."""
    out: dict[tuple[str, ...], Fix] = {}
    for f in report.findings:
        for x in f.fixes:
            out.setdefault(x.commands, x)
    return list(out.values())


def with_collateral(report: Any, found: dict[tuple[str, ...], Collateral]) -> Any:
    """The report with each fix's collateral, and a caveat for every fix its collateral proves
    unsafe (its scope says fewer get in than do)."""
    if not found:
        return report
    caveats: list[str] = []
    findings = []
    for f in report.findings:
        fixes = tuple(dataclasses.replace(x, collateral=found[x.commands]) if x.commands in found else x for x in f.fixes)
        for x in fixes:
            c = x.collateral
            if c is not None and c.contradicts and c.changes is not None:
                who = "; ".join(s.who() for s in c.changes if s.gains)
                cav = (f"fix NOT safe: its scope says {x.scope} ({x.lets_in}), but in a copy of the firewall it also "
                       f"lets in {who}: {' ; '.join(x.commands)}")
                if cav not in caveats:
                    caveats.append(cav)
        findings.append(dataclasses.replace(f, fixes=fixes) if fixes != f.fixes else f)
    return dataclasses.replace(report, findings=tuple(findings), caveats=tuple(report.caveats) + tuple(caveats))


def not_checked(report: Any, why: str) -> Any:
    """Every fix with a command marked as not checked, and why (no shadow could be built)."""
    return with_collateral(report, {x.commands: Collateral(None, why) for x in to_check(report) if x.commands})
