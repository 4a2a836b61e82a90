"""The JSON document `--json` prints: the report's own JSON plus what a program reading it needs
first (schema version, one outcome, the exit status) and who owns the chains. No I/O.

The schema is written down in schema/report.schema.json; tests check real output against it.
"""
from __future__ import annotations

import json
from typing import Any

from tracer import __version__
from tracer.report import classify
from tracer.report import outcome as run_outcome
from tracer.report.classify import (  # noqa: F401  re-exported: the classification lives in the report layer
    OUTCOMES,
    outcome,
    owner_fix,
    packet_outcome,
    raw_fix,
    reply_drop,
)

# 2: the outcome "no-listener" (version 1 called that case "blocked"); 3: kernel verdicts: `verdict`
# drop with `decided_by` {kind: "kernel", ...} where version 2 said unknown/accept, rule deciders {kind: "rule"}
SCHEMA_VERSION = 3


def document(report: Any) -> dict[str, Any]:
    doc = report.to_json()
    for p, r in zip(doc.get("packets", []), report.results):
        p["outcome"] = packet_outcome(r, report.findings)
        p["chain_owners"] = [{"chain": where, **o.to_json()} for where, o in classify.chain_owners(r)]
        d = classify.decider_owner(r)
        p["decided_by_owner"] = d.to_json() if d else None
        f = owner_fix(report, r)
        p["owner_fix"] = f.to_json() if f else None
    return {"schema_version": SCHEMA_VERSION, "fwtrace_version": __version__, "outcome": outcome(report),
            "exit_status": int(run_outcome.exit_status(report)), **doc}


def dumps(report: Any) -> str:
    return json.dumps(document(report), indent=2)
