"""report.html: the same report for people who open attachments in a browser. No I/O.

Self-contained: inline CSS and the inline SVG packet-flow map, no script, nothing fetched.
"""
from __future__ import annotations

from html import escape
from typing import Any, Mapping, Optional

from tracer.render import svg, timeline

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1060px; color: #24292f; padding: 0 1em; }
h1 { font-size: 1.35em; } h2 { font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; }
.verdict { display: inline-block; padding: .15em .6em; border-radius: 6px; font-weight: bold; color: #fff; }
.verdict.bad { background: #cf222e; } .verdict.good { background: #1a7f37; } .verdict.warn { background: #9a6700; }
.conclusion { font-size: 1.1em; font-weight: 600; }
table.timeline { border-collapse: collapse; width: 100%; font-size: .92em; }
table.timeline td { padding: .2em .5em; vertical-align: top; border-bottom: 1px solid #eaeef2; }
td.label { white-space: nowrap; color: #57606a; width: 9em; }
td.body { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
tr.chain td.body { color: #0969da; font-weight: 600; } tr.skip td, tr.dim td { color: #8c959f; }
tr.decider-bad { background: #ffebe9; font-weight: bold; } tr.decider-good { background: #dafbe1; font-weight: bold; }
tr.bad td.body { color: #cf222e; font-weight: bold; } tr.good td.body { color: #1a7f37; }
tr.packet td { font-weight: bold; border-top: 2px solid #d0d7de; }
pre, code { font-family: ui-monospace, monospace; background: #f6f8fa; border-radius: 6px; }
pre { padding: .8em; overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; } dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; } .picture svg { max-width: 100%; height: auto; }
"""


def _rows(section: timeline.Section) -> str:
    out = []
    for row in section:
        mark = "&#9654; " if row.marker else ""
        out.append(f'<tr class="{escape(row.style)}"><td class="label">{mark}{escape(row.label)}</td>'
                   f'<td class="body">{escape(row.body)}</td></tr>')
    return "\n".join(out)


def _dl(pairs: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in pairs) + "</dl>"


def render(report: Any, env: Optional[Mapping[str, str]] = None, command: str = "") -> str:
    summary = timeline.summary(report)
    word = summary.split()[0]
    cls = {"REACHED": "good", "BLOCKED": "bad", "REPLY-DROPPED": "bad"}.get(word, "warn")
    body = [f'<h1><span class="verdict {cls}" id="verdict">{escape(word)}</span> {escape(summary[len(word):])}</h1>']
    body += [f'<p class="conclusion">{escape(c)}</p>' for c in dict.fromkeys(report.conclusions)]
    body += [f'<p>{escape(timeline.header(report))}</p>']
    body += ['<h2>Where the packet went</h2>', f'<div class="picture">{svg.for_report(report)}</div>']
    body += ['<h2>Timeline</h2>', '<table class="timeline">']
    for section in ([[timeline.Row("caveat", c, "warn") for c in report.caveats]] if report.caveats else []) + \
            [timeline.packet(i, r) for i, r in enumerate(report.results, 1)]:
        body.append(_rows(section))
    body.append("</table>")
    findings = timeline.findings(report)
    if findings:
        body += ["<h2>Findings and fixes</h2>", '<table class="timeline">', _rows(findings), "</table>"]
        cmds = [c for f in report.findings for c in f.commands]
        if cmds:
            body += ["<p>The raw commands, in order:</p>", f"<pre>{escape(chr(10).join(cmds))}</pre>"]
    body += ["<h2>How it was measured</h2>",
             _dl(timeline.measured(report) + [("cleanup", c) for c in timeline.cleanup(report)]
                 + [("note", n) for n in report.notes])]
    if env:
        body += ["<h2>Environment</h2>", _dl([(k, v) for k, v in env.items() if "\n" not in v])]
    body += ["<h2>Replay</h2>", "<p>Send the same probe again (as root, on the same host):</p>",
             f"<pre>{escape(timeline.replay_command(report))}</pre>"]
    if command:
        body += ["<p>The command that produced this report:</p>", f"<pre>{escape(command)}</pre>"]
    title = escape(f"fwtrace {report.run_id}: {summary}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
            f'<body>\n' + "\n".join(body) + "\n</body></html>\n")
