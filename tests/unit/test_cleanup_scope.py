"""`fwtrace cleanup --netns NS` picks the journals of the runs that probed NS (pure part)."""
from __future__ import annotations

from tracer.system.cleanup import probed
from tracer.system.journal import JournalDoc
from tracer.plan.records import from_json, in_netns, nft_undo, to_json


def doc(netns: str | None, entries_ns: list[str | None]) -> JournalDoc:
    entries = [{"undo": to_json(in_netns(nft_undo("delete table inet fwtrace_0badc0de\n", "table"), ns)),
                "state": "pending"} for ns in entries_ns]
    return JournalDoc("0badc0de", 1, "1", ["fwtrace"], entries, netns)


def test_journal_names_its_target() -> None:
    d = doc("a", ["a", "@home"])
    assert probed(d, "a") and not probed(d, "b") and probed(d, None)
    assert JournalDoc.from_json(d.to_json()).netns == "a"


def test_older_journals_are_told_by_their_undos() -> None:
    old = doc(None, ["@home", "b"])
    assert probed(old, "b") and not probed(old, "a")
    assert from_json(old.entries[1]["undo"]).netns == "b"
