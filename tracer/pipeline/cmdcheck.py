"""Check every iptables/nft command a report prints with the tool it is written for, on a copy.

The table each command names is listed in the target namespace and loaded into a throwaway
namespace (tracer.system.throwaway_netns), where the command runs as printed (nft: with
--check): what the tool refuses there it would refuse on the target. The target itself is only
read. What to copy and how the report changes: tracer/pipeline/fixcheck.py.
"""
from __future__ import annotations

from typing import Any, Optional

from tracer.pipeline import fixcheck
from tracer import system
from tracer.errors import FwtraceError


def check(report: Any, netns: Optional[str]) -> Any:
    """The report without the commands their tool refuses, and a caveat for each."""
    seqs = [tuple(c for c in (fixcheck.plan(cmd) for cmd in seq) if c is not None) for seq in fixcheck.printed(report)]
    if not seqs:
        return report
    refused: dict[str, str] = {}
    unchecked: dict[str, str] = {}
    saved: dict[tuple[str, ...], Any] = {}
    for seq in seqs:
        try:
            with system.netns(netns):
                for ch in seq:
                    if ch.save not in saved:
                        system.require_tools(ch.save[0], ch.load[0])
                        saved[ch.save] = _save(ch)
            with system.throwaway_netns():  # a fresh copy for each sequence
                why = _check_seq(seq, saved)
        except FwtraceError as e:
            why = (None, False, e.message)
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
