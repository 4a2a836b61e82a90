"""Take changes back: one journaled undo, or everything runs whose process is gone left behind."""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

from tracer import system
from tracer.errors import FwtraceError
from tracer.trace import plan
from tracer.undo.journal import is_alive, list_journals
from tracer.undo.records import ReleaseShared, RemoveClsact, RestoreSysctl, Undo

_TABLE_RE = re.compile(r"^table inet (" + re.escape(plan.TABLE_PREFIX) + r"[0-9a-f]{8}) \{", re.M)


def apply_undo(undo: Undo) -> Optional[str]:
    """Carry out one undo; None when done (or nothing was left to undo), else the error."""
    try:
        with system.netns(undo.netns):
            if isinstance(undo, RestoreSysctl):
                system.sysctl_set(undo.key, undo.old)
                return None
            if isinstance(undo, ReleaseShared):
                from tracer.undo import shared

                shared.release(undo.key, undo.run_id, system.sysctl_set)
                return None
            if isinstance(undo, RemoveClsact):
                return _remove_clsact(undo.dev)
            done = system.run(list(undo.argv), input=undo.input or None, check=False)
    except FwtraceError as e:
        if undo.netns is not None and not os.path.exists(os.path.join(system.NETNS_RUN_DIR, undo.netns)):
            return None  # the namespace is gone, and everything that was in it with it
        return str(e)
    except OSError as e:
        return str(e)
    if done.returncode == 0 or any(g in done.stderr for g in undo.gone):
        return None
    return f"`{' '.join(undo.argv)}` failed: {done.stderr.strip().splitlines()[0] if done.stderr.strip() else done.returncode}"


def _remove_clsact(dev: str) -> Optional[str]:
    """Delete the clsact qdisc fwtrace added to dev, unless filters of somebody else's sit on it now
    (another program, or another fwtrace run, added them meanwhile): then it is theirs as well."""
    from tracer.inject.ingress import clsact_in_use

    shown = [system.run(["tc", "-j", "filter", "show", "dev", dev, where], check=False) for where in ("ingress", "egress")]
    if any("Cannot find device" in s.stderr for s in shown):
        return None
    if clsact_in_use(*(s.stdout if s.returncode == 0 else "" for s in shown)):
        return None
    done = system.run(["tc", "qdisc", "del", "dev", dev, "clsact"], check=False)
    if done.returncode == 0 or any(g in done.stderr for g in ("Cannot find device", "Invalid handle")):
        return None
    return f"`tc qdisc del dev {dev} clsact` failed: {done.stderr.strip() or done.returncode}"


def stale_tables(ruleset_text: str, alive: Optional[Callable[[int], bool]] = None) -> list[str]:
    """fwtrace tables whose recorded pid is not running (pure; `alive(pid)` is injected)."""
    check = alive or _pid_alive
    stale = []
    blocks = _TABLE_RE.split(ruleset_text)
    # split gives [before, name1, body1, name2, body2, ...]
    for name, body in zip(blocks[1::2], blocks[2::2]):
        m = plan.COMMENT_RE.search(body)
        if m is None or not check(int(m.group(2))):
            stale.append(name)
    return stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_journals() -> list[str]:
    return [path for path, doc in list_journals() if doc is None or not is_alive(doc)]


def warn_stale(log: Any) -> None:
    for path in stale_journals():
        log.warning("a dead fwtrace run left changes behind", journal=path, hint="run `fwtrace cleanup` to undo them")


def clean_journals(log: Any) -> list[str]:
    """Replay the undos of every dead run's journal; returns what was undone."""
    done: list[str] = []
    for path, doc in list_journals():
        if doc is not None and is_alive(doc):
            continue
        errors = []
        for undo in doc.undos() if doc is not None else []:
            err = apply_undo(undo)
            if err is None:
                done.append(f"{undo.what} (run {doc.run_id if doc else '?'})")
                log.info("undone", what=undo.what, netns=undo.netns)
            else:
                errors.append(err)
                log.error("undo failed", what=undo.what, error=err)
        if not errors:
            os.unlink(path)
    return done


def clean_tables(netns: Optional[str], log: Any) -> list[str]:
    """Tables a dead run left without a journal entry (e.g. the journal directory was lost)."""
    removed = []
    with system.netns(netns):
        text = system.run(["nft", "list", "tables"]).stdout
        names = [line.split()[-1] for line in text.splitlines() if line.startswith("table inet " + plan.TABLE_PREFIX)]
        for name in names:
            body = system.run(["nft", "list", "table", "inet", name]).stdout
            if stale_tables(body):
                system.run(["nft", "delete", "table", "inet", name])
                log.info("removed stale table", table=name, netns=netns)
                removed.append(f"table inet {name}")
    return removed


def clean_stale(netns: Optional[str], log: Any) -> list[str]:
    system.require_root()
    return clean_journals(log) + clean_tables(netns, log)
