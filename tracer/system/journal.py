"""The run journal: every change is written down, with how to undo it, before it is made.

One JSON file per run under /run/fwtrace/ (tmpfs: it does not outlive a reboot, and neither does
anything it describes). A run undoes its own entries in reverse order, each in its own `try`,
and removes the file once all succeeded; after a crash or SIGKILL the file stays, and
`fwtrace cleanup` (or the next run's warning) finds it by its dead pid and replays the undos.
Every undo is idempotent: running it for a change that never happened, or twice, is harmless.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from tracer.plan.records import Undo, from_json, to_json

RUN_DIR = os.environ.get("FWTRACE_RUN_DIR", "/run/fwtrace")


@dataclass
class JournalDoc:
    """The journal's content (pure): who wrote it, and the undos in the order of the changes."""

    run_id: str
    pid: int
    starttime: str  # /proc/PID/stat field 22: tells a reused pid from ours
    argv: list[str]
    entries: list[dict[str, Any]] = field(default_factory=list)  # {"undo": ..., "state": ...}
    netns: Optional[str] = None  # the namespace the run probed (`fwtrace cleanup --netns` picks by it)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "JournalDoc":
        return JournalDoc(str(d["run_id"]), int(d["pid"]), str(d.get("starttime", "")), list(d.get("argv", [])),
                          list(d.get("entries", [])), d.get("netns"))

    def undos(self) -> list[Undo]:
        """Pending and applied changes, newest first: the order to take them back in."""
        return [from_json(e["undo"]) for e in reversed(self.entries) if e.get("state") != "undone"]


def process_starttime(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # comm (field 2) may hold spaces and parentheses: split after its closing ")".
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_alive(doc: JournalDoc) -> bool:
    return process_starttime(doc.pid) == doc.starttime


class Journal:
    """The journal file of the running process's run."""

    def __init__(self, run_id: str, argv: list[str], directory: str = RUN_DIR, netns: Optional[str] = None) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"{run_id}.json")
        pid = os.getpid()
        self.doc = JournalDoc(run_id, pid, process_starttime(pid) or "", argv, netns=netns)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._write()

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.doc.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a kill leaves the old or the new journal, never half

    def record(self, undo: Undo) -> int:
        """Write the undo down before the change is made; returns the entry's index."""
        self.doc.entries.append({"undo": to_json(undo), "state": "pending", "at": time.time()})
        self._write()
        return len(self.doc.entries) - 1

    def mark(self, index: int, state: str) -> None:
        self.doc.entries[index]["state"] = state
        self._write()

    def pending(self) -> list[tuple[int, Undo]]:
        return [(i, from_json(e["undo"])) for i, e in reversed(list(enumerate(self.doc.entries)))
                if e["state"] != "undone"]

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def list_journals(directory: str = RUN_DIR) -> list[tuple[str, Optional[JournalDoc]]]:
    """(path, parsed journal or None when unreadable) for every journal in the directory."""
    out: list[tuple[str, Optional[JournalDoc]]] = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                out.append((path, JournalDoc.from_json(json.load(f))))
        except (OSError, ValueError, KeyError, TypeError):
            out.append((path, None))
    return out
