"""Pure parts of the evidence bundle and the CLI around it: counter deltas from captured
listings, --redact, the progress proxy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tracer.collect import counters
from tracer.report.redact import Redactor
from tracer.render.progress import Progress

DATA = Path(__file__).parent.parent / "data"


def test_counter_deltas_from_real_listings() -> None:
    nft = (DATA / "nft-list-counters-seed.txt").read_text()
    after = nft.replace("counter packets 0 bytes 0 reject with icmp type host-prohibited # handle 11",
                        "counter packets 1 bytes 60 reject with icmp type host-prohibited # handle 11")
    assert counters.deltas(counters.nft_counters(nft), counters.nft_counters(after), "nft") == [
        "nft ip filter INPUT: +1 packets +60 bytes: counter reject with icmp type host-prohibited"]
    save = (DATA / "iptables-save-c-seed.txt").read_text()
    moved = save.replace("[0:0] -A INPUT -j REJECT", "[2:120] -A INPUT -j REJECT").replace(":OUTPUT ACCEPT [4:200]",
                                                                                          ":OUTPUT ACCEPT [5:268]")
    assert counters.deltas(counters.save_counters(save), counters.save_counters(moved), "iptables") == [
        "iptables filter OUTPUT: +1 packets +68 bytes: policy ACCEPT",
        "iptables filter INPUT: +2 packets +120 bytes: -A INPUT -j REJECT --reject-with icmp-host-prohibited"]


def test_redact_keeps_the_probe_and_is_stable() -> None:
    r = Redactor(["203.0.113.5", "192.0.2.1"])
    text = "-A INPUT -s 10.1.2.3/32 -d 192.0.2.1 -j ACCEPT\ndefault via 10.1.2.3 dev eth0\ninet6 2001:db8:1::1/64 ::1 fe80::1"
    out = r.text(text)
    assert "10.1.2.3" not in out and out.count("198.18.0.1") == 2 and "-s 198.18.0.1/32 -d 192.0.2.1" in out
    assert "2001:db8:fade::1/64" in out and "::1 fe80::1" in out
    assert r.text("from 203.0.113.5 to 10.9.9.9") == "from 203.0.113.5 to 198.18.0.2"


class _Log:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def debug(self, event: str, **kw: Any) -> None:
        self.calls.append(("debug", event))

    def info(self, event: str, **kw: Any) -> None:
        self.calls.append(("info", event))

    def warning(self, event: str, **kw: Any) -> None:
        self.calls.append(("warning", event))


def test_progress_forwards_every_call_and_counts_probes() -> None:
    log = _Log()
    p = Progress(log, 2, "tcp/8080", 1.0)
    p.info("change", what="table")
    p.debug("sent", packet="x")
    p.debug("sent", packet="rst", why="reset the half-open connection")  # not a probe
    p.warning("something")
    assert log.calls == [("info", "change"), ("debug", "sent"), ("debug", "sent"), ("warning", "something")]
    assert "tcp/8080 probe 1/2 sent" in p._line()


def test_huge_rulesets_keep_the_tables_on_the_path() -> None:
    nft = (DATA / "nft-list-mixed.txt").read_text()
    tables = [line.split()[1:3] for line in nft.splitlines() if line.startswith("table ")]
    assert len(tables) > 1
    keep = {tuple(tables[0])}
    cut = counters.nft_tables(nft, keep)  # type: ignore[arg-type]
    assert [line.split()[1:3] for line in cut.splitlines() if line.startswith("table ")] == [tables[0]]
    assert cut.rstrip().endswith("}") and cut in nft
    save = (DATA / "iptables-save-c-seed.txt").read_text()
    assert counters.save_tables(save, {"filter"}).startswith("*filter") and counters.save_tables(save, {"nat"}) == ""


def test_on_path_keeps_what_the_probe_met() -> None:
    from .test_render import report

    from tracer.pipeline import bundle

    rep = report("seed-shadowed")
    nft = (DATA / "nft-list-counters-seed.txt").read_text() + "table inet other {\n\tchain c {\n\t}\n}\n"
    sets = {"nft-ruleset.txt": nft, "iptables-save-c.txt": (DATA / "iptables-save-c-seed.txt").read_text()}
    cut = bundle.on_path(sets, rep)
    assert "table ip filter" in cut["nft-ruleset.txt"] and "inet other" not in cut["nft-ruleset.txt"]
    assert cut["iptables-save-c.txt"].startswith("*filter")
    assert not bundle.huge(sets) and bundle.huge({"x": "\n" * (bundle.HUGE_LINES + 1)})


# --evidence paths are held by one run from before it starts until the bundle is written


def test_a_second_run_with_the_same_evidence_path_is_refused(tmp_path: Path) -> None:
    import pytest

    from tracer.pipeline.bundle import STAGING, Reservation
    from tracer.errors import ExitStatus, UsageError

    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (str(tmp_path / "new"), str(empty), str(tmp_path / "b.tar.gz")):
        first = Reservation(path)
        with pytest.raises(UsageError) as e:
            Reservation(path)
        assert e.value.status == ExitStatus.USAGE and "another fwtrace run holds it" in e.value.message
        first.write({"report.txt": b"one\n", "environment/ip-addr.txt": b"x\n"}, "fwtrace-1")
        if path.endswith(".tar.gz"):
            import tarfile

            assert tarfile.open(path).getnames() == ["fwtrace-1/environment/ip-addr.txt", "fwtrace-1/report.txt"]
        else:
            assert sorted(p.name for p in Path(path).iterdir()) == ["environment", "report.txt"]
            assert not (Path(path) / STAGING).exists()
        with pytest.raises(UsageError):
            Reservation(path)  # written: taken for good
        first.release()  # after the write: nothing to give up
        assert Path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.gz", "empty", "new"]  # no .part file


def test_an_evidence_path_given_up_is_as_before(tmp_path: Path) -> None:
    from tracer.pipeline.bundle import Reservation

    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (str(tmp_path / "new"), str(empty), str(tmp_path / "b.tar.gz")):
        Reservation(path).release()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and list(empty.iterdir()) == []


def test_a_bundle_that_cannot_be_written_leaves_nothing_and_exits_3(tmp_path: Path, monkeypatch: Any) -> None:
    import errno

    import pytest

    from tracer.system import bundle_io as bundle  # where the Reservation writes
    from tracer.errors import EnvironmentProblem, ExitStatus

    def full(*a: Any, **kw: Any) -> None:
        with open(a[0] if isinstance(a[0], str) and a[0].endswith(".part") else os.path.join(a[0], "x"), "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import os

    monkeypatch.setattr(bundle, "write_dir", lambda d, files: (os.makedirs(d, exist_ok=True), full(d)))
    monkeypatch.setattr(bundle, "write_tar", lambda p, files, top: full(p))
    for path in (str(tmp_path / "new"), str(tmp_path / "b.tar.gz")):
        held = bundle.Reservation(path)
        with pytest.raises(EnvironmentProblem) as e:
            held.write({"report.txt": b"x"}, "fwtrace-1")
        assert e.value.status == ExitStatus.ENVIRONMENT and "No space left on device" in e.value.message
    assert list(tmp_path.iterdir()) == []
