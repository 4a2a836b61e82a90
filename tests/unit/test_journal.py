"""Typed undo records survive the journal's JSON, so `fwtrace cleanup` can replay a crashed run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.system.journal import Journal, JournalDoc
from tracer.plan.records import (
    ReleaseShared,
    RemoveClsact,
    RestoreSysctl,
    RunCommand,
    from_json,
    in_netns,
    nft_undo,
    to_json,
)

RECORDS = [
    nft_undo("delete table inet fwtrace_0badc0de\n", "table inet fwtrace_0badc0de"),
    RunCommand("veth fwi0badc0de (injection port)", ("ip", "link", "del", "fwi0badc0de"), gone=("Cannot find device",)),
    RestoreSysctl("net.netfilter.nf_conntrack_log_invalid", "0"),
    ReleaseShared("net.netfilter.nf_log_all_netns", "0badc0de", "@home"),
    RemoveClsact("eth0"),
]


@pytest.mark.parametrize("undo", RECORDS, ids=lambda u: u.kind)
def test_record_round_trips_through_json(undo: object) -> None:
    stamped = in_netns(undo, "srv")  # type: ignore[arg-type]
    assert from_json(json.loads(json.dumps(to_json(stamped)))) == stamped


def test_journals_written_before_the_records_were_typed_still_read() -> None:
    # As the untyped Undo(kind, what, netns, argv, input, gone, key, value) wrote them.
    old = {"kind": "sysctl", "what": "net.netfilter.nf_log.2=NONE", "netns": "srv", "argv": [], "input": "",
           "gone": [], "key": "net.netfilter.nf_log.2", "value": "NONE"}
    assert from_json(old) == RestoreSysctl("net.netfilter.nf_log.2", "NONE", "srv")
    assert to_json(from_json(old)) == old
    clsact = {"kind": "clsact", "what": "clsact qdisc on eth0", "netns": None, "key": "eth0", "value": ""}
    assert from_json(clsact) == RemoveClsact("eth0")


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        from_json({"kind": "reboot"})


def test_journal_file_gives_back_the_pending_records_newest_first(tmp_path: Path) -> None:
    j = Journal("0badc0de", ["fwtrace", "probe"], str(tmp_path))
    for undo in RECORDS:
        j.record(undo)
    j.mark(1, "undone")
    doc = JournalDoc.from_json(json.loads(Path(j.path).read_text()))
    assert doc.undos() == [RECORDS[4], RECORDS[3], RECORDS[2], RECORDS[0]]
    assert [u for _, u in j.pending()] == doc.undos()
