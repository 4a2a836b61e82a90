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
