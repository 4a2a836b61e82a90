"""Check every iptables/nft command a report prints with the tool it is written for, on a copy.

The table each command names is listed in the target namespace and loaded into a throwaway
namespace (tracer.system.throwaway_netns), where the command runs as printed: what the tool
refuses there it would refuse on the target. One namespace serves the whole run: the tables are
listed first, and the copy is reset before each sequence. The target itself is only read. What
to copy and how the report changes: tracer/pipeline/fixcheck.py.
"""
from __future__ import annotations

from typing import Any, Optional

from tracer.pipeline import fixcheck
from tracer import system
from tracer.errors import EnvironmentProblem, FwtraceError


def check(report: Any, netns: Optional[str]) -> Any:
    """The report without the commands their tool refuses, and a caveat for each."""
    seqs = [tuple(c for c in (fixcheck.plan(cmd) for cmd in seq) if c is not None) for seq in fixcheck.printed(report)]
    if not seqs:
        return report
    refused: dict[str, str] = {}
    unchecked: dict[str, str] = {}
    saved: dict[tuple[str, ...], Any] = {}
    failed: dict[tuple[str, ...], str] = {}  # a table that could not be listed: why
    with system.netns(netns):  # every table any sequence names, listed once, before the copy exists
        for seq in seqs:
            for ch in seq:
                if ch.save in saved or ch.save in failed:
                    continue
                try:
                    system.require_tools(ch.save[0], ch.load[0])
                    saved[ch.save] = _save(ch)
                except FwtraceError as e:
                    failed[ch.save] = e.message
    results: list[Optional[tuple[Optional[fixcheck.Check], bool, str]]] = []
    try:
        # One throwaway namespace for the run (issue 25: one per sequence cost a namespace and a
        # copy each); before each sequence it is reset to a fresh namespace's state (_reset).
        with system.throwaway_netns():
            for i, seq in enumerate(seqs):
                bad = next((ch for ch in seq if ch.save in failed), None)
                if bad is not None:
                    results.append((None, False, failed[bad.save]))
                    continue
                if i:
                    _reset()
                results.append(_check_seq(seq, saved))
    except FwtraceError as e:
        results += [(None, False, e.message)] * (len(seqs) - len(results))
    for seq, why in zip(seqs, results):
        if why is None:
            continue
        bad, is_refusal, words = why
        for ch in seq:
            if not is_refusal:
                unchecked[ch.command] = words
            elif ch is bad:
                refused[ch.command] = words
            else:  # the others of the same fix are not printed alone
                refused.setdefault(ch.command, f"part of a fix whose `{bad.command}` was refused")
    return fixcheck.without(report, refused, unchecked)


def _reset() -> None:
    """The copy as a new namespace has it: no nf_tables table (iptables-nft's are nf_tables
    tables too), and every x_tables table a sequence instantiated emptied, its built-in chains'
    policies ACCEPT (a table, once there, cannot be removed; empty it is what a first command
    meets in a new namespace, which instantiates it so)."""
    done = system.run(["nft", "flush", "ruleset"], check=False, timeout=10)
    if done.returncode != 0:
        raise EnvironmentProblem(f"the copy could not be reset: {_first(done.stderr)}")
    for names, tool in (("ip_tables_names", "iptables-legacy-restore"), ("ip6_tables_names", "ip6tables-legacy-restore")):
        text = fixcheck.empty_tables(system.proc_net(names).split())
        if text:
            done = system.run([tool], input=text, check=False, timeout=10)
            if done.returncode != 0:
                raise EnvironmentProblem(f"the copy could not be reset: {_first(done.stderr)}")


def _check_seq(seq: tuple[fixcheck.Check, ...], saved: dict[tuple[str, ...], Any]
               ) -> Optional[tuple[Optional[fixcheck.Check], bool, str]]:
    """None: every command accepted; (the command, True, the tool's words): refused; (_, False,
    why): could not be checked."""
    loaded: set[tuple[str, ...]] = set()
    for ch in seq:
        listing = saved[ch.save]
        if ch.save in loaded or listing.returncode != 0 or not listing.stdout.strip():
            continue  # no such table on the target: the command meets there what it meets here
        loaded.add(ch.save)
        done = system.run(list(ch.load), input=listing.stdout, check=False, timeout=10)
        if done.returncode != 0:
            return None, False, f"its table could not be copied: {_first(done.stderr)}"
    for ch in seq:
        done = system.run(list(ch.argv), check=False, timeout=10)
        if done.returncode != 0:
            return ch, True, _first(done.stderr) or f"exit status {done.returncode}"
    return None


def _save(ch: fixcheck.Check) -> Any:
    """The table's text in the target; nothing for an x_tables table that is not there: reading
    it with iptables-legacy-save would create it (the kernel instantiates a table on first use)."""
    if ch.tool.endswith("-legacy"):
        names = system.proc_net("ip6_tables_names" if ch.tool.startswith("ip6") else "ip_tables_names").split()
        if ch.save[-1] not in names:
            return system.Completed(ch.save, "", "", 0)
    return system.run(list(ch.save), check=False, timeout=10)


def _first(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""
