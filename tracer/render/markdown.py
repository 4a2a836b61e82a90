"""report.md: the report for a ticket, in Markdown. No I/O.

Conclusion first, then the timeline (a code block, as the terminal shows it), findings with
their fixes, how it was measured, the environment, and the command that replays the probe.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from tracer.render import terminal, timeline


def _code(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text.rstrip()}\n{fence}"


def render(report: Any, env: Optional[Mapping[str, str]] = None, command: str = "") -> str:
    out = [f"# fwtrace: {timeline.summary(report)}", ""]
    for c in dict.fromkeys(report.conclusions):
        out += [f"**Conclusion:** {c}", ""]
    out += ["![netfilter packet flow with the probe's path](path.svg)", ""]
    out += ["## Timeline", "", _code(terminal.rows_text([timeline.header(report)], [timeline.packet(i, r) for i, r in enumerate(report.results, 1)])), ""]
    if report.findings:
        out += ["## Findings and fixes", ""]
        for row in timeline.findings(report):
            if row.label == "finding":
                out.append(f"- {row.body}")
            else:
                out.append(f"  - {row.label}: {_inline(row.body)}")
        out.append("")
    out += ["## How it was measured", ""]
    out += [f"- **{k}:** {v}" for k, v in timeline.measured(report)]
    out += [f"  - {c}" if i else f"- **cleanup:** {c}" for i, c in enumerate(timeline.cleanup(report))]  # leftovers
    out += [f"- **caveat:** {c}" for c in report.caveats]
    out += [f"- **note:** {n}" for n in report.notes]
    out.append("")
    if env:
        out += ["## Environment", ""]
        out += [f"- **{k}:** {_inline(v)}" for k, v in env.items() if "\n" not in v]
        out += ["", "Full listings (addresses, routes, listening sockets, sysctls, rulesets before and after, "
                "counter deltas) are in the files beside this report.", ""]
    out += ["## Replay", "", "Send the same probe again (as root, on the same host):", "",
            _code(timeline.replay_command(report)), ""]
    if command:
        out += ["The command that produced this report:", "", _code(command), ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Commands in backticks stay as they are; other text is left alone."""
    return text
