"""The report on a terminal, drawn with rich: labelled rows whose text wraps under itself (rule
text folded, never cut), colour when the output is a terminal, the deciding rule marked, and the
one-line summary last. Plain text (no escape codes) when colour is off."""
from __future__ import annotations

import io
import os
import re
import shutil
from typing import Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.render import timeline

STYLES = {
    "packet": "bold", "chain": "cyan", "skip": "dim", "dim": "dim", "step": "",
    "decider-bad": "bold red", "decider-good": "bold green", "bad": "bold red", "good": "green",
    "warn": "yellow", "finding": "", "fix": "bold", "conclusion": "bold", "note": "dim",
}
LABEL_WIDTH = 11


def _grid(rows: timeline.Section) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=1, no_wrap=True)
    grid.add_column(width=LABEL_WIDTH, no_wrap=True, overflow="fold")
    grid.add_column(overflow="fold", ratio=1)
    for row in rows:
        style = STYLES.get(row.style, "")
        label = row.label if len(row.label) <= LABEL_WIDTH else row.label[: LABEL_WIDTH - 1] + "~"
        grid.add_row(Text(row.marker, style="bold red" if row.style == "decider-bad" else style),
                     Text(label, style="bold" if row.style in ("packet", "finding") else "dim"),
                     Text(row.body, style=style, overflow="fold"))
    return grid


_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def render(report: Any, console: Console) -> None:
    with console.capture() as cap:
        console.print(Text(timeline.header(report), style="bold", overflow="fold"))
        for section in timeline.sections(report):
            console.print()
            console.print(_grid(section))
        console.print()
        summary = timeline.summary(report)
        bad = not summary.startswith("REACHED")
        console.print(Text(summary, style="bold red" if bad else "bold green", overflow="fold"))
    # Grids pad every line to the table's width: trailing blanks only get in the way of a paste.
    console.file.write("".join(_TRAILING.sub(r"\1", line) + "\n" for line in cap.get().splitlines()))
    console.file.flush()


def text(report: Any, width: int = 80) -> str:
    """The plain text at a given width: report.txt in bundles, golden tests."""
    buf = io.StringIO()
    render(report, make_console(buf, color=False, width=width))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def for_stream(report: Any, stream: Any, no_color: bool = False) -> str:
    """The report as it should be written to `stream`: coloured and as wide as the terminal when
    it is one, plain at 80 columns otherwise (a pipe, a file). Returned as text so the caller
    decides how a failing write is reported."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    buf = io.StringIO()
    width = shutil.get_terminal_size((80, 24)).columns if tty else 80
    render(report, make_console(buf, color=False if no_color or not tty else None, width=width, terminal=tty))
    return buf.getvalue()


def make_console(file: Any, color: Optional[bool], width: Optional[int] = None, terminal: Optional[bool] = None) -> Console:
    """color None: colour on a terminal; False (--no-color), or NO_COLOR set to anything: no
    escape codes at all, bold included (https://no-color.org asks for no colour; plain text is
    what a pasted report needs)."""
    if color is False or os.environ.get("NO_COLOR"):
        return Console(file=file, width=width or 80, color_system=None, force_terminal=False,
                       highlight=False, emoji=False, no_color=True)
    return Console(file=file, width=width, highlight=False, emoji=False, force_terminal=terminal)


def rows_text(heads: list[str], sections: list[timeline.Section], width: int = 100) -> str:
    """Plain text of some sections (no colour): the timeline block of report.md."""
    buf = io.StringIO()
    console = make_console(buf, color=False, width=width)
    for h in heads:
        console.print(Text(h, overflow="fold"))
    for section in sections:
        console.print()
        console.print(_grid(section))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
