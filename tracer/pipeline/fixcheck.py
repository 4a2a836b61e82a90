"""Every iptables/nft command a report prints, checked by its own tool before it is printed. Pure.

A generated fix that its tool refuses (Docker's jump folded into its rule once gave `-o docker0`
twice: "multiple -o flags not allowed") is worse than none: the admin pastes it and it fails,
and --prove-fix would try it. tracer/pipeline/cmdcheck.py runs each command as printed against a copy of
the table it names, in a throwaway network namespace (the target is never touched: even
`iptables-legacy-restore --test` instantiates the tables it names); this module says what to
copy and how to run the check, and takes the refused commands out of the report. Each sequence of commands (one finding's fix)
runs in order, every command for real, in a copy reset to a new namespace's state before it
(`empty_tables`): one throwaway namespace per run, thrown away at its end.
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from tracer.plan.shadow import empty_tables  # noqa: F401  (one copy: the shadow resets with it too)

IPT_TOOLS = ("iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy")


@dataclass(frozen=True)
class Check:
    command: str  # as printed
    tool: str  # the tool it is written for: "iptables", "nft", ...
    save: tuple[str, ...]  # argv, run in the target: the text of the table the command names
    load: tuple[str, ...]  # argv, run in the copy with that text on stdin
    argv: tuple[str, ...]  # argv, run in the copy: the command itself


def plan(command: str) -> Optional[Check]:
    """How to check `command`; None when it is not an iptables/nft command (ufw, firewall-cmd: their
    tools are not run here) or names no table fwtrace can copy."""
    try:
        argv = shlex.split(command)  # what a shell hands the tool when the line is pasted
    except ValueError:
        argv = []
    if not argv:
        return None
    tool = argv[0]
    if tool in IPT_TOOLS:
        table = "filter"
        if "-t" in argv[1:-1]:
            table = argv[argv.index("-t") + 1]
        elif "--table" in argv[1:-1]:
            table = argv[argv.index("--table") + 1]
        return Check(command, tool, (f"{tool}-save", "-t", table), (f"{tool}-restore",), tuple(argv))
    if tool == "nft" and len(argv) >= 6 and argv[1] == "add" and argv[2:4] == ["ct", "helper"]:  # a helper object
        family, table = (argv[4], argv[5]) if argv[4] in _NFT_FAMILIES else ("ip", argv[4])
        return Check(command, "nft", ("nft", "list", "table", family, table), ("nft", "-f", "-"), tuple(argv))
    if tool == "nft" and len(argv) >= 4 and argv[2] in ("rule", "element", "chain", "set", "map"):
        verb = argv[1]
        if verb not in ("add", "insert", "replace", "delete", "create"):
            return None
        family, table = (argv[3], argv[4]) if len(argv) > 4 and argv[3] in _NFT_FAMILIES else ("ip", argv[3])
        return Check(command, "nft", ("nft", "list", "table", family, table), ("nft", "-f", "-"), tuple(argv))
    return None


_NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


def printed(report: Any) -> list[tuple[str, ...]]:
    """The iptables/nft commands the report prints, as the sequences they are meant to be run in
    (a finding's commands in order: `-I INPUT 4 ...` then `-D INPUT 9`, which counts the rule the
    first put in), each once: the findings', the rule --prove-fix tries for one, the owners' fixes."""
    from tracer.render import jsondoc

    seqs: list[tuple[str, ...]] = []
    for f in report.findings:
        seqs += [tuple(f.commands), (f.proof_rule,) if f.proof_rule else ()]
    for r in report.results:
        of = jsondoc.owner_fix(report, r)
        if of is not None:
            seqs += [(c,) for c in of.commands]
    out: list[tuple[str, ...]] = []
    for seq in seqs:
        seq = tuple(c for c in seq if plan(c) is not None)
        if seq and seq not in out:
            out.append(seq)
    return out


def without(report: Any, refused: dict[str, str], unchecked: dict[str, str]) -> Any:
    """The report with the refused commands taken out (from the findings' commands, their fix
    text and --prove-fix's rule; owners' fixes through `report.refused`) and a caveat for each
    refused or unchecked one. `refused`/`unchecked`: command -> the tool's words / why not checked."""
    if not refused and not unchecked:
        return report
    findings = []
    for f in report.findings:
        if not any(c in refused for c in (*f.commands, f.proof_rule)):
            findings.append(f)
            continue
        fix = _blank(f.fix, refused) if f.fix else f.fix
        fixes = tuple(dataclasses.replace(x, commands=tuple(c for c in x.commands if c not in refused),
                                          raw=None if x.raw in refused else x.raw, text=_blank(x.text, refused))
                      for x in getattr(f, "fixes", ()) if not x.commands or any(c not in refused for c in x.commands))
        findings.append(dataclasses.replace(f, fix=fix, commands=tuple(c for c in f.commands if c not in refused),
                                            fixes=fixes,
                                            proof_rule=None if f.proof_rule in refused else f.proof_rule))
    caveats = [f"a fix fwtrace built was refused by {_tool(c)} on a copy of the table, so it is not shown: {c} "
               f"({why})" for c, why in refused.items()]
    caveats += [f"fix not checked by its tool ({why}): {c}" for c, why in unchecked.items()]
    return dataclasses.replace(report, findings=tuple(findings), refused=tuple(refused),
                               caveats=tuple(report.caveats) + tuple(caveats))


def _blank(text: str, refused: dict[str, str]) -> str:
    for c in refused:
        text = text.replace(c, "(no command: the one fwtrace built was refused by its tool, see the caveats)")
    return text


def _tool(command: str) -> str:
    return command.split()[0]
