"""`fwtrace watch` on screen: a live table on a terminal (rich), plain lines without one, ndjson with
--json; and the summary at the end. Reads only the finished values of tracer/report/watch.py."""
from __future__ import annotations

import json
from typing import Any, Optional, TextIO

from tracer.report.watch import FlowRow, Live, WatchSummary


def _table(live: Live) -> Any:
    from rich.table import Table

    limit = f" of {live.max_packets}" if live.max_packets else ""
    t = Table(title=f"fwtrace watch: {live.filter} on {', '.join(live.interfaces)}  ·  {live.left:.0f}s left  ·  "
                    f"{live.packets}{limit} packet(s)  ·  Ctrl-C ends and summarises", title_justify="left")
    for col in ("flow", "verdict", "traced", "arrived", "interface", "decided by"):
        t.add_column(col)
    for r in live.rows[-40:]:
        style = {"accept": "green", "drop": "red", "reject": "red", "not-in-netfilter": "yellow"}.get(r.verdict, "")
        t.add_row(r.flow, f"[{style}]{r.verdict}[/]" if style else r.verdict, str(r.packets), str(r.captured),
                  ",".join(r.interfaces), r.decided_by)
    if not live.rows:
        t.add_row("(nothing yet)", "", "", "", "", "")
    return t


class View:
    """What the watch shows while it runs; `stop` before the summary is written."""

    def __init__(self, out: TextIO, as_json: bool, terminal: bool, color: Optional[bool]) -> None:
        self.out = out
        self.as_json = as_json
        self.live: Any = None
        self.seen: dict[tuple[str, str, int, str, int], str] = {}
        if terminal and not as_json:
            from rich.console import Console
            from rich.live import Live as RichLive

            console = Console(file=out, no_color=color is False)
            self.live = RichLive(console=console, refresh_per_second=4, transient=False)
            self.live.start()

    def show(self, live: Live) -> None:
        if self.live is not None:
            self.live.update(_table(live))
            return
        for r in live.rows:  # one event per flow and change of its verdict
            if self.seen.get(r.key) == r.verdict:
                continue
            self.seen[r.key] = r.verdict
            self._write(json.dumps({"type": "flow", "left_s": round(live.left, 1), **r.to_json()}) + "\n"
                        if self.as_json else plain_line(r, live.left))

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        if self.live is not None:
            try:
                self.live.stop()
            except (OSError, ValueError):
                pass
            self.live = None


def plain_line(r: FlowRow, left: float) -> str:
    by = f"  by {r.decided_by}" if r.decided_by else ""
    return (f"[{left:5.1f}s left] {r.flow}  {r.verdict}  traced {r.packets}, arrived {r.captured}"
            f"{' on ' + ','.join(r.interfaces) if r.interfaces else ''}{by}\n")


def summary_text(s: WatchSummary) -> str:
    out = [f"fwtrace watch {s.run_id}: {s.filter} on {', '.join(s.interfaces)}"
           + (f" (netns {s.netns})" if s.netns else "") + f", {s.duration:.1f}s, stopped by {s.stopped_by}",
           f"outcome: {s.outcome}: {s.message}"]
    for n in s.near:
        out.append(f"  near the filter: {n}")
    if s.outside:
        out.append("  outside this host's reach: " + "; ".join(s.outside))
    # Flows that fared alike (same verdict, deciding rule, conclusion) are explained once.
    groups: dict[tuple[object, ...], list[FlowRow]] = {}
    for r in s.rows:
        groups.setdefault((r.verdict, r.decided_by, r.conclusion, tuple(f.code for f in r.findings)), []).append(r)
    for rows in groups.values():
        r = rows[0]
        traced, arrived = sum(x.packets for x in rows), sum(x.captured for x in rows)
        ifaces = sorted({i for x in rows for i in x.interfaces})
        out.append("")
        names = ", ".join(x.flow for x in rows[:3]) + (f" and {len(rows) - 3} more" if len(rows) > 3 else "")
        out.append(f"{r.verdict}: {len(rows)} flow(s): {names}  (packets traced {traced}, arrived {arrived}"
                   f"{' on ' + ','.join(ifaces) if ifaces else ''})")
        if r.decided_by:
            out.append(f"  decided by: {r.decided_by}")
        if r.conclusion:
            out.append(f"  {r.conclusion}")
        for line in r.timeline:
            out.append(f"    {line}")
        cts = [x.conntrack for x in rows if x.conntrack and x.conntrack != "none"]
        if cts:
            out.append(f"  conntrack: {cts[0]}")
        for f in r.findings:
            out.append(f"  [{f.code}] {f.message}")
            if f.fix:
                out.append(f"    fix: {f.fix}")
            for cmd in f.commands:
                out.append(f"      {cmd}")
    out.append("")
    out.append("accounting: " + s.accounting.text())
    for n in s.notes:
        out.append(f"note: {n}")
    out.append("cleanup: " + ("every change undone, ruleset as before (proved by content)" if s.cleanup_ok
                              else "INCOMPLETE: " + "; ".join(s.leftover)))
    return "\n".join(out) + "\n"


def summary_json(s: WatchSummary) -> str:
    return json.dumps(s.to_json()) + "\n"


def evidence_files(s: WatchSummary, argv: list[str]) -> dict[str, bytes]:
    """The bundle: the watched packets (pcapng, each with its flow, verdict and trace id as a
    comment), the flows table with timelines (text and JSON), the command line."""
    from tracer.render import pcapng

    packets = [pcapng.Packet(p.data, p.when, p.comment) for p in s.wire]
    return {"watch.pcapng": pcapng.write(packets, "fwtrace watch", f"run {s.run_id}: {s.filter}"),
            "flows.txt": summary_text(s).encode(), "flows.json": (json.dumps(s.to_json(), indent=2) + "\n").encode(),
            "command.txt": (" ".join(argv) + "\n").encode()}
