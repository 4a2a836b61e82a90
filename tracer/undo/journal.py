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

RUN_DIR = os.environ.get("FWTRACE_RUN_DIR", "/run/fwtrace")


@dataclass(frozen=True)
class Undo:
    """How to take one change back.

    kind "cmd": run argv (with input) in netns; a failure whose stderr contains one of `gone`
    means the thing is already gone. kind "sysctl": write value to key in netns. kind "shared":
    run `value` no longer needs the global switch `key` (tracer/undo/shared.py restores it when no
    live run does). kind "clsact": delete the clsact qdisc of device `key` in netns, unless
    somebody else's filters are on it. kind "nft-comment": delete the rules of chain `key`
    ("family table name") whose comment is `value` (--prove-fix's narrowed rules).
    """

    kind: str
    what: str  # for people: "table inet fwtrace_1a2b3c4d", "net.netfilter.nf_log_all_netns=0"
    netns: Optional[str] = None
    argv: tuple[str, ...] = ()
    input: str = ""
    gone: tuple[str, ...] = ()
    key: str = ""
    value: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Undo":
        return Undo(
            kind=str(d["kind"]), what=str(d.get("what", "")), netns=d.get("netns"),
            argv=tuple(d.get("argv", ())), input=str(d.get("input", "")), gone=tuple(d.get("gone", ())),
            key=str(d.get("key", "")), value=str(d.get("value", "")),
        )


def nft_undo(netns: Optional[str], batch: str, what: str) -> Undo:
    return Undo("cmd", what, netns, ("nft", "-f", "-"), batch, gone=("No such file or directory",))


def sysctl_undo(netns: Optional[str], key: str, old: str) -> Undo:
    return Undo("sysctl", f"{key}={old}", netns, key=key, value=old)


def shared_undo(netns: Optional[str], key: str, run_id: str) -> Undo:
    return Undo("shared", f"{key} (global: restored once no fwtrace run needs it)", netns, key=key, value=run_id)


@dataclass
class JournalDoc:
    """The journal's content (pure): who wrote it, and the undos in the order of the changes."""

    run_id: str
    pid: int
    starttime: str  # /proc/PID/stat field 22: tells a reused pid from ours
    argv: list[str]
    entries: list[dict[str, Any]] = field(default_factory=list)  # {"undo": ..., "state": ...}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "JournalDoc":
        return JournalDoc(str(d["run_id"]), int(d["pid"]), str(d.get("starttime", "")), list(d.get("argv", [])),
                          list(d.get("entries", [])))

    def undos(self) -> list[Undo]:
        """Pending and applied changes, newest first: the order to take them back in."""
        return [Undo.from_json(e["undo"]) for e in reversed(self.entries) if e.get("state") != "undone"]


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

    def __init__(self, run_id: str, argv: list[str], directory: str = RUN_DIR) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"{run_id}.json")
        pid = os.getpid()
        self.doc = JournalDoc(run_id, pid, process_starttime(pid) or "", argv)
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
        self.doc.entries.append({"undo": undo.to_json(), "state": "pending", "at": time.time()})
        self._write()
        return len(self.doc.entries) - 1

    def mark(self, index: int, state: str) -> None:
        self.doc.entries[index]["state"] = state
        self._write()

    def pending(self) -> list[tuple[int, Undo]]:
        return [(i, Undo.from_json(e["undo"])) for i, e in reversed(list(enumerate(self.doc.entries)))
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
