"""Handlers for the changes and their undo: a journaled change, the undo of every change at
Finish, and the listings the cleanup proof compares (tracer/plan/verify.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.plan import commands as c
from tracer.system import listing
from tracer import system
from tracer.pipeline.drive import checkpoint
from tracer.system import shared
from tracer.plan.records import from_json

if TYPE_CHECKING:
    from tracer.pipeline.drive import RunState


def change(run: RunState, cmd: c.Change) -> Any:
    return run.change(cmd.undo, lambda: act(cmd.action), cmd.atomic)


def act(action: c.Action) -> Any:
    if isinstance(action, c.RunArgv):
        return system.run(list(action.argv), input=action.input)
    if isinstance(action, c.SetSysctl):
        return system.sysctl_set(action.key, action.value)
    with system.netns(system.HOME_NETNS):
        return shared.acquire(action.key, action.value, action.run_id, system.sysctl_get, system.sysctl_set)


def finish(run: RunState, cmd: c.Finish) -> c.Finished:
    run.finished = c.Finished()  # once, even when an undo raises
    port_left: list[str] = []
    try:
        errors = undo_all(run)
        if run.port_plan is not None:
            from tracer.system.simulate import leftovers

            port_left = leftovers(run.port_plan, run.run_id)  # compared in the content proof
    finally:
        run.unlock()
        run.stack.close()  # the sources and the injector
    tsock = run.sources[0] if run.sources else None
    undos = tuple(from_json(e["undo"]) for e in run.journal.doc.entries) if run.journal else ()
    run.finished = c.Finished(
        tuple(errors), b"".join(tsock.raw) if tsock else b"", bool(tsock and tsock.lost),
        tuple(run.kmsg.raw) if run.kmsg else (), b"".join(run.nflog.raw) if run.nflog else b"",
        tuple(port_left), undos)
    return run.finished


def undo_all(run: RunState) -> list[str]:
    """Take every journaled change back, newest first, each in its own try."""
    try:
        return _undo_pending(run)
    except KeyboardInterrupt:
        # It came before the signals were held (or is the held one, delivered after): the
        # undo still runs in full -- the signal handler ignores every later interrupt.
        _undo_pending(run)
        raise


def _undo_pending(run: RunState) -> list[str]:
    from tracer.system.cleanup import undo_journal

    run.undo_errors = []
    if run.journal is None:
        return run.undo_errors
    run.undo_errors = undo_journal(run.journal, run.log, lambda: checkpoint("cleanup"))
    return run.undo_errors


# --- the cleanup proof's listings -----------------------------------------------------------------
def nft_tables(run: RunState, cmd: c.NftTables) -> Any:
    return listing.nft_tables()


def proof_listing(run: RunState, cmd: c.ProofListing) -> Any:
    return listing.proof_state(cmd.scope, cmd.legacy_saved)


def shared_held(run: RunState, cmd: c.SharedHeld) -> bool:
    return shared.held(cmd.key, cmd.run_id)
