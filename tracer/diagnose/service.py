"""Findings about the service behind an open port: it accepts and closes at once. No I/O.

A SYN-ACK only says the kernel's listening socket took the SYN; the process may still refuse the
client right after accept(): TCP wrappers (libwrap reads hosts.allow / hosts.deny), or the
application's own allowlist. fwtrace makes one real connection to tell (tracer/pipeline/analysis.py).
"""
from __future__ import annotations

from typing import Optional

from tracer.diagnose import selinux as selinux_
from tracer.diagnose.context import Probe
from tracer.model import Finding, Proto, Verdict


def closed_after_accept(p: Probe) -> Optional[Finding]:
    a = p.result.after_accept
    if a is None or a.seen not in ("closed", "reset"):
        return None
    r, h = p.result, p.seen
    client = r.spec.src
    how = "closed it (FIN) before sending anything" if a.seen == "closed" else "reset it"
    who = a.process or "the process (not found: its socket is no listener's of this namespace)"
    head = (f"The service on tcp port {h.dport} accepted a real connection from {client} and at once {how}: the "
            f"firewall let it through, {who} refused the client itself.")
    name = a.daemon or "DAEMON"
    if a.libwrap and a.denied:
        return Finding(
            "closed-after-accept",
            f"{head} It uses TCP wrappers (libwrap is mapped into it), and {a.decision} denies {client} for {name}.",
            f"allow this client for {name} only: add `{name}: {client}` to /etc/hosts.allow (read before hosts.deny; "
            f"the first matching line wins), or narrow the hosts.deny line",
        )
    if a.libwrap:
        return Finding(
            "closed-after-accept",
            f"{head} It uses TCP wrappers (libwrap is mapped into it), but {a.decision or 'no line was read'} for "
            f"{client}, so the refusal is the application's own.",
            f"look for {client} in {name}'s own access rules (an allowlist, `AllowUsers`/`Match`, a deny list)",
        )
    libwrap = "does not use TCP wrappers (no libwrap in its memory map)" if a.libwrap is False else \
        "could not be checked for TCP wrappers"
    return Finding(
        "closed-after-accept",
        f"{head} It {libwrap}, so hosts.allow/hosts.deny do not apply: the refusal is the application's own.",
        f"look for {client} in {name}'s own access rules (an allowlist or ACL in its configuration, a deny list, "
        "a connection limit)",
    )


def selinux(p: Probe) -> Optional[Finding]:
    """SELinux enforcing denied the service its port (tracer/diagnose/selinux.py); nothing where it is absent."""
    r = p.result
    if p.ctx.selinux is None or r.spec.proto is Proto.ICMP or r.verdict is not Verdict.ACCEPT:
        return None
    return selinux_.decide(p.ctx.selinux, r.spec.proto, p.seen.dport)
