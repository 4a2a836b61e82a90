"""path.svg: the netfilter packet-flow map with the probe's real path drawn in. No I/O.

The map is the classic one (the seed's picture): a packet from the network meets PREROUTING, the
routing decision, then INPUT (to a local process) or FORWARD; what a local process sends meets
OUTPUT; everything leaving meets POSTROUTING. Each hook box lists the iptables tables that hook
there in priority order. The hooks the probe met (the report's `path`) are drawn in blue and
joined by a thick line; the hook where the verdict fell is outlined in red (or green) with the
deciding rule beside it; the reply's way out, when it was traced, is dashed.
"""
from __future__ import annotations

from typing import Any, Optional
from xml.sax.saxutils import escape

from tracer.model import PacketResult, Verdict

HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
TABLES = {"prerouting": "raw · mangle · nat (dstnat)", "input": "mangle · filter · security · nat",
          "forward": "mangle · filter · security", "output": "raw · mangle · nat · filter · security",
          "postrouting": "mangle · nat (srcnat)"}
# x, y, width, height of each box
BOX = {"prerouting": (60, 190, 190, 84), "input": (350, 40, 190, 84), "forward": (430, 190, 190, 84),
       "output": (720, 40, 190, 84), "postrouting": (720, 190, 190, 84)}
LOCAL = (565, 52, 130, 60)
ROUTE = (300, 232)  # centre of the routing decision
W, H = 1010, 380


def _rect(name: str) -> tuple[float, float, float, float]:
    """x, y, width, height of a node (a point for the network ends)."""
    if name == "local":
        return LOCAL
    if name == "route":
        return (ROUTE[0] - 36, ROUTE[1] - 26, 72, 52)
    if name == "net-in":
        return (10, 232, 0, 0)
    if name == "net-out":
        return (W - 10, 232, 0, 0)
    return BOX[name]


def _center(name: str) -> tuple[float, float]:
    x, y, w, h = _rect(name)
    return (x + w / 2, y + h / 2)


def _border(name: str, toward: tuple[float, float]) -> tuple[float, float]:
    """Where the line from the node's centre toward a point leaves the node's rectangle."""
    (cx, cy), (_, _, w, h) = _center(name), _rect(name)
    dx, dy = toward[0] - cx, toward[1] - cy
    if (w == 0 and h == 0) or (dx == 0 and dy == 0):
        return (cx, cy)
    t = min(w / 2 / abs(dx) if dx else float("inf"), h / 2 / abs(dy) if dy else float("inf"))
    return (cx + dx * t, cy + dy * t)


# The map's edges, as the kernel walks them.
EDGES = (("net-in", "prerouting"), ("prerouting", "route"), ("route", "input"), ("route", "forward"),
         ("input", "local"), ("local", "output"), ("output", "postrouting"), ("forward", "postrouting"),
         ("postrouting", "net-out"))


def way(path: tuple[str, ...]) -> list[str]:
    """The probe's nodes on the map, with the routing decision and the endpoints filled in."""
    hooks = [h for h in path if h in HOOKS]
    if not hooks:
        return []
    nodes: list[str] = ["net-in"] if hooks[0] == "prerouting" else ["local"] if hooks[0] == "output" else []
    for h in hooks:
        if nodes and nodes[-1] == "prerouting" and h in ("input", "forward"):
            nodes.append("route")
        if nodes and nodes[-1] == "input" and h == "output":
            nodes.append("local")
        nodes.append(h)
    return nodes


def decider_hook(r: PacketResult) -> Optional[str]:
    """The hook where the verdict fell: where a dropped packet's path ends; for an accept, the
    hook its chain name says (INPUT, filter_INPUT, ufw-user-input), else the path's end."""
    if getattr(r, "kernel", None) is not None:  # the kernel dropped it after the last hook it met
        return r.path[-1] if r.path else None
    # Results that carry every base chain's outcome (hooks) say where the decision fell.
    for h in getattr(r, "hooks", ()):
        if r.decided_by is not None and (h.ref.family, h.ref.table, h.ref.chain) == \
                (r.decided_by.family, r.decided_by.table, r.decided_by.chain) and h.hook in HOOKS:
            return str(h.hook)
    if not r.path:
        return None
    if r.verdict in (Verdict.DROP, Verdict.REJECT) or r.decided_by is None:
        return r.path[-1]
    chain = r.decided_by.chain.lower()
    named = [h for h in HOOKS if h in chain and h in r.path]
    return named[-1] if named else r.path[-1]


def _reply_drop_hook(r: PacketResult) -> Optional[str]:
    """The hook where the reply was dropped on its way out (output or postrouting)."""
    for h in getattr(r, "reply_hooks", ()):
        if h.verdict in (Verdict.DROP, Verdict.REJECT) and h.hook in HOOKS:
            return str(h.hook)
    step = next((s for s in r.reply_steps if s.event.verdict == "drop"), None)
    if step is None:
        return None
    return step.event.hook or ("postrouting" if "postrouting" in step.event.chain.lower() else "output")


def _line(a: str, b: str, cls: str) -> str:
    (x1, y1), (x2, y2) = _border(a, _center(b)), _border(b, _center(a))
    marker = "arrow-probe" if cls == "probe" else "arrow"
    return f'<line class="{cls}" x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" marker-end="url(#{marker})"/>'


def _box(name: str, cls: str) -> str:
    x, y, w, h = BOX[name]
    return (f'<g class="hook {cls}" id="hook-{name}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8"/>'
            f'<text x="{x + w / 2:.0f}" y="{y + 32}" class="name">{name.upper()}</text>'
            f'<text x="{x + w / 2:.0f}" y="{y + 58}" class="tables">{escape(TABLES[name])}</text></g>')


STYLE = """
svg { font-family: sans-serif; }
.edge { stroke: #b8bec6; stroke-width: 2; }
.probe { stroke: #1f6feb; stroke-width: 6; opacity: 0.85; }
.reply { stroke: #8250df; stroke-width: 3; stroke-dasharray: 8 6; }
.hook rect { fill: #f6f8fa; stroke: #8c959f; stroke-width: 1.5; }
.hook.met rect { fill: #ddf4ff; stroke: #1f6feb; stroke-width: 3; }
.hook.decided-bad rect { fill: #ffebe9; stroke: #cf222e; stroke-width: 5; }
.hook.decided-good rect { fill: #dafbe1; stroke: #1a7f37; stroke-width: 5; }
.name { font-size: 17px; font-weight: bold; text-anchor: middle; fill: #24292f; }
.tables { font-size: 10px; text-anchor: middle; fill: #57606a; }
.small { font-size: 12px; fill: #57606a; text-anchor: middle; }
.verdict-bad { font-size: 14px; font-weight: bold; fill: #cf222e; }
.verdict-good { font-size: 14px; font-weight: bold; fill: #1a7f37; }
.caption { font-size: 13px; fill: #24292f; }
"""


def render(r: Optional[PacketResult], title: str = "") -> str:
    """The map for one packet's result (None: the bare map)."""
    nodes = way(r.path) if r is not None else []
    met = set(nodes)
    decided = decider_hook(r) if r is not None else None
    bad = r is not None and r.final_verdict in (Verdict.DROP, Verdict.REJECT)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="netfilter packet flow with the probe\'s path">',
           f"<title>{escape(title or 'netfilter packet flow')}</title>",
           f"<style>{STYLE}</style>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" '
           'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker>'
           '<marker id="arrow-probe" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="16" markerHeight="16" '
           'markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#1f6feb"/></marker></defs>']
    out += [_line(a, b, "edge") for a, b in EDGES]
    out += [_line(a, b, "probe") for a, b in zip(nodes, nodes[1:])]
    if r is not None and r.reply_steps:
        reply_hooks = [h for h in ("output", "postrouting") if any(h in s.event.chain.lower() for s in r.reply_steps)]
        rnodes = ["local", *(reply_hooks or ["output"]), "postrouting", "net-out"]
        out += [_line(a, b, "reply") for a, b in zip(dict.fromkeys(rnodes), list(dict.fromkeys(rnodes))[1:])]
    reply_dropped = _reply_drop_hook(r) if r is not None else None
    for name in HOOKS:
        cls = ("decided-bad" if bad else "decided-good") if name == decided else "met" if name in met else ""
        cls = "decided-bad" if name == reply_dropped else cls
        out.append(_box(name, cls))
    x, y, w, h = LOCAL
    out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="30" fill="#fff" stroke="#8c959f"/>'
               f'<text x="{x + w / 2:.0f}" y="{y + 36}" class="small">local process</text>')
    rx, ry = ROUTE
    out.append(f'<polygon points="{rx - 36},{ry} {rx},{ry - 26} {rx + 36},{ry} {rx},{ry + 26}" fill="#fff" stroke="#8c959f"/>'
               f'<text x="{rx}" y="{ry + 4}" class="small">routing</text>')
    out.append(f'<text x="4" y="262" class="small" text-anchor="start" style="text-anchor:start">network</text>'
               f'<text x="{W - 4}" y="262" class="small" style="text-anchor:end">network</text>')
    if r is not None and decided is not None:
        x, y, w, h = BOX[decided]
        word = r.final_verdict.value.upper()
        where = f"{r.decided_by.table} {r.decided_by.chain}" if r.decided_by else ""
        num = f" rule {r.decided_by.rule.number}" if r.decided_by and r.decided_by.rule else " policy" if r.decided_by else ""
        if r.kernel is not None:
            where, num = f"by the kernel: {r.kernel.cause}", ""
        ty = y - 12 if y < 100 else y + h + 22  # above a top-row box: the probe's line comes from below
        out.append(f'<text id="decision" x="{x}" y="{ty}" class="{"verdict-bad" if bad else "verdict-good"}">'
                   f'{"✗" if bad else "✓"} {escape(word)} {escape(where + num)}</text>')
    if r is not None:
        out.append(f'<text x="20" y="{H - 40}" class="caption">{escape(r.spec.summary())}</text>')
        out.append(f'<text x="20" y="{H - 18}" class="caption">path: {escape(" → ".join(r.path) or "(no hook traced)")}'
                   f'{"  ·  reply: " + escape(r.reply.kind)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def for_report(report: Any) -> str:
    """The map of the first packet that did not get through (else the first)."""
    from tracer.report import classify

    results = list(report.results)
    if not results:
        return render(None)
    r = next((x for x in results if classify.packet_outcome(x, report.findings) != "reached"),
             results[0])
    return render(r, f"fwtrace run {report.run_id}: {r.spec.summary()}")
