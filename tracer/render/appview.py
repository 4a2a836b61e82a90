"""`probe --app ftp`'s part of the report as rows (tracer/render/timeline.py draws them): the control
session, each passive data port and its probe's verdict, the conntrack helper's state."""
from __future__ import annotations

from typing import Any

Row = tuple[str, str, str]  # (label, body, style): a timeline Row's fields


def sections(report: Any) -> list[list[Row]]:
    s = getattr(report, "app", None)
    if s is None:
        return []
    if s.error is not None:
        return [[("ftp", f"{s.tried}: {s.error}", "bad")]]
    rows = [("ftp", f"{s.tried}: control connection accepted, {s.greeting!r}", "good"),
            ("login", s.login or "(no reply)", "dim")]
    by_sport = {r.spec.sport: (i, r) for i, r in enumerate(report.results, 1)}
    for p in s.passive:
        if p.port is None:
            rows.append((p.command.lower(), f"{p.reply!r}: no data port in it", "warn"))
            continue
        i, r = by_sport.get(p.sport, (0, None))
        if r is None:
            rows.append((p.command.lower(), f"data port {p.port}: not probed", "warn"))
            continue
        fate = r.final_verdict.value
        by = f" by {r.decided_by.text}" if r.decided_by is not None and r.kernel is None else ""
        rows.append((p.command.lower(), f"data port {p.port} (packet {i}): {fate}{by}",
                        "good" if fate == "accept" else "bad"))
    helper = {None: "not read", "": "none"}.get(s.helper, s.helper)
    module = {True: "present", False: "absent", None: "not known"}[s.module]
    auto = "none on this kernel" if s.auto_helper is None else s.auto_helper
    rows.append(("helper", f"control connection's conntrack helper: {helper}; nf_conntrack_ftp {module}; "
                              f"nf_conntrack_helper sysctl: {auto}", "dim"))
    return [rows]


def summary(report: Any) -> str:
    """The summary line's tail: the session's failure, if any (the packet verdicts say the rest)."""
    s = getattr(report, "app", None)
    return f"; --app ftp: {s.error}" if s is not None and s.error is not None else ""
