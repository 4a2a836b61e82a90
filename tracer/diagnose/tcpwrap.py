"""TCP wrappers (libwrap): which hosts.allow / hosts.deny line decides a client. Pure.

hosts_access(5): access is granted when a (daemon, client) pair matches an entry in
/etc/hosts.allow; otherwise denied when it matches one in /etc/hosts.deny; otherwise granted.
The first matching line of each file wins. A line is `daemon_list : client_list [: options]`;
lists are separated by commas or blanks and may hold `EXCEPT`. With PROCESS_OPTIONS (Debian's
build) an options field of `deny` / `allow` turns the line's meaning around. Sample:
    sshd: 192.0.2. 10.0.0.0/255.0.0.0 EXCEPT 10.9.9.9
Client patterns understood: ALL, an address, a prefix ending in `.`, net/mask, net/len, [v6]/len.
Host names, LOCAL, KNOWN/UNKNOWN/PARANOID and `@netgroup` need name lookups: never matched here,
and said so.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional

from tracer.model import IPAddress


@dataclass(frozen=True)
class Line:
    file: str
    number: int
    text: str
    daemons: str
    clients: str
    option: str  # "allow" / "deny" / ""


@dataclass(frozen=True)
class Decision:
    granted: bool
    line: Optional[Line]  # the line that decided, None: no line matched (granted)
    unsure: tuple[str, ...] = ()  # patterns on the way that need name lookups, not evaluated

    def said(self) -> str:
        if self.line is None:
            return "no line of hosts.allow or hosts.deny matches (granted)"
        return f"{self.line.file} line {self.line.number} `{self.line.text}`"


def parse(text: str, file: str) -> list[Line]:
    out: list[Line] = []
    joined = ""
    start = 0
    for i, raw in enumerate(text.splitlines(), 1):
        if not joined:
            start = i
        line = raw.rstrip()
        if line.endswith("\\"):  # continued on the next line
            joined += line[:-1] + " "
            continue
        joined += line
        body = joined.strip()
        joined = ""
        if not body or body.startswith("#"):
            continue
        parts = body.split(":", 2)
        if len(parts) < 2:
            continue
        option = parts[2].strip().lower() if len(parts) == 3 else ""
        out.append(Line(file, start, body, parts[0].strip(), parts[1].strip(),
                        "deny" if option.startswith("deny") else "allow" if option.startswith("allow") else ""))
    return out


def _words(lst: str) -> list[str]:
    return lst.replace(",", " ").split()


def _list_matches(lst: str, test: Callable[[str], Optional[bool]], unsure: list[str]) -> bool:
    """`a b EXCEPT c d`: matches a or b, and not c or d (EXCEPT nests to the right)."""
    words = _words(lst)
    if "EXCEPT" in words:
        i = words.index("EXCEPT")
        return _list_matches(" ".join(words[:i]), test, unsure) and \
            not _list_matches(" ".join(words[i + 1:]), test, unsure)
    for w in words:
        m = test(w)
        if m is None:
            unsure.append(w)
        elif m:
            return True
    return False


def client_matches(pattern: str, addr: IPAddress) -> Optional[bool]:
    """True / False, or None when the pattern needs a name lookup."""
    p = pattern.strip()
    if p == "ALL":
        return True
    if p in ("LOCAL", "KNOWN", "UNKNOWN", "PARANOID") or p.startswith("@") or p.startswith("."):
        return None
    if p.startswith("[") and "]" in p:  # [2001:db8::]/32
        net, _, plen = p[1:].partition("]")
        return _in(net + (plen if plen.startswith("/") else ""), addr)
    if p.endswith(".") and addr.version == 4:
        return str(addr).startswith(p)
    if "/" in p:
        return _in(p, addr)
    try:
        return ipaddress.ip_address(p) == addr
    except ValueError:
        return None  # a host name


def _in(net: str, addr: IPAddress) -> Optional[bool]:
    try:
        return addr in ipaddress.ip_network(net, strict=False)
    except ValueError:
        return None


def decide(allow: str, deny: str, daemons: tuple[str, ...], client: IPAddress) -> Decision:
    """The decision for `client` talking to a daemon called one of `daemons` (its argv[0] name)."""
    unsure: list[str] = []
    names = {d for d in daemons if d}

    def daemon(w: str) -> Optional[bool]:
        if w == "ALL":
            return True
        if "@" in w:
            return None
        return w in names

    for file, text, grant in (("/etc/hosts.allow", allow, True), ("/etc/hosts.deny", deny, False)):
        for line in parse(text, file):
            if _list_matches(line.daemons, daemon, unsure) and \
                    _list_matches(line.clients, lambda w: client_matches(w, client), unsure):
                granted = grant if not line.option else line.option == "allow"
                return Decision(granted, line, tuple(unsure))
    return Decision(True, None, tuple(unsure))
