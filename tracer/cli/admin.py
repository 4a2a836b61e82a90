"""`fwtrace demo`, `fwtrace doctor` and `fwtrace cleanup`: their parsers and commands (moved whole from tracer/cli/__init__.py)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from tracer.system import console
from tracer.errors import ExitStatus


EPILOG_CLEANUP = """\
With --netns NS: replays the journals of the dead runs that probed NS only, then removes
fwtrace tables of dead runs in NS. Without --netns: replays the journals of ALL dead runs,
whatever namespace they probed, then removes fwtrace tables of dead runs in the current namespace.
Runs still alive are never touched. Exit status 0 when everything was undone; 5 when an undo
failed (its journal is kept for the next try, and one line names it); 3 not root.
Also deletes the shadow namespaces (fwtrace-shadow<pid>-...) of dead what-if/replay runs.
"""


def _add_demo(sub: Any) -> None:
    de = sub.add_parser("demo", help="build a two-namespace lab with the classic shadowed-rule firewall, probe it as a simulated customer, apply the fix, probe from a real second host, tear it down")
    de.add_argument("--json", action="store_true", help="print one JSON document instead of the text: {demo, exit_status "
                    "(the demo's own), probes[] (each probe's document, as `fwtrace probe --json` prints it, with its "
                    "command), applied[] (the fix commands run in the lab between them)}")
    de.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_doctor(sub: Any) -> None:
    dr = sub.add_parser("doctor", help="say what this machine supports (nftrace, nf_log, BTF, tracefs, kprobes, fentry, "
                        "bcc and headers, drop reasons) and what fwtrace will therefore do; exit 0 when probing works")
    dr.add_argument("--json", action="store_true", help="print the facts as one JSON document")
    dr.add_argument("--no-load", action="store_true", help="do not compile and load the eBPF programs to prove they work")


def _add_cleanup(sub: Any) -> None:
    cl = sub.add_parser("cleanup", help="remove instrumentation left by fwtrace runs whose process is gone",
                        epilog=EPILOG_CLEANUP, formatter_class=argparse.RawDescriptionHelpFormatter)
    cl.add_argument("--netns", help="undo only the dead runs that probed this namespace, and remove stale fwtrace "
                    "tables there (default: every dead run's changes, and stale tables of the current namespace)")


def cmd_demo(ns: argparse.Namespace, log: Any) -> int:
    from tracer.cli import lab

    return lab.demo(log, as_json=ns.json, color=False if ns.no_color else None)


def cmd_doctor(ns: argparse.Namespace, log: Any) -> int:
    from tracer.pipeline import doctor

    facts = doctor.gather(load=not ns.no_load)
    sys.stdout.write(doctor.dumps(facts) + "\n" if ns.json else doctor.render(facts))
    return ExitStatus.OK if doctor.verdict(facts) else ExitStatus.ENVIRONMENT


def cmd_cleanup(ns: argparse.Namespace, log: Any) -> int:
    from tracer.system import cleanup

    kept: list[str] = []
    removed = cleanup.clean_stale(ns.netns, log, kept)
    scope = f"that probed {ns.netns}" if ns.netns else "(all namespaces)"
    written = console.write_out(f"undid {len(removed)} change(s) left by dead fwtrace runs {scope}"
                                + (": " + "; ".join(removed) if removed else "") + "\n")
    if kept:  # never 0 with a journal left: the next run would warn about it again
        console.say("fwtrace: error: cleanup incomplete: " + " | ".join(kept)
                    + " (hint: undo what it names by hand, then delete the journal)")
        return ExitStatus.LEFTOVER
    return ExitStatus.ENVIRONMENT if written is not None else ExitStatus.OK
