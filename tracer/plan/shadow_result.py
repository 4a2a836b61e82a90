"""What a what-if found: the sources it sampled, who gains and who loses, and the table that says
so (moved whole from tracer/plan/shadow.py). Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from tracer.plan.ownerrules import Translation


@dataclass(frozen=True)
class Source:
    addr: str
    label: str  # why it is sampled ("client", "-s 198.51.100.0/24 in INPUT", "set inet f banned", ...)


# ---------------------------------------------------------------------------------------------
# Who gains, who loses


@dataclass(frozen=True)
class Probe:
    source: Source
    port: int
    proto: str


@dataclass(frozen=True)
class Change:
    source: str
    label: str
    port: int
    proto: str
    before: str
    after: str

    @property
    def gains(self) -> bool:
        return self.after == "open" and self.before != "open"

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "why_sampled": self.label, "port": self.port, "proto": self.proto,
                "before": self.before, "after": self.after, "change": "gains" if self.gains else
                ("loses" if self.before == "open" else "differs")}


@dataclass(frozen=True)
class WhatIf:
    command: tuple[str, ...]
    probes: tuple[Probe, ...]
    before: tuple[str, ...]
    after: tuple[str, ...]
    not_copied: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    changes: tuple[Change, ...] = field(default=())
    shadow_left: tuple[str, ...] = ()  # shadow namespaces still there after its removal (none expected)
    host_unchanged: Optional[bool] = None  # the target listed the same before and after
    translated: Optional[Translation] = None  # an owner's command: the rules it would write, applied instead

    def to_json(self) -> dict[str, object]:
        return {"command": list(self.command), "translated": self.translated.to_json() if self.translated else None,
                "changes": [c.to_json() for c in self.changes],
                "cleanup": {"shadow_removed": not self.shadow_left, "shadow_left": list(self.shadow_left),
                            "host_unchanged": self.host_unchanged},
                "probed": [{"source": p.source.addr, "why_sampled": p.source.label, "port": p.port, "proto": p.proto,
                            "before": b, "after": a} for p, b, a in zip(self.probes, self.before, self.after)],
                "not_copied": list(self.not_copied), "results_depend_on": list(self.depends)}


def changes(probes: Iterable[Probe], before: Iterable[str], after: Iterable[str]) -> tuple[Change, ...]:
    return tuple(Change(p.source.addr, p.source.label, p.port, p.proto, b, a)
                 for p, b, a in zip(probes, before, after) if b != a)


def render(w: WhatIf) -> str:
    """The who-gains/who-loses table, and what the copy could not carry."""
    lines = [f"what-if: {' '.join(w.command)}   (run in a shadow copy; the host was not changed)", ""]
    if w.translated is not None:
        lines += w.translated.render() + [""]
    if not w.changes:
        lines.append(f"No change for the {len(w.probes)} probe(s) sampled (sources x ports below).")
    else:
        lines.append(f"{'':6} {'source':<28} {'port':<9} {'before':<16} {'after':<16} why sampled")
        for c in sorted(w.changes, key=lambda c: (not c.gains, c.port, c.source)):
            tag = "GAINS" if c.gains else ("LOSES" if c.before == "open" else "CHANGES")
            lines.append(f"{tag:<6} {c.source:<28} {c.proto + '/' + str(c.port):<9} {c.before:<16} {c.after:<16} {c.label}")
    lines.append("")
    lines.append("sampled: " + ", ".join(sorted({f"{p.source.addr} ({p.source.label})" for p in w.probes})))
    for n in w.not_copied:
        lines.append(f"shadow: {n}")
    if w.depends:
        lines.append("results may differ on the host where they depend on: " + "; ".join(w.depends))
    if w.shadow_left:
        lines.append("error: shadow namespaces left: " + ", ".join(w.shadow_left) + " (hint: `ip netns del NAME`)")
    if w.host_unchanged is not None:
        lines.append("host: " + ("unchanged (same nft ruleset generation, x_tables tables, ipsets and sysctls as before)" if w.host_unchanged
                                 else "CHANGED while what-if ran (by someone else: the shadow only read it)"))
    return "\n".join(lines) + "\n"
