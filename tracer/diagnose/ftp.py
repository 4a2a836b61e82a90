"""FTP's passive data connections and the conntrack helper that lets them in (`probe --app ftp`). No I/O.

A passive data connection goes to a port the server names in its 227/229 reply on the control
connection. A ruleset that admits only the control port lets it in as RELATED, which conntrack can
say only when its FTP helper reads the control connection and sets up an expectation for that port.
Since Linux 4.7 (and always since 6.0, where `net.netfilter.nf_conntrack_helper` is gone) a helper
is never attached on its own: a rule must assign it (nft `ct helper set`, iptables `-j CT --helper`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from tracer.model import Backend, Finding, Fix, PacketResult, Verdict

MODULE = "nf_conntrack_ftp"
AUTO_SYSCTL = "net.netfilter.nf_conntrack_helper"  # per namespace on < 6.0; absent on newer kernels


@dataclass(frozen=True)
class Passive:
    """One PASV or EPSV on the control connection: the reply, the port it names, and the data probe's fate."""

    command: str
    reply: str
    port: Optional[int]
    sport: Optional[int] = None  # the data probe's source port (it is found among the results by it)

    def to_json(self) -> dict[str, object]:
        return {"command": self.command, "reply": self.reply, "port": self.port}


@dataclass(frozen=True)
class FtpSession:
    """What a real FTP control session from the probe's client saw (tracer/system/ftpclient.py)."""

    tried: str  # "a control connection to 192.0.2.1:21 from namespace cli"
    connected: bool = False  # the TCP connection was accepted
    greeting: str = ""  # the server's first line ("" nothing came)
    error: Optional[str] = None  # it is no FTP service, or the session failed: what was tried and what came back
    login: str = ""  # the reply to USER/PASS
    passive: tuple[Passive, ...] = ()
    helper: Optional[str] = None  # the control connection's conntrack helper ("ftp"), "" none; None: not read
    conntrack: str = ""  # that entry in words
    module: Optional[bool] = None  # nf_conntrack_ftp present (loaded or built in); None: not known
    auto_helper: Optional[str] = None  # the sysctl's value, None where the kernel has none

    def to_json(self) -> dict[str, object]:
        return {"app": "ftp", "tried": self.tried, "control_accepted": self.connected,
                "greeting": self.greeting, "error": self.error, "login": self.login,
                "passive": [p.to_json() for p in self.passive],
                "helper": {"module": self.module, "assigned": self.helper, "conntrack": self.conntrack,
                           "auto_assign_sysctl": self.auto_helper}}


def greeting_error(port: int, first: str, waited: float) -> Optional[str]:
    """None for an FTP greeting (220), else one line saying what came back instead."""
    if re.match(r"220[ -]", first):
        return None
    if not first:
        return f"port {port} sent nothing within {waited:g} s, not an FTP 220 greeting"
    return f"port {port} answered {first[:60]!r} not an FTP 220 greeting"


def passive_port(command: str, reply: str) -> Optional[int]:
    """The data port of a 227 (PASV, RFC 959: h1,h2,h3,h4,p1,p2) or 229 (EPSV, RFC 2428: (|||port|)) reply."""
    if command == "PASV":
        m = re.match(r"227 .*?(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply)
        return int(m.group(5)) * 256 + int(m.group(6)) if m else None
    m = re.match(r"229 .*\((.)\1\1(\d+)\1\)", reply)
    return int(m.group(2)) if m else None


def conntrack_helper(listing: str, sport: int) -> tuple[str, str]:
    """(the helper of the control connection's entry, "" for none; the entry) from `conntrack -L`.

    Sample: `tcp 6 431999 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40312 dport=21 ... helper=ftp use=1`
    """
    for line in listing.splitlines():
        if f" sport={sport} " in line:
            m = re.search(r"\bhelper=(\S+)", line)
            return (m.group(1) if m else ""), " ".join(line.split())
    return "", "none"


_NFT_RELATED = re.compile(r"ct state[^\n;]*\brelated\b[^\n]*\baccept\b")
_IPT_RELATED = re.compile(r"--(?:ct)?state \S*RELATED\S*[^\n]*-j ACCEPT")
_NFT_ASSIGN = re.compile(r"ct helper set [^\n]*")
_IPT_ASSIGN = re.compile(r"-j CT [^\n]*--helper ftp[^\n]*")


def ruleset_facts(nft_text: str, ipt_texts: Sequence[str]) -> tuple[bool, tuple[str, ...]]:
    """(does a rule accept `ct state related` at all; the rules that assign a conntrack helper)."""
    ipt = "\n".join(ipt_texts)
    related = bool(_NFT_RELATED.search(nft_text) or _IPT_RELATED.search(ipt))
    assign = tuple(m.group(0).strip() for m in _NFT_ASSIGN.finditer(nft_text)) + \
        tuple(m.group(0).strip() for m in _IPT_ASSIGN.finditer(ipt))
    return related, assign


def _blocked(s: FtpSession, results: Sequence[PacketResult]) -> list[tuple[Passive, PacketResult]]:
    by_sport = {r.spec.sport: r for r in results}
    return [(p, by_sport[p.sport]) for p in s.passive if p.sport in by_sport
            and by_sport[p.sport].final_verdict in (Verdict.DROP, Verdict.REJECT)]


def findings(s: Optional[FtpSession], results: Sequence[PacketResult], control_port: int, local: bool,
             nft_text: str, ipt_texts: Sequence[str]) -> tuple[Finding, ...]:
    """`helper-missing` (a data connection blocked, no FTP helper on the control connection) or
    `related-not-accepted` (the helper is there, no rule accepts what it relates)."""
    if s is None or s.error is not None:
        return ()
    blocked = _blocked(s, results)
    if not blocked:
        return ()
    p, r = blocked[0]
    dst, src = r.spec.dst, r.spec.src
    related, assign = ruleset_facts(nft_text, ipt_texts)
    ports = ", ".join(str(q.port) for q, _ in blocked)
    many = len(blocked) > 1
    fate = "dropped" if r.final_verdict is Verdict.DROP else "rejected"
    head = (f"The FTP control connection to {dst}:{control_port} was accepted, but the passive data "
            f"connection{'s' if many else ''} to port{'s' if many else ''} {ports} "
            f"({', '.join(q.command for q, _ in blocked)}) {'were' if many else 'was'} {fate}"
            f"{f' by {r.decided_by.text}' if r.decided_by else ''}: conntrack did not see {'them' if many else 'it'} "
            "as RELATED.")
    mod = {True: f"{MODULE} is loaded (or built in)", False: f"{MODULE} is not loaded",
           None: f"whether {MODULE} is loaded could not be read"}[s.module]
    auto = "the kernel has no automatic helper assignment (net.netfilter.nf_conntrack_helper is gone)" \
        if s.auto_helper is None else f"{AUTO_SYSCTL}={s.auto_helper}"
    rel = "the ruleset accepts `ct state related`" if related else "no rule of the ruleset accepts RELATED at all"
    dialect = r.decided_by.backend if r.decided_by is not None else Backend.NFT
    if s.helper:
        if related:
            return ()  # the helper is there and RELATED is accepted: not this finding's business
        cmds = tuple(_related_cmds(r, dialect))
        return (Finding("related-not-accepted", f"{head} The control connection has the conntrack helper "
                        f"'{s.helper}', but {rel}.", _fix_text(cmds), cmds, fixes=(_fix(dst, control_port, cmds),)),)
    where = f"assigned by: {'; '.join(assign)} (not for this connection)" if assign else "no rule assigns one"
    msg = (f"{head} The control connection has no conntrack helper ({s.conntrack}); {mod}; {auto}; {where}; {rel}.")
    if local:
        return (Finding("helper-missing", msg + " A local client's connection gets its helper on the output hook: "
                        "assign it there (nft `ct helper set` in an output chain, iptables -t raw -A OUTPUT)."),)
    cmds = (() if s.module is not False else (f"modprobe {MODULE}",)) + tuple(_assign_cmds(r, dialect, control_port))
    if not related:
        cmds += tuple(_related_cmds(r, dialect))
    return (Finding("helper-missing", msg, _fix_text(cmds), cmds, fixes=(_fix(dst, control_port, cmds),)),)


def _fix(dst: object, port: int, cmds: tuple[str, ...]) -> Fix:
    lets_in = (f"lets in only the data connections the FTP server on {dst}:{port} announces (PASV/EPSV) to a client "
               "whose control connection the firewall already accepted; no passive port is opened for anyone else")
    return Fix("service", lets_in, _fix_text(cmds), cmds)


def _fix_text(cmds: tuple[str, ...]) -> str:
    return ("assign conntrack's FTP helper to this server's control port only: " + "; ".join(f"`{c}`" for c in cmds))


def _tool(r: PacketResult, dialect: Backend) -> str:
    six = "6" if r.spec.family == 6 else ""
    return f"ip{six}tables-legacy" if dialect is Backend.IPTABLES_LEGACY else f"ip{six}tables"


def _assign_cmds(r: PacketResult, dialect: Backend, port: int) -> list[str]:
    d = r.decided_by
    if dialect is Backend.NFT and d is not None:
        ip = "ip6" if r.spec.family == 6 else "ip"
        name = f"ftp-{port}"
        return [f"nft add ct helper {d.family} {d.table} {name} '{{ type \"ftp\" protocol tcp; }}'",
                f"nft insert rule {d.family} {d.table} {d.chain} {ip} daddr {r.spec.dst} tcp dport {port} "
                f"ct helper set \"{name}\""]
    return [f"{_tool(r, dialect)} -t raw -A PREROUTING -p tcp -d {r.spec.dst} --dport {port} -j CT --helper ftp"]


def _related_cmds(r: PacketResult, dialect: Backend) -> list[str]:
    d = r.decided_by
    if dialect is Backend.NFT and d is not None:
        return [f"nft insert rule {d.family} {d.table} {d.chain} ct state related ct helper \"ftp\" accept"]
    chain = d.chain if d is not None else "INPUT"
    return [f"{_tool(r, dialect)} -I {chain} -m conntrack --ctstate RELATED -m helper --helper ftp -j ACCEPT"]
