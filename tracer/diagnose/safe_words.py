"""A fix's wording: the probed service, whom a fix lets in, a rate limit in words (moved whole
from tracer/diagnose/safe.py). Pure: no I/O."""
from __future__ import annotations

import re
from typing import Sequence

from tracer.diagnose.context import Probe
from tracer.ruleset.match.scope import Narrowing
from tracer.model import Proto


_ACCEPTING = re.compile(r"(?:-j ACCEPT\b|\baccept\b|\ballow\b|--add-port|--add-rich-rule|--add-service)")


# ---------------------------------------------------------------------------------------------
# Words


def service(p: Probe) -> str:
    spec = p.result.spec
    return "ping" if spec.proto is Proto.ICMP else f"{spec.proto.value}/{p.seen.dport}"


def only(p: Probe) -> str:
    return f"lets in only {p.seen.src} to {service(p)}"


def scope_of(commands: Sequence[str], p: Probe) -> str:
    """client: every accepting command names the client's address; service: one names only the
    port; wider: one names neither."""
    client = str(p.seen.src)
    acc = [c for c in commands if _ACCEPTING.search(c)]
    if all(client in c for c in acc):
        return "client"
    port = str(p.seen.dport)
    return "service" if all(client in c or re.search(rf"\b{port}\b", c) for c in acc) else "wider"


def lets_in(scope: str, p: Probe) -> str:
    if scope == "client":
        return only(p)
    if scope == "service":
        return f"lets in every source to {service(p)}"
    return "lets in more than this service: read the command"


def _rate_words(n: Narrowing, per_source: bool) -> str:
    if n.kind == "recent":
        hits = f"{n.hitcount} or more" if n.hitcount else "any"
        secs = f" within {n.seconds} s" if n.seconds else ""
        return f"{hits} new connections from one address{secs} (xt_recent list {n.name}, `{n.text}`)"
    if n.kind == "connlimit":
        return f"more than {n.value or 'N'} connections at once (`{n.text}`)"
    m = re.search(r"limit rate (?:over )?(.+?)(?:\s*\}|$)", n.text)
    rate = (n.value or "").replace("over ", "") or (m.group(1) if m else "its rate")
    who = "per source address" if per_source else "for all clients together, not per client"
    return f"more than {rate} {who} (`{n.text}`)"


def _per_source(n: Narrowing) -> bool:
    t = n.text
    return n.kind == "hashlimit" and ("srcip" in t or "saddr" in t) or n.kind in ("recent",)


def _wait(n: Narrowing) -> str:
    if n.kind == "recent" and n.seconds:
        return f"after {n.seconds} s without new connections from this address"
    m = re.search(r"(\d+)\s*/\s*(second|minute|hour|day)", n.value or n.text)
    if m:
        secs = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(2)] / max(int(m.group(1)), 1)
        return f"as the limit refills: one new connection about every {secs:g} s"
    return "once the rate drops below the limit"
