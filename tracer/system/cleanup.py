"""Take changes back: one journaled undo, or everything runs whose process is gone left behind."""
from __future__ import annotations

import contextlib
import os
import re
import signal
from typing import Any, Callable, Iterator, Optional

from tracer import system
from tracer.system.console import quietly
from tracer.errors import FwtraceError
from tracer.plan import plan
from tracer.system.journal import Journal, JournalDoc, is_alive, list_journals
from tracer.plan.records import (
    ForgetProbes,
    ReleaseShared,
    RemoveClsact,
    RemoveCommented,
    RestoreSysctl,
    Undo,
)

# Test-only fault hook: an undo whose description contains this text is skipped and reported as
# done, like a buggy undo would be. The content proof (tracer/plan/proof.py) must catch it.
SKIP_UNDO_ENV = "FWTRACE_TEST_SKIP_UNDO"

_TABLE_RE = re.compile(r"^table inet (" + re.escape(plan.TABLE_PREFIX) + r"[0-9a-f]{8}) \{", re.M)


def apply_undo(undo: Undo) -> Optional[str]:
    """Carry out one undo; None when done (or nothing was left to undo), else the error."""
    skip = os.environ.get(SKIP_UNDO_ENV)
    if skip and skip in undo.what:
        return None
    try:
        with system.netns(undo.netns):
            if isinstance(undo, RestoreSysctl):
                system.sysctl_set(undo.key, undo.old)
                return None
            if isinstance(undo, ReleaseShared):
                from tracer.system import shared

                shared.release(undo.key, undo.run_id, system.sysctl_set)
                return None
            if isinstance(undo, RemoveClsact):
                return _remove_clsact(undo.dev)
            if isinstance(undo, RemoveCommented):
                return _remove_commented(undo.chain, undo.marker)
            if isinstance(undo, ForgetProbes):
                from tracer.system.listing import forget

                return forget(undo.addr, undo.recent, undo.dynsets, undo.keep)
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


def _remove_commented(chain: str, marker: str) -> Optional[str]:
    """Delete the rules of `chain` ("family table name") whose comment is `marker` (--prove-fix:
    nft hands out a rule's handle only after the add, so the journal names the rule by its comment)."""
    listed = system.run(["nft", "-a", "list", "chain", *chain.split()], check=False)
    if listed.returncode != 0:
        return None if "No such file or directory" in listed.stderr else listed.stderr.strip() or str(listed.returncode)
    for handle in re.findall(r'comment "' + re.escape(marker) + r'".*# handle (\d+)', listed.stdout):
        done = system.run(["nft", "delete", "rule", *chain.split(), "handle", handle], check=False)
        if done.returncode != 0 and "No such file or directory" not in done.stderr:
            return f"`nft delete rule {chain} handle {handle}` failed: {done.stderr.strip() or done.returncode}"
    return None


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
    check = alive or system.pid_alive
    stale = []
    blocks = _TABLE_RE.split(ruleset_text)
    # split gives [before, name1, body1, name2, body2, ...]
    for name, body in zip(blocks[1::2], blocks[2::2]):
        m = plan.COMMENT_RE.search(body)
        if m is None or not check(int(m.group(2))):
            stale.append(name)
    return stale


def stale_journals() -> list[str]:
    return [path for path, doc in list_journals() if doc is None or not is_alive(doc)]


def warn_stale(log: Any) -> None:
    for path in stale_journals():
        log.warning("a dead fwtrace run left changes behind", journal=path, hint="run `fwtrace cleanup` to undo them")


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Cleanup must not be cut short by a second Ctrl-C: hold INT/TERM/HUP until it is done."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def undo_journal(journal: Journal, log: Any, after_each: Callable[[], None] = lambda: None) -> list[str]:
    """Take back every pending change of a live run's journal, newest first, with the signals
    held; each step in its own try, whatever the logger or the journal's disk does (a closed or
    full stderr must not keep the next undo from running). Returns what could not be undone."""
    errors: list[str] = []
    with signals_blocked():
        for index, undo in journal.pending():
            try:
                err = apply_undo(undo)
            except BaseException as e:
                err = f"{type(e).__name__}: {e}"
            if err is None:
                quietly(journal.mark, index, "undone")
                quietly(log.info, "undone", what=undo.what, netns=undo.netns)
            else:
                errors.append(f"{undo.what}: {err}")
            quietly(after_each)
        if not errors:
            quietly(journal.remove)
    return errors


def probed(doc: JournalDoc, netns: Optional[str]) -> bool:
    """Did the run of this journal probe `netns` (None: every run counts)? Journals written
    before the target was recorded tell it by the namespaces their undos run in."""
    if netns is None:
        return True
    if doc.netns is not None:
        return doc.netns == netns
    return any(e.get("undo", {}).get("netns") == netns for e in doc.entries)


def clean_journals(log: Any, netns: Optional[str] = None, kept: Optional[list[str]] = None) -> list[str]:
    """Replay the undos of every dead run's journal (of the runs that probed `netns` only, when
    given); returns what was undone. Each journal's undos run with signals held, each in its own
    try. A journal with an undo that failed is kept (the next cleanup tries again); `kept` gets
    one line for each: the journal and what could not be undone."""
    done: list[str] = []
    kept = [] if kept is None else kept
    for path, doc in list_journals():
        if doc is not None and (is_alive(doc) or not probed(doc, netns)):
            continue
        if doc is None and netns is not None:
            continue  # unreadable: it cannot say which namespace it probed
        errors = []
        with signals_blocked():
            for undo in doc.undos() if doc is not None else []:
                try:
                    err = apply_undo(undo)
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"
                if err is None:
                    done.append(f"{undo.what} (run {doc.run_id if doc else '?'})")
                    quietly(log.info, "undone", what=undo.what, netns=undo.netns)
                else:
                    errors.append(f"{undo.what}: {err}")
                    quietly(log.error, "undo failed", what=undo.what, error=err)
            if errors:
                kept.append(f"{path} kept: could not undo {'; '.join(errors)}")
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
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


def clean_stale(netns: Optional[str], log: Any, kept: Optional[list[str]] = None) -> list[str]:
    """What was undone; `kept` gets the journals that could not be undone in full."""
    system.require_root()
    from tracer.system import shadow

    return clean_journals(log, netns, kept) + clean_tables(netns, log) + shadow.remove_stale()
